"""Evaluation handler of the SR bundle (``configs/evaluate.json``): :class:`SRMetricsWriter` scores every SR
output against its HR image and the bicubic baseline (:func:`cxr_monai.metrics.sr.sr_image_metrics`) and writes
``metrics.json``, ``per_image.csv`` and a figure.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.utils import CommonKeys as Keys
from monai.utils import IgniteInfo, min_version, optional_import

from cxr_monai.engines.outputs import output_items, output_name
from cxr_monai.metrics.sr import bicubic_up, sr_image_metrics

if TYPE_CHECKING:
    from ignite.engine import Engine, Events
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
    Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = ["SRMetricsWriter"]


class SRMetricsWriter:
    """Evaluation handler: per-image PSNR/SSIM/MS-SSIM of SR and bicubic against HR, degradation-consistency
    PSNR (hallucination guard); writes ``metrics.json`` (means + ``n`` + convention), ``per_image.csv`` and a
    figure of LR / bicubic / SR / HR crops for the first ``figure_cases`` images.

    Args:
        output_dir: folder to write to (created).
        sigma: blur sigma of the degradation (HR px).
        scale: SR factor (also the excluded HR border).
        figure_cases: number of cases in the figure (0: no figure).
        figure_crop: size of the HR region shown per case.
        with_ms_ssim: compute MS-SSIM.
        extra: constant entries added to ``metrics.json`` (e.g. the configuration).
    """

    def __init__(
        self,
        output_dir: str | Path,
        sigma: float = 1.0,
        scale: int = 4,
        figure_cases: int = 4,
        figure_crop: int = 128,
        with_ms_ssim: bool = True,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        if scale < 1 or sigma < 0 or figure_cases < 0 or figure_crop < 8:
            raise ValueError("need scale >= 1, sigma >= 0, figure_cases >= 0, figure_crop >= 8.")
        self.output_dir = Path(output_dir)
        self.sigma, self.scale = sigma, scale
        self.figure_cases, self.figure_crop = figure_cases, figure_crop
        self.with_ms_ssim = with_ms_ssim
        self.extra = dict(extra or {})
        self.rows: list[dict[str, Any]] = []
        self._fig: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def reset(self, engine: Engine | None = None) -> None:
        self.rows, self._fig = [], []

    def add(self, sr: torch.Tensor, hr: torch.Tensor, lr: torch.Tensor, name: str) -> dict[str, Any]:
        """Score one (1, H, W) triple and remember it."""
        sr, hr, lr = (torch.as_tensor(t).detach().float().cpu() for t in (sr, hr, lr))
        row: dict[str, Any] = {"image": name}
        row.update(sr_image_metrics(sr, hr, lr, self.sigma, self.scale, self.with_ms_ssim))
        self.rows.append(row)
        if len(self._fig) < self.figure_cases:
            bic = bicubic_up(lr, self.scale)
            self._fig.append((Path(name).name, lr[0].numpy(), bic[0].numpy(), sr[0].clamp(0, 1).numpy(),
                              hr[0].numpy()))
        return row

    def iteration_completed(self, engine: Engine) -> None:
        for item in output_items(engine.state.output):
            hr = item.get(Keys.LABEL)
            if not isinstance(hr, torch.Tensor):
                raise ValueError("SRMetricsWriter needs the HR image under 'label' in the engine output.")
            self.add(item[Keys.PRED], hr, item[Keys.IMAGE], output_name(item, f"case_{len(self.rows):04d}"))

    def summary(self) -> dict[str, Any]:
        """Means over the images so far, with the convention."""
        keys = [k for k in (self.rows[0] if self.rows else {}) if k != "image"]
        mean = {k: float(np.nanmean([r[k] for r in self.rows])) for k in keys}
        out: dict[str, Any] = {
            "psnr_sr": mean.get("psnr_sr"),
            "psnr_bicubic": mean.get("psnr_bicubic"),
            "psnr_gain_db": None if not mean else mean["psnr_sr"] - mean["psnr_bicubic"],
            "ssim_sr": mean.get("ssim_sr"),
            "ssim_bicubic": mean.get("ssim_bicubic"),
            "ms_ssim": mean.get("ms_ssim_sr"),
            "ms_ssim_sr": mean.get("ms_ssim_sr"),
            "ms_ssim_bicubic": mean.get("ms_ssim_bicubic"),
            "consistency": mean.get("consistency_psnr_sr"),
            "consistency_psnr_sr": mean.get("consistency_psnr_sr"),
            "consistency_psnr_bicubic": mean.get("consistency_psnr_bicubic"),
            "n": len(self.rows),
            "convention": (
                f"HR degraded by Gaussian blur sigma={self.sigma} HR px (reflect padding) + antialiased bicubic "
                f"x{self.scale} downsampling; bicubic baseline F.interpolate(bicubic, align_corners=False) clamped; "
                f"PSNR/SSIM (MONAI, data range 1, 11x11 Gaussian window sigma 1.5) with a {self.scale}-px border "
                f"excluded; consistency = PSNR(degrade(SR), LR), 1 LR px border excluded."
            ),
        }
        out.update(self.extra)
        return out

    def completed(self, engine: Engine | None = None) -> dict[str, Any]:
        """Write metrics.json, per_image.csv and the figure; return the summary."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        summary = self.summary()
        (self.output_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
        if self.rows:
            with open(self.output_dir / "per_image.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(self.rows[0]))
                writer.writeheader()
                writer.writerows(self.rows)
        if self._fig:
            self._figure(self.output_dir / "figure.png")
        return summary

    def _figure(self, path: Path) -> None:
        import matplotlib  # optional: only for the figure

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        n = len(self._fig)
        fig, axes = plt.subplots(n, 4, figsize=(10, 2.6 * n), squeeze=False)
        c = self.figure_crop
        for r, (name, lr, bic, sr, hr) in enumerate(self._fig):
            h, w = hr.shape
            t, l_ = max(0, (h - c) // 2), max(0, (w - c) // 2)
            s = self.scale
            panels = [
                ("LR (nearest)", np.kron(lr[t // s : (t + c) // s, l_ // s : (l_ + c) // s], np.ones((s, s)))),
                ("bicubic", bic[t : t + c, l_ : l_ + c]),
                ("SR", sr[t : t + c, l_ : l_ + c]),
                ("HR", hr[t : t + c, l_ : l_ + c]),
            ]
            for col, (title, img) in enumerate(panels):
                ax = axes[r][col]
                ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                ax.set_title(f"{title}" if col else f"{name}\n{title}", fontsize=8)
                ax.axis("off")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
