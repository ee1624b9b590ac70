"""Procedural chest radiograph phantom: license-free test data and the demo's default input.

* :mod:`~cxr_monai.data.phantom.render`: the image (:func:`make_phantom`, how it is made is stated there), its
  anatomical masks and pixel spacing.
* :mod:`~cxr_monai.data.phantom.files`: the phantom as DICOM CR/DX and as a class-folder dataset.
"""

from .render import *  # noqa: F401,F403
from .files import *  # noqa: F401,F403
