"""Studies: end-to-end experiments that compose networks, transforms, metrics and explainability into a report
(above the engines layer; bundles call them, nothing in the package imports them)."""

from __future__ import annotations

from .sr_downstream import *  # noqa: F401,F403
from .framing import *  # noqa: F401,F403
