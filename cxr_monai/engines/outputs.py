"""The engine output as the handlers read it: per-image items of a (decollated or batched) output, their
source file names and metadata values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.utils import CommonKeys as Keys

__all__ = ["meta_value", "output_items", "output_name"]


def meta_value(x: Any, key: str, default: Any = None) -> Any:
    """``x.meta[key]`` of a MetaTensor (``default`` when ``x`` has no such metadata)."""
    meta = getattr(x, "meta", None)
    if isinstance(meta, Mapping) and key in meta:
        return meta[key]
    return default


def output_items(output: Any) -> list[dict]:
    """The engine output as a list of per-image dicts (decollated or batched)."""
    if isinstance(output, list):
        return output
    if isinstance(output, Mapping):
        n = output[Keys.PRED].shape[0]
        items = []
        for i in range(n):
            item = {}
            for k, v in output.items():
                item[k] = v[i] if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == n else v
            items.append(item)
        return items
    raise TypeError(f"unexpected engine output type {type(output).__name__}")


def output_name(item: Mapping, fallback: str) -> str:
    """The source file name of one output item (label, image or prediction metadata), else ``fallback``."""
    for key in (Keys.LABEL, Keys.IMAGE, Keys.PRED):
        name = meta_value(item.get(key), "filename_or_obj")
        if isinstance(name, (list, tuple)):
            name = name[0] if name else None
        if name:
            return str(name)
    return fallback
