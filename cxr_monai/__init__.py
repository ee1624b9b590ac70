"""cxr_monai: a MONAI plugin for chest radiographs."""

__version__ = "0.1.0"
