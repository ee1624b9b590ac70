"""Ignite workflows for paired super-resolution: the SR trainer (stage 1 L1, stage 2 GAN + EMA) and handlers.

MONAI's ``AdversarialTrainer`` feeds the network INPUT to the discriminator as "real", which for SR is the
low-resolution image; :class:`SRTrainer` instead subclasses :class:`monai.engines.Trainer` (as the model-zoo's
VaeGanTrainer does) and shows the discriminator the HR target as real and the SR output as fake.

Batches are dictionaries with the LR input under ``lr_key`` and the HR target under ``hr_key``
(:class:`PrepareSRBatch`); the engine output uses MONAI's ``CommonKeys``: ``image`` (LR), ``label`` (HR),
``pred`` (SR), ``loss`` plus the loss terms.

Handlers: :class:`cxr_monai.engines.sr_metrics.SRMetricsWriter` (evaluation: ``metrics.json``, ``per_image.csv``,
figure), :class:`SRImageWriter` (inference: 16-bit PNG / Secondary Capture via :mod:`cxr_monai.dicom` / NIfTI); the generator EMA is built into the
trainer (:func:`make_ema`). The hallucination-guard post-processing is the transform
:class:`cxr_monai.transforms.BackProjectiond`; the downstream diagnostic study is
:func:`cxr_monai.studies.run_downstream_study`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
import torch
from monai.engines import Trainer
from monai.engines.utils import PrepareBatch, default_metric_cmp_fn
from monai.utils import CommonKeys as Keys
from monai.utils import IgniteInfo, min_version, optional_import
from torch import nn
from torch.optim.optimizer import Optimizer

from cxr_monai.engines.ema import make_ema, update_ema
from cxr_monai.engines.outputs import meta_value, output_items, output_name
from cxr_monai.io import save_png
from cxr_monai.losses.adversarial import hinge_d_loss, hinge_g_loss, relativistic_d_loss, relativistic_g_loss
from cxr_monai.dicom import SERIES_NUMBERS
from cxr_monai import dicom as dicom_out

if TYPE_CHECKING:
    from ignite.engine import Engine, Events
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
    Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

logger = logging.getLogger(__name__)

__all__ = [
    "PrepareSRBatch",
    "SRTrainer",
    "make_ema",
    "SRImageWriter",
]

_GAN_LOSSES = ("relativistic", "hinge")


class PrepareSRBatch(PrepareBatch):
    """Return ``(lr, hr)`` from a batch dictionary, moved to ``device`` (HR is ``None`` when absent).

    Args:
        lr_key: key of the low-resolution input.
        hr_key: key of the high-resolution target.
    """

    def __init__(self, lr_key: str = "lr", hr_key: str = "hr") -> None:
        self.lr_key, self.hr_key = lr_key, hr_key

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.lr_key not in batchdata:
            raise KeyError(f"batch has no LR input under {self.lr_key!r} (keys: {sorted(batchdata)})")
        lr = batchdata[self.lr_key].to(device=device, non_blocking=non_blocking, **kwargs)
        hr = batchdata.get(self.hr_key)
        if isinstance(hr, torch.Tensor):
            hr = hr.to(device=device, non_blocking=non_blocking, **kwargs)
        return lr, hr


def _autocast_kwargs(amp_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """``torch.autocast`` keyword arguments with ``dtype`` resolved to bfloat16 or float16 (default bfloat16)."""
    kwargs = dict(amp_kwargs or {})
    dtype = kwargs.get("dtype", torch.bfloat16)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), None)
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"amp dtype must be bfloat16 or float16, got {kwargs.get('dtype')!r}.")
    kwargs["dtype"] = dtype
    return kwargs


class SRTrainer(Trainer):
    """Paired SR trainer. Stage 1 (PSNR-oriented): leave ``d_network`` as ``None`` and train with the pixel
    loss. Stage 2 (GAN fine-tuning from stage 1): give a discriminator, its optimiser and the adversarial
    weight; an optional perceptual loss and an EMA copy of the generator (used for validation and export).

    Generator loss: ``pixel_weight * pixel + perceptual_weight * perceptual + gan_weight * adversarial
    + consistency_weight * consistency``. Discriminator: HR = real, SR = fake, relativistic average (ESRGAN) or
    hinge loss.

    Args:
        device: device to run on.
        max_epochs: number of epochs.
        train_data_loader: yields dicts with ``lr_key`` / ``hr_key`` tensors.
        g_network: the generator.
        g_optimizer: its optimiser.
        pixel_loss: ``loss(sr, hr)``; default L1.
        pixel_weight: weight of the pixel loss (1.0 in stage 1; 0.01 in ESRGAN stage 2).
        d_network: discriminator (``None`` for stage 1).
        d_optimizer: discriminator optimiser (required with ``d_network``).
        gan_loss: ``"relativistic"`` (ESRGAN) or ``"hinge"``.
        gan_weight: weight of the generator's adversarial term (0.005 ESRGAN, 0.1 Real-ESRGAN).
        perceptual_loss: optional ``loss(sr, hr)`` (e.g. :class:`~cxr_monai.losses.PerceptualLoss`).
        perceptual_weight: its weight.
        consistency_loss: optional ``loss(sr, lr)`` (e.g. :class:`~cxr_monai.losses.DegradationConsistencyLoss`).
        consistency_weight: its weight.
        ema_network: optional EMA copy of the generator (see :func:`make_ema`), updated after every G step.
        ema_decay: EMA decay per iteration.
        grad_clip: clip the generator's gradient norm to this value (``None``: no clipping).
        epoch_length: iterations per epoch (default: ``len(train_data_loader)``).
        non_blocking: non-blocking device copies.
        prepare_batch: returns ``(lr, hr)``; default :class:`PrepareSRBatch` with ``lr_key``/``hr_key``.
        lr_key: LR key in the batch (used by the default ``prepare_batch``).
        hr_key: HR key in the batch.
        iteration_update: custom iteration function (default: :meth:`_iteration`).
        postprocessing: transforms on the decollated output.
        key_train_metric: Ignite metric(s) computed on the output every iteration.
        additional_metrics: more Ignite metrics.
        metric_cmp_fn: comparison of the key metric.
        train_handlers: MONAI/Ignite handlers (StatsHandler, CheckpointSaver, LrScheduleHandler, ...).
        amp: automatic mixed precision: the generator and discriminator forward passes and their losses run under
            ``torch.autocast`` (dtype from ``amp_kwargs``; default bfloat16, or float16 on CUDA when asked), the
            degradation-consistency loss in float32; float16 adds a ``GradScaler`` and needs CUDA. Default
            ``False``: full float32, as on the CPU.
        event_names: additional events.
        event_to_attr: event-to-state mapping.
        decollate: decollate the output (default ``False``: SR batches are large).
        optim_set_to_none: ``zero_grad(set_to_none=...)``.
        to_kwargs: extra ``Tensor.to`` arguments.
        amp_kwargs: ``torch.autocast`` arguments, e.g. ``{"dtype": "bfloat16"}`` (a ``torch.dtype`` or its name;
            default bfloat16).
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Iterable,
        g_network: nn.Module,
        g_optimizer: Optimizer,
        pixel_loss: Callable | None = None,
        pixel_weight: float = 1.0,
        d_network: nn.Module | None = None,
        d_optimizer: Optimizer | None = None,
        gan_loss: str = "relativistic",
        gan_weight: float = 0.005,
        perceptual_loss: Callable | None = None,
        perceptual_weight: float = 1.0,
        consistency_loss: Callable | None = None,
        consistency_weight: float = 0.0,
        ema_network: nn.Module | None = None,
        ema_decay: float = 0.999,
        grad_clip: float | None = None,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable | None = None,
        lr_key: str = "lr",
        hr_key: str = "hr",
        iteration_update: Callable | None = None,
        postprocessing: Callable | None = None,
        key_train_metric: dict | None = None,
        additional_metrics: dict | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        event_names: list | None = None,
        event_to_attr: dict | None = None,
        decollate: bool = False,
        optim_set_to_none: bool = False,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
    ) -> None:
        if gan_loss not in _GAN_LOSSES:
            raise ValueError(f"gan_loss must be one of {_GAN_LOSSES}, got {gan_loss!r}.")
        if (d_network is None) != (d_optimizer is None):
            raise ValueError("d_network and d_optimizer must be given together (stage 2) or both omitted (stage 1).")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}.")
        if min(pixel_weight, gan_weight, perceptual_weight, consistency_weight) < 0:
            raise ValueError("loss weights must be >= 0.")
        if grad_clip is not None and grad_clip <= 0:
            raise ValueError(f"grad_clip must be positive, got {grad_clip}.")
        amp_kwargs = _autocast_kwargs(amp_kwargs) if amp else amp_kwargs
        device_type = torch.device(device).type
        if amp and amp_kwargs["dtype"] == torch.float16 and device_type != "cuda":
            raise ValueError(f"float16 autocast needs a CUDA device (got {device_type!r}); use bfloat16 instead.")
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch if prepare_batch is not None else PrepareSRBatch(lr_key, hr_key),
            iteration_update=iteration_update,
            postprocessing=postprocessing,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            handlers=train_handlers,
            amp=amp,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=decollate,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
        )
        self.g_network, self.g_optimizer = g_network, g_optimizer
        self.d_network, self.d_optimizer = d_network, d_optimizer
        self.pixel_loss = pixel_loss if pixel_loss is not None else nn.L1Loss()
        self.pixel_weight, self.gan_weight = float(pixel_weight), float(gan_weight)
        self.perceptual_loss, self.perceptual_weight = perceptual_loss, float(perceptual_weight)
        self.consistency_loss, self.consistency_weight = consistency_loss, float(consistency_weight)
        self.gan_loss = gan_loss
        self.ema_network, self.ema_decay = ema_network, float(ema_decay)
        self.grad_clip = grad_clip
        self.optim_set_to_none = optim_set_to_none
        self.autocast_device = device_type
        self.use_grad_scaler = bool(amp) and self.amp_kwargs["dtype"] == torch.float16
        # also reachable through the engine state, like MONAI's GAN trainers
        self.state.g_network, self.state.d_network, self.state.ema_network = g_network, d_network, ema_network

    def run(self) -> None:  # type: ignore[override]
        """Train; a ``GradScaler`` is used only for float16 autocast (bfloat16 and float32 need none)."""
        self.scaler = torch.amp.GradScaler(self.autocast_device) if self.use_grad_scaler else None
        super(Trainer, self).run()  # Workflow.run: Trainer.run would create a float16 CUDA scaler for any amp

    def _autocast(self, enabled: bool = True) -> contextlib.AbstractContextManager:
        """``torch.autocast`` when ``amp`` is on (``enabled=False``: a float32 region inside it), else a no-op."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.autocast_device, **{**self.amp_kwargs, "enabled": enabled})

    def _backward_step(self, loss: torch.Tensor, optimizer: Optimizer, params: Iterable | None = None) -> None:
        """``loss.backward()`` and ``optimizer.step()``, through the GradScaler when there is one, with the
        gradient-norm clipping of ``params`` (after unscaling) when given."""
        if self.scaler is None:
            loss.backward()
            if params is not None and self.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        if params is not None and self.grad_clip is not None:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.scaler.step(optimizer)

    def _generator_loss(self, lr: torch.Tensor, sr: torch.Tensor, hr: torch.Tensor, out: dict) -> torch.Tensor:
        loss = self.pixel_weight * self.pixel_loss(sr, hr)
        out["loss_pixel"] = loss.detach()
        if self.perceptual_loss is not None and self.perceptual_weight > 0:
            perc = self.perceptual_loss(sr, hr)
            out["loss_perceptual"] = perc.detach()
            loss = loss + self.perceptual_weight * perc
        if self.consistency_loss is not None and self.consistency_weight > 0:
            with self._autocast(enabled=False):  # blur + antialiased bicubic resampling: kept in float32
                cons = self.consistency_loss(sr.float(), lr.float())
            out["loss_consistency"] = cons.detach()
            loss = loss + self.consistency_weight * cons
        if self.d_network is not None and self.gan_weight > 0:
            for p in self.d_network.parameters():
                p.requires_grad_(False)
            fake_logits = self.d_network(sr)
            if self.gan_loss == "relativistic":
                with torch.no_grad():
                    real_logits = self.d_network(hr)
                adv = relativistic_g_loss(real_logits, fake_logits)
            else:
                adv = hinge_g_loss(fake_logits)
            for p in self.d_network.parameters():
                p.requires_grad_(True)
            out["loss_g_adv"] = adv.detach()
            loss = loss + self.gan_weight * adv
        return loss

    def _iteration(self, engine: SRTrainer, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        """One step: generator update (pixel [+ perceptual + adversarial + consistency]), then the
        discriminator update on HR (real) vs detached SR (fake), then the EMA update."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        lr, hr = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        if hr is None:
            raise ValueError("SR training needs the HR target in the batch.")
        out: dict[str, Any] = {Keys.IMAGE: lr, Keys.LABEL: hr}
        engine.g_network.train()
        engine.g_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with engine._autocast():
            sr = engine.g_network(lr)
            g_loss = engine._generator_loss(lr, sr, hr, out)
        engine._backward_step(g_loss, engine.g_optimizer, engine.g_network.parameters())
        out[Keys.PRED] = sr.detach().float()  # a no-op in float32; autocast outputs leave as float32
        out[Keys.LOSS] = g_loss.detach().float()
        if engine.d_network is not None and engine.d_optimizer is not None:
            engine.d_network.train()
            engine.d_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
            with engine._autocast():
                real_logits = engine.d_network(hr)
                fake_logits = engine.d_network(sr.detach())
                d_fn = relativistic_d_loss if engine.gan_loss == "relativistic" else hinge_d_loss
                d_loss = d_fn(real_logits, fake_logits)
            engine._backward_step(d_loss, engine.d_optimizer)
            out["loss_d"] = d_loss.detach().float()
        if engine.scaler is not None:
            engine.scaler.update()
        if engine.ema_network is not None:
            update_ema(engine.ema_network, engine.g_network, engine.ema_decay)
        engine.state.output = out
        return out


class SRImageWriter:
    """Inference handler: write every SR output next to its source's name, in the same format family.

    * DICOM source -> the enhanced image as a 16-bit Secondary Capture built by
      :func:`cxr_monai.dicom.enhanced_image_sc`, the writer the deploy app uses: in the source's study,
      referencing the source in SourceImageSequence, PixelSpacing divided by the scale (ImagerPixelSpacing only:
      NominalScannedPixelSpacing), the model name, version and weights sha256 in DerivationDescription, series
      description "AI-enhanced 4x - NOT FOR PRIMARY DIAGNOSIS". One series per study for the writer's lifetime
      (``series_number``), instances numbered in writing order; written atomically.
    * PNG/JPEG/TIFF and other raster sources -> 16-bit PNG (:func:`cxr_monai.io.save_png`).
    * NIfTI -> NIfTI with the voxel size divided by the scale.

    A derived DICOM is only written into the study of a DICOM source: a non-DICOM source (or a DICOM header
    without the Study, SOP Class or SOP Instance UID to reference) gets a PNG, also when ``output_format`` is
    ``"dcm"``, with a warning naming the file. No new study is invented for it: a patient-less study made up
    from a PNG could be filed against the wrong patient in a PACS.

    Args:
        output_dir: folder to write to (created).
        scale: SR factor (for the written pixel spacing; the DICOM spacing follows the size ratio).
        output_format: ``None`` (same family as the input), ``"png"``, ``"dcm"`` or ``"nii.gz"``.
        suffix: appended to the output file stem.
        model_info: provenance written into the DICOM: ``name`` (or ``model_name``), ``version`` and
            ``weights_sha256``, e.g. :func:`cxr_monai.commissioning.model_identity` of the bundle.
        series_number: SeriesNumber of the DICOM series (default: the deploy app's enhanced series,
            ``cxr_monai.results.SERIES_NUMBERS["enhanced"]``).
    """

    def __init__(
        self,
        output_dir: str | Path,
        scale: int = 4,
        output_format: str | None = None,
        suffix: str = "_sr",
        model_info: Mapping[str, Any] | None = None,
        series_number: int | None = None,
    ) -> None:
        if output_format not in (None, "png", "dcm", "nii.gz"):
            raise ValueError(f"output_format must be None, 'png', 'dcm' or 'nii.gz', got {output_format!r}.")
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}.")
        self.output_dir = Path(output_dir)
        self.scale, self.output_format, self.suffix = scale, output_format, suffix
        info = dict(model_info or {})
        self.model_info = {"model_name": str(info.get("model_name") or info.get("name") or "CSAEGAN"),
                           "version": str(info.get("version", "")), "scale": int(scale),
                           "weights_sha256": str(info.get("weights_sha256") or "")}
        if series_number is None:

            series_number = SERIES_NUMBERS["enhanced"]
        self.series_number = int(series_number)
        self.written: list[Path] = []
        self._series: dict[str, list] = {}  # study UID -> [series UID, last instance number]

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    @staticmethod
    def _family(name: str) -> str:
        low = name.lower()
        if low.endswith((".nii", ".nii.gz")):
            return "nii.gz"
        if low.endswith((".dcm", ".dicom")) or "." not in Path(low).name:
            return "dcm"
        return "png"

    @staticmethod
    def _dicom_source(name: str) -> tuple[Any, str | None]:
        """The source's DICOM header, or ``None`` and why a derived DICOM cannot reference it."""
        if not Path(name).is_file():
            return None, "the source is not a file on disk"
        try:
            ds = pydicom.dcmread(name, stop_before_pixels=True)
        except Exception as err:  # noqa: BLE001 - a PNG, a JPEG, ... is simply not DICOM
            return None, f"the source is not DICOM ({type(err).__name__})"
        missing = [k for k in ("StudyInstanceUID", "SOPClassUID", "SOPInstanceUID", "Rows", "Columns")
                   if not ds.get(k)]
        return (None, f"the source DICOM has no {', '.join(missing)}") if missing else (ds, None)

    def _write_dicom(self, path: Path, img: torch.Tensor, ds: Any) -> Path:

        series = self._series.setdefault(str(ds.StudyInstanceUID), [dicom_out.new_uid(), 0])
        series[1] += 1
        sc = dicom_out.enhanced_image_sc(ds, img[0].numpy(), self.model_info, series_uid=series[0],
                                         series_number=self.series_number, instance_number=series[1])
        return dicom_out.write_dataset(sc, path)

    def write(self, sr: torch.Tensor, source: Any, name: str) -> Path:
        """Write one (1, H, W) SR image; ``source`` is the input MetaTensor (or its meta dict), ``name`` its file."""
        fmt = self.output_format or self._family(name)
        stem = Path(name).name
        for ext in (".nii.gz", ".nii", ".dcm", ".dicom", ".png", ".jpeg", ".jpg", ".tif", ".tiff", ".bmp"):
            if stem.lower().endswith(ext):
                stem = stem[: -len(ext)]
                break
        self.output_dir.mkdir(parents=True, exist_ok=True)
        img = torch.as_tensor(sr).detach().float().cpu().clamp(0, 1)
        ds = None
        if fmt == "dcm":
            ds, why = self._dicom_source(name)
            if ds is None:
                logger.warning("%s: PNG written instead of DICOM: %s (a derived DICOM goes into its source's "
                               "study only)", name, why)
                fmt = "png"
        path = self.output_dir / f"{stem}{self.suffix}.{fmt}"
        if fmt == "png":
            save_png(path, img, bits=16)
        elif fmt == "dcm":
            self._write_dicom(path, img, ds)
        else:
            import nibabel as nib

            spacing = meta_value(source, "spacing")
            sp = [float(v) for v in spacing] if spacing is not None else [math.nan, math.nan]
            known = all(math.isfinite(v) and v > 0 for v in sp)
            row_mm, col_mm = (sp[0] / self.scale, sp[1] / self.scale) if known else (1.0, 1.0)
            # cxr_monai.io reads NIfTI (X, Y) as (rows = Y, cols = X): write the transpose back
            nii = nib.Nifti1Image(img[0].numpy().T.astype(np.float32), np.diag([col_mm, row_mm, 1.0, 1.0]))
            if known:
                nii.header.set_xyzt_units("mm")
            nib.save(nii, str(path))
        self.written.append(path)
        return path

    def __call__(self, engine: Engine) -> None:
        for i, item in enumerate(output_items(engine.state.output)):
            self.write(item[Keys.PRED], item.get(Keys.IMAGE), output_name(item, f"image_{len(self.written) + i:04d}"))
