"""The scope gate's decisions on the classifier bundle's batches, each on the gate's own view of its film.

The bundle's inference, evaluation and commissioning hold batches of the classifier's network input; the gate's
decision on a film is :func:`cxr_monai.inference.check_scope` (the one definition, also used by the deploy and
MONAI Label apps): the header rules, the lung-field rule and the image check on the gate's view, made through the
lung-field network the gate names (``lung_field_sha256``), or the whole film when it names none. :class:`ScopeCheck`
gives the bundle that decision: when the gate's view is the classifier's input (the gate names no lung-field
network, or the one the classifier's input was made through) the gate checks the batch as it is; otherwise each
film is read again from its file (the image's ``filename_or_obj``) and :func:`~cxr_monai.inference.check_scope`
builds the gate's own view. The network batch is never changed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from cxr_monai.inference import check_lung_field, check_scope
from cxr_monai.io import DEFAULT_MAX_PIXELS, load_cxr
from cxr_monai.scope.gate import ScopeGate, gate_lung_field_of, load_scope_gate
from cxr_monai.scope.rules import ScopeDecision
from cxr_monai.transforms.lung_field import LungField, load_lung_field
from cxr_monai.utils import file_sha256

__all__ = ["ScopeCheck", "load_scope_check", "require_own_view"]


def _lung_field_sha(lung_field: LungField | str | os.PathLike | None) -> str | None:
    """The identity of a lung-field network: its file's sha256, or the source hash a deploy copy records."""
    if lung_field is None:
        return None
    if isinstance(lung_field, LungField):
        return lung_field.info.get("source_sha256") or lung_field.info.get("weights_sha256")
    return file_sha256(lung_field)


class ScopeCheck:
    """The gate's decision on each film of a batch of classifier inputs, on the gate's own view of the film.

    ``check(x, metas)`` (also ``__call__``) has the signature of :meth:`ScopeGate.check`, so the bundle's writer
    (:class:`cxr_monai.engines.ClassificationWriter`) and commissioning collector
    (:class:`cxr_monai.commissioning.CommissioningCollector`) take it in place of the gate.

    Args:
        gate: the intended-population gate (:func:`cxr_monai.scope.load_scope_gate`).
        image_size: the classifier's input side (what :func:`~cxr_monai.inference.check_scope` is given in the
            deploy app); ``None``: the gate's own ``image_size``. Used only where the gate reads its own view.
        lung_field: the lung-field network the gate names (a :class:`~cxr_monai.transforms.LungField` or its file,
            :func:`cxr_monai.scope.gate_lung_field_of`); ignored for a gate that names none.
        classifier_lung_field: the lung-field network the classifier's input was made through (``None``: the
            whole film, :func:`cxr_monai.transforms.lung_field_of`).
        max_pixels: the pixel limit of the films read again (:func:`cxr_monai.io.load_cxr`).
        classifier_views: the classifier's input views (``None``: one view); a two-view input
            (``('whole', 'lung_field')``) is never the gate's view, whatever lung-field network made it.

    Raises:
        DeployModelError: the gate names a lung-field network and none, or another one, was given
            (:func:`cxr_monai.inference.check_lung_field`).
    """

    def __init__(self, gate: ScopeGate, image_size: int | None = None,
                 lung_field: LungField | str | os.PathLike | None = None,
                 classifier_lung_field: LungField | str | os.PathLike | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, classifier_views: Sequence[str] | None = None) -> None:
        self.gate = gate
        self.image_size = int(image_size if image_size is not None else gate.image_size)
        self.max_pixels = int(max_pixels)
        want = gate.info.get("lung_field_sha256")
        if want and lung_field is not None and not isinstance(lung_field, LungField):
            have = file_sha256(lung_field)
            if have != want:
                raise ValueError(f"{lung_field} (sha256 {have[:12]}) is not the lung-field network {want[:12]} "
                                 "that the scope gate names")
            lung_field = load_lung_field(lung_field, gate.device)
        self.lung_field = check_lung_field(gate.info, lung_field)
        # the classifier's batch is the gate's view: the gate checks it as it is (the only path of a gate that
        # names no lung-field network and looks for no shutter frame); a gate that crops the film to its exposed
        # field always reads the film again
        one_view = classifier_views is None or len(classifier_views) == 1
        self.reads_batch = not gate.info.get("exposed_field") and (
            self.lung_field is None or (one_view and _lung_field_sha(classifier_lung_field) == want))

    @property
    def info(self) -> dict[str, Any]:
        """The gate's embedded metadata."""
        return self.gate.info

    def check(self, x: torch.Tensor, metas: Sequence[Mapping[str, Any] | None] | None = None) -> list[ScopeDecision]:
        """The scope decision of each film of a batch.

        Args:
            x: the classifier's network input (N, V, S, S) of the films.
            metas: their metadata (a decollated MetaTensor's ``meta``): headers, the classifier view's
                ``lung_field`` box, and ``filename_or_obj``, the file read again when the gate reads its own view.

        Raises:
            ValueError: the gate reads its own view and a film has no file name to read it from.
        """
        if self.reads_batch:
            return self.gate.check(x, metas)
        metas = list(metas) if metas is not None else [None] * int(x.shape[0])
        if len(metas) != int(x.shape[0]):
            raise ValueError(f"{len(metas)} metas for {int(x.shape[0])} images")
        out = []
        for meta in metas:
            name = (meta or {}).get("filename_or_obj")
            if not isinstance(name, (str, os.PathLike)) or not str(name):
                raise ValueError("the scope gate reads its own lung-field view of each film, which needs the film's "
                                 "file (meta filename_or_obj); this image has none")
            image, film_meta = load_cxr(name, max_pixels=self.max_pixels)
            out.append(check_scope(self.gate, image, film_meta, self.image_size, self.lung_field))
        return out

    __call__ = check


def load_scope_check(scope_gate_file: str | os.PathLike, image_size: int | None = None,
                     classifier_lung_field: LungField | str | os.PathLike | None = None,
                     device: str | torch.device = "cpu", classifier_views: Sequence[str] | None = None) -> ScopeCheck:
    """The bundle's :class:`ScopeCheck`: the gate at ``scope_gate_file`` with the lung-field network it names
    (``lung_field.ts`` beside it, hash-checked: :func:`cxr_monai.scope.gate_lung_field_of`).

    Args:
        scope_gate_file: the gate (``models/scope_gate.ts``).
        image_size: the classifier's input side.
        classifier_lung_field: the lung-field network the classifier's input was made through (``None``: the
            whole film).
        device: where the gate and its lung-field network run.
        classifier_views: the classifier's input views (``None``: one view; :class:`ScopeCheck`).
    """
    gate = load_scope_gate(scope_gate_file, device)
    return ScopeCheck(gate, image_size, gate_lung_field_of(scope_gate_file), classifier_lung_field,
                      classifier_views=classifier_views)


def require_own_view(scope_check: Any, where: str) -> None:
    """Refuse a bare gate (or its bound ``check``) that names a lung-field network: on a classifier batch it would
    decide on the classifier's input, not on its own view; :func:`load_scope_check` gives the right decisions.

    Args:
        scope_check: what a bundle handler was given (``None``, a :class:`ScopeCheck`, a gate or a callable).
        where: the handler, for the message.
    """
    owner = getattr(scope_check, "__self__", scope_check)
    if isinstance(owner, ScopeGate) and owner.info.get("lung_field_sha256"):
        raise ValueError(f"{where}: the scope gate reads its own lung-field view (lung_field_sha256); give "
                         "cxr_monai.scope.load_scope_check(gate_file, image_size, classifier_lung_field), which "
                         "decides on that view, not on the classifier's network input")
