"""CXR transforms: degradation (blur + bicubic, low-dose noise), augmentation and preprocessing presets."""

from __future__ import annotations

from .augmentation import *  # noqa: F401,F403
from .backprojection import *  # noqa: F401,F403
from .degradation import *  # noqa: F401,F403
from .presets import *  # noqa: F401,F403
from .stress import *  # noqa: F401,F403
from .exposed_field import *  # noqa: F401,F403
from .lung_field import *  # noqa: F401,F403
from .framing import *  # noqa: F401,F403
