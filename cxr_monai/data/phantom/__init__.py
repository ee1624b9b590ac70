"""Procedural chest radiograph phantom: license-free test data and the demo's default input.

Modules: :mod:`~cxr_monai.data.phantom.render` (the image, its anatomy and consolidation masks) and
:mod:`~cxr_monai.data.phantom.files` (DICOM and class-folder datasets).

The phantom is rendered analytically in normalised coordinates (``u`` from -1 at the left image edge to +1 at
the right, ``v`` from -1 at the top to +1 at the bottom), so the same seed gives the same anatomy at any size.
The image is built as a projected density map (soft tissue thickness, lung air, heart, mediastinum, bones,
vessels), blurred slightly by the detector, corrupted by quantum noise whose variance grows with attenuation,
and mapped to the display orientation of the image contract: single channel, float32 in [0, 1], bright bone,
dark lung, channel-first ``(1, H, W)``. The view is PA: the patient's right is on the image left and the heart
lies to the image right.

A pneumonia-like consolidation (soft-edged, mottled, with air bronchograms) can be placed in one lobe of one
lung; its mask is returned. The anatomy, the consolidation and the noise use independent random streams, so a
phantom with and without consolidation differs only where the consolidation is.
"""

from .render import *  # noqa: F401,F403
from .files import *  # noqa: F401,F403
