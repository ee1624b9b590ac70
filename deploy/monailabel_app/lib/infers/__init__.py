"""The CXR infer tasks: thin adapters from MONAI Label requests to :mod:`cxr_monai.inference`."""

from .common import InferRequestError
from .pneumonia import CXRPneumoniaInfer
from .super_resolution import CXRSuperResolutionInfer

__all__ = ["InferRequestError", "CXRPneumoniaInfer", "CXRSuperResolutionInfer"]
