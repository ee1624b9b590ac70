"""cxr_monai."""
