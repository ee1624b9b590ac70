"""Which loaded images the chest models may read: the modality rule, the chest body part, the frontal view.

This is policy, kept apart from decoding: :data:`PROJECTION_MODALITIES` is the one statement of the modalities the
project processes (the deploy app's series selection, the PACS worker's choice of source images and the
intended-population check derive from it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["PROJECTION_MODALITIES", "modality_pattern", "modality_names", "is_chest", "skip_reason"]

PROJECTION_MODALITIES = ("CR", "DX")
"""DICOM modalities of projection radiography the project processes (computed and digital radiography)."""


def modality_pattern() -> str:
    """:data:`PROJECTION_MODALITIES` as an anchored regular expression (``^(CR|DX)$``), for DICOM series selection."""
    return "^(" + "|".join(PROJECTION_MODALITIES) + ")$"


def modality_names() -> str:
    """:data:`PROJECTION_MODALITIES` as people read them in messages (``CR/DX``)."""
    return "/".join(PROJECTION_MODALITIES)


_CHEST_WORDS = ("CHEST", "THORAX", "TORAX", "THORACIC", "LUNG", "PULMON")
_NON_PROJECTION_MODALITIES = {"CT", "MR", "US", "NM", "PT", "MG", "OP", "OCT", "XC", "ES", "SM", "IO", "PX", "ECG"}


def is_chest(meta: Mapping[str, Any]) -> bool:
    """Whether an image's metadata allow it to be a chest radiograph.

    True when the body part names the chest (``CHEST``, ``THORAX``, ``LUNG``... anywhere in
    BodyPartExamined, case-insensitive) or is unknown (``None``/empty/``UNKNOWN``) for a projection
    radiograph or a non-DICOM file; False for any other stated body part (``EXTREMITY``, ``SKULL``...)
    and, when the body part is unknown, for modalities that are not projection radiography (CT, MR,
    US, MG, ...). Pipelines use it to skip series the chest models must not see.

    Args:
        meta: metadata from :func:`load_cxr` or a :class:`~monai.data.MetaTensor`'s ``meta``
            (one image; a collated batch must be decollated first).
    """
    body_part, modality = meta.get("body_part"), meta.get("modality")
    for name, value in (("body_part", body_part), ("modality", modality)):
        if isinstance(value, (list, tuple)):
            raise ValueError(f"meta[{name!r}] is a {type(value).__name__}: decollate batched metadata first")
    part = str(body_part or "").strip().upper()
    if part and part not in ("UNKNOWN", "NONE", "-"):
        return any(word in part for word in _CHEST_WORDS)
    return str(modality or "").strip().upper() not in _NON_PROJECTION_MODALITIES


_LATERAL_VIEWS = ("LL", "RL", "LAT", "LATERAL", "LLD", "RLD", "XTABLE LATERAL")


def skip_reason(meta: Mapping[str, Any]) -> str | None:
    """Why a loaded image must not reach the frontal chest models, or ``None`` when it may.

    Refused: a stated body part that is not the chest (see :func:`is_chest`; absent is accepted), a
    non-projection modality, and a lateral ViewPosition (``LL``, ``RL``, ``LATERAL``...; the models
    were trained on frontal PA/AP views). Absent ViewPosition is accepted.

    Args:
        meta: metadata of one image from :func:`load_cxr`.
    """
    if not is_chest(meta):
        part = meta.get("body_part")
        if part:
            return f"body part {part!r} is not the chest"
        return f"modality {meta.get('modality')!r} is not projection radiography"
    view = str((meta.get("dicom_tags") or {}).get("ViewPosition", "") or "").strip().upper()
    if view in _LATERAL_VIEWS:
        return f"lateral view (ViewPosition {view!r}): the models read frontal PA/AP radiographs only"
    return None
