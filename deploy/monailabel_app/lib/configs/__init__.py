"""Task configs: each finds its model file (written by `make deploy-models`) and builds its infer task."""

from .cxr_pneumonia import CXRPneumoniaConfig
from .cxr_sr import CXRSRConfig

__all__ = ["CXRPneumoniaConfig", "CXRSRConfig"]
