"""Networks: plain ``torch.nn.Module``s with typed constructors and no I/O."""

from .blocks import *  # noqa: F401,F403
from .classifiers import *  # noqa: F401,F403
from .features import *  # noqa: F401,F403
from .gans import *  # noqa: F401,F403
from .sr import *  # noqa: F401,F403
from .lung import *  # noqa: F401,F403
