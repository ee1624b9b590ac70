"""Ignite workflow for class-conditional latent GANs (SAGAN with hinge loss, DCGAN with BCE).

:class:`ConditionalGANTrainer` is a :class:`monai.engines.Trainer` (like the model-zoo's ``VaeGanTrainer``):
each iteration takes a batch of real images and labels, updates the discriminator, updates the generator
every ``n_critic`` iterations, and keeps an exponential moving average (EMA) copy of the generator that
is used for samples, evaluation and export. Two time-scale learning rates (G 1e-4, D 4e-4, Adam betas
(0, 0.9)) are set on the optimizers the bundle config passes in.

:class:`GANSampleGrid` writes a fixed-noise sample grid (both classes) to TensorBoard and to PNG at the end
of every epoch, so progress can be judged on the same latent vectors across epochs.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Events
from monai.engines import Trainer
from monai.engines.utils import default_prepare_batch
from torch import nn
from torch.optim import Optimizer
from PIL import Image
from torch.utils.data import DataLoader

from cxr_monai.engines.distributed import any_rank, unwrap, world_size
from cxr_monai.engines.ema import make_ema, update_ema
from cxr_monai.io import save_png
from cxr_monai.losses.adversarial import hinge_d_loss, hinge_g_loss
from cxr_monai.metrics.synthesis import sample_grid
from cxr_monai.networks.gans import bake_spectral_norm, generate

__all__ = [
    "GANKeys",
    "update_ema",
    "ConditionalGANTrainer",
    "GANSampleGrid",
    "TrainingTimeLimit",
    "sample_grid",
    "generate",
    "export_generator",
    "write_samples",
    "latent_datalist",
    "PrepareLatentBatch",
    "SampleWriter",
    "load_checkpoint_entry",
]


class GANKeys:
    """Keys of the per-iteration output dict of :class:`ConditionalGANTrainer`."""

    D_LOSS = "d_loss"
    G_LOSS = "g_loss"
    D_REAL = "d_real"
    D_FAKE = "d_fake"


@torch.no_grad()
class ConditionalGANTrainer(Trainer):
    """Adversarial training of a class-conditional generator ``G(z, y)`` against ``D(x, y)``.

    Per iteration: real images ``x`` and labels ``y`` come from ``prepare_batch``; the discriminator is
    updated once on ``(x, y)`` against ``G(z, y)`` (fake labels = the real batch's labels, so the class mix
    follows the data); every ``n_critic`` iterations the generator is updated on fresh noise and the EMA
    copy follows it. The output dict holds the losses and the mean real/fake logits.

    Args:
        device: torch device.
        max_epochs: epochs to run.
        train_data_loader: loader of dicts with ``image`` (N, 1, H, W) in [0, 1] and ``label`` (N,).
        g_network: generator ``G(z, y) -> (N, 1, H, W)`` in [0, 1].
        g_optimizer: optimizer of G (TTUR: lr 1e-4, betas (0, 0.9)).
        d_network: discriminator ``D(x, y) -> (N,)`` logits.
        d_optimizer: optimizer of D (TTUR: lr 4e-4, betas (0, 0.9)).
        latent_dim: length of the latent vector.
        num_classes: number of classes (0: unconditional, labels are ignored).
        d_loss_function: ``f(real_logits, fake_logits)``; hinge by default.
        g_loss_function: ``f(fake_logits)``; hinge by default.
        n_critic: discriminator updates per generator update.
        ema_network: a copy of G to keep the moving average in (default: a deep copy of ``g_network``).
        ema_decay: EMA decay per generator step (0 disables averaging: the copy follows G).
        ema_start: generator steps before averaging starts (the copy follows G until then).
        epoch_length: iterations per epoch (default: ``len(train_data_loader)``).
        prepare_batch: ``f(batch, device, non_blocking) -> (image, label)``.
        train_handlers: Ignite/MONAI handlers to attach.
        amp: mixed precision (CUDA only; ignored on CPU).
        non_blocking: non-blocking host-to-device copies.
        seed: seed of this trainer's noise generator (fake batches are reproducible for a given seed).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: DataLoader,
        g_network: nn.Module,
        g_optimizer: Optimizer,
        d_network: nn.Module,
        d_optimizer: Optimizer,
        latent_dim: int = 128,
        num_classes: int = 2,
        d_loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = hinge_d_loss,
        g_loss_function: Callable[[torch.Tensor], torch.Tensor] = hinge_g_loss,
        n_critic: int = 1,
        ema_network: nn.Module | None = None,
        ema_decay: float = 0.999,
        ema_start: int = 0,
        epoch_length: int | None = None,
        prepare_batch: Callable = default_prepare_batch,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        non_blocking: bool = False,
        seed: int = 0,
    ) -> None:
        if n_critic < 1:
            raise ValueError(f"n_critic must be >= 1, got {n_critic}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        if latent_dim < 1 or num_classes < 0:
            raise ValueError("latent_dim must be >= 1 and num_classes >= 0")
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            handlers=train_handlers,
            amp=amp and torch.device(device).type == "cuda",
            decollate=False,
        )
        self.g_network, self.g_optimizer = g_network, g_optimizer
        self.d_network, self.d_optimizer = d_network, d_optimizer
        self.latent_dim, self.num_classes = latent_dim, num_classes
        self.d_loss_function, self.g_loss_function = d_loss_function, g_loss_function
        self.n_critic = n_critic
        # the EMA copy is a plain network even when G is DDP-wrapped (its state_dict has no "module." prefix)
        self.ema_network = ema_network if ema_network is not None else make_ema(g_network)
        if ema_network is not None:
            self.ema_network.load_state_dict(unwrap(g_network).state_dict())
        self.ema_network.eval().requires_grad_(False)
        self.ema_decay, self.ema_start = ema_decay, ema_start
        self.noise = torch.Generator(device="cpu").manual_seed(int(seed))

    def _latents(self, n: int, device: torch.device) -> torch.Tensor:
        """``n`` latents for this process. Under DDP the (equally seeded) noise generator of every rank draws
        the global batch's ``n * W`` latents and rank ``r`` takes ``[r::W]``, the positions of its share of a
        ``DistributedSampler`` batch: ranks get different noise, and the draw is the single-process one."""
        w = world_size()
        z = torch.randn(n * w, self.latent_dim, generator=self.noise)
        if w > 1:
            z = z[dist.get_rank()::w]
        return z.to(device)

    def _iteration(self, engine: ConditionalGANTrainer, batchdata: dict | Sequence) -> dict[str, Any]:
        if batchdata is None:
            raise ValueError("must provide batch data for current iteration.")
        real, label = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)
        real = torch.as_tensor(real, dtype=torch.float32)
        n = real.shape[0]
        y = None
        if engine.num_classes > 0:
            if label is None:
                raise ValueError("a class-conditional GAN needs a label in every batch")
            y = torch.as_tensor(label).long().reshape(n).to(real.device)
        g, d = engine.g_network, engine.d_network
        g.train()
        d.train()

        # discriminator step
        with torch.no_grad():
            fake = g(engine._latents(n, real.device), y)
        d_real, d_fake = d(real, y), d(fake, y)
        d_loss = engine.d_loss_function(d_real, d_fake)
        engine.d_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        engine.d_optimizer.step()
        out: dict[str, Any] = {
            GANKeys.D_LOSS: d_loss.item(),
            GANKeys.D_REAL: d_real.detach().mean().item(),
            GANKeys.D_FAKE: d_fake.detach().mean().item(),
            GANKeys.G_LOSS: float("nan"),
        }

        # generator step (every n_critic iterations), D frozen
        if engine.state.iteration % engine.n_critic == 0:
            d.requires_grad_(False)
            g_loss = engine.g_loss_function(d(g(engine._latents(n, real.device), y), y))
            engine.g_optimizer.zero_grad(set_to_none=True)
            g_loss.backward()
            engine.g_optimizer.step()
            d.requires_grad_(True)
            g_steps = engine.state.iteration // engine.n_critic  # survives a resume (the trainer state is saved)
            decay = engine.ema_decay if g_steps > engine.ema_start else 0.0
            update_ema(engine.ema_network, g, decay)
            out[GANKeys.G_LOSS] = g_loss.item()
        return out


class GANSampleGrid:
    """Ignite handler: at the end of every ``interval`` epochs, sample a grid from fixed noise.

    Each row pairs the same latent vectors with every class in turn (rows alternate classes), so a grid
    shows class conditioning at a glance and successive grids are comparable. The grid goes to TensorBoard
    (``add_image``) and, when ``output_dir`` is given, to ``samples_epoch=N.png``.

    Args:
        network: the generator to sample (usually the trainer's EMA copy); ``None``: ``engine.ema_network``.
        latent_dim: latent length.
        num_classes: classes (0: unconditional).
        per_class: samples per class.
        seed: seed of the fixed noise.
        log_dir: TensorBoard log folder (``None``: no TensorBoard).
        output_dir: folder for PNG grids (``None``: no PNG).
        tag: TensorBoard image tag.
        interval: epochs between grids.
    """

    def __init__(self, network: nn.Module | None = None, latent_dim: int = 128, num_classes: int = 2,
                 per_class: int = 8, seed: int = 1234, log_dir: str | None = None, output_dir: str | None = None,
                 tag: str = "samples", interval: int = 1) -> None:
        if per_class < 1 or interval < 1:
            raise ValueError("per_class and interval must be >= 1")
        self.network = network
        self.latent_dim, self.num_classes, self.per_class = latent_dim, num_classes, per_class
        self.z = torch.randn(per_class, latent_dim, generator=torch.Generator().manual_seed(seed))
        self.log_dir, self.output_dir, self.tag, self.interval = log_dir, output_dir, tag, interval
        self._writer: Any = None

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    @torch.no_grad()
    def grid(self, network: nn.Module, device: torch.device | str = "cpu") -> torch.Tensor:
        """The (1, H', W') grid of the fixed latents, one row per class."""
        classes = range(max(self.num_classes, 1))
        was_training = network.training
        network.eval()
        imgs = []
        for c in classes:
            y = torch.full((self.per_class,), c, dtype=torch.long, device=device) if self.num_classes else None
            imgs.append(network(self.z.to(device), y).float().clamp(0, 1).cpu())
        network.train(was_training)
        return sample_grid(torch.cat(imgs), nrow=self.per_class)

    def __call__(self, engine: Any) -> None:
        network = self.network if self.network is not None else engine.ema_network
        grid = self.grid(network, engine.state.device)
        epoch = engine.state.epoch
        if self.log_dir is not None:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=self.log_dir)
            self._writer.add_image(self.tag, grid, epoch)
            self._writer.flush()
        if self.output_dir is not None:
            Path(self.output_dir).mkdir(parents=True, exist_ok=True)
            arr = (grid[0].numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
            Image.fromarray(arr).save(Path(self.output_dir) / f"samples_epoch={epoch}.png")


class TrainingTimeLimit:
    """Ignite handler: stop training (cleanly, after the current iteration) once a time budget is spent;
    the final checkpoint is still written. On a shared machine the process CPU time (``clock="cpu"``) is the
    fair budget: two models given the same CPU seconds got the same compute whatever else was running.

    Args:
        limit_sec: budget in seconds.
        clock: ``"wall"`` (monotonic wall time) or ``"cpu"`` (this process's CPU time, all threads).
    """

    def __init__(self, limit_sec: float, clock: str = "wall") -> None:
        if limit_sec <= 0:
            raise ValueError(f"limit_sec must be positive, got {limit_sec}")
        if clock not in ("wall", "cpu"):
            raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
        self.limit_sec = float(limit_sec)
        self.clock = clock
        self._start: float | None = None

    def _now(self) -> float:
        return time.monotonic() if self.clock == "wall" else time.process_time()

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _started(self, engine: Any) -> None:
        self._start = self._now()

    def __call__(self, engine: Any) -> None:
        # under DDP every rank takes the decision together (one rank's clock is enough), so that no rank is
        # left waiting at a collective for ranks that stopped at another iteration
        if any_rank(self._start is not None and self._now() - self._start > self.limit_sec):
            engine.logger.info(f"{self.clock} time limit of {self.limit_sec:.0f} s reached at iteration "
                               f"{engine.state.iteration}")
            engine.terminate()


def export_generator(checkpoint: str | Path, network_def: nn.Module, plain_def: nn.Module, out_path: str | Path,
                     key: str = "ema") -> nn.Module:
    """Write a bundle's ``models/model.pt``: the (EMA) generator with spectral norm folded into its weights.

    Args:
        checkpoint: training checkpoint (dict holding ``key``) or a bare state dict of ``network_def``.
        network_def: the generator as trained (``spectral_norm=True``).
        plain_def: the same generator built with ``spectral_norm=False`` (what inference instantiates).
        out_path: where to save the plain state dict.
        key: checkpoint entry to use (``ema`` by default; ``generator`` for the raw weights).

    Returns:
        ``plain_def`` loaded with the baked weights, in eval mode.
    """
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and key in state and isinstance(state[key], dict):
        state = state[key]
    network_def.load_state_dict(state)
    baked = bake_spectral_norm(network_def.eval()).state_dict()
    plain_def.load_state_dict(baked)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(plain_def.state_dict(), out_path)
    return plain_def.eval()


def write_samples(
    generator: nn.Module,
    output_dir: str | Path,
    num_images: int = 16,
    class_name: str = "NORMAL",
    class_names: Sequence[str] = ("NORMAL", "PNEUMONIA"),
    seed: int = 0,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    bits: int = 8,
) -> Path:
    """Generate ``num_images`` PNGs of one class and a ``manifest.csv`` (file, class, seed, index).

    Files are named ``<class>_seed<seed>_<index>.png``; the same generator and seed give the same files
    (see :func:`generate`). Returns the manifest path.

    Args:
        generator: class-conditional generator (eval mode is set here).
        output_dir: folder to write into (created).
        num_images: number of images.
        class_name: class to generate (case-insensitive, one of ``class_names``).
        class_names: class names in label order.
        seed: noise seed.
        batch_size: images per forward pass.
        device: device to run on.
        bits: PNG bit depth (8 or 16).
    """
    names = [c.upper() for c in class_names]
    if class_name.upper() not in names:
        raise ValueError(f"class_name {class_name!r} is not one of {list(class_names)}")
    index = names.index(class_name.upper())
    images, _ = generate(generator, num_images, index, seed=seed, batch_size=batch_size, device=device)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, img in enumerate(images):
        name = f"{class_names[index]}_seed{seed}_{i:05d}.png"
        save_png(out / name, img, bits=bits)
        rows.append({"file": name, "class": class_names[index], "seed": seed, "index": i})
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "class", "seed", "index"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def load_checkpoint_entry(network: nn.Module, path: str | Path | None, key: str = "discriminator") -> nn.Module | None:
    """Load ``checkpoint[key]`` (e.g. the discriminator of a training checkpoint) into ``network``; eval mode.

    Returns ``None`` when ``path`` is ``None`` (an optional network in a config).
    """
    if path is None:
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if key not in state:
        raise KeyError(f"{path}: no entry {key!r} (entries: {sorted(state)})")
    network.load_state_dict(state[key])
    return network.eval()


def latent_datalist(num_images: int, class_name: str, class_names: Sequence[str] = ("NORMAL", "PNEUMONIA"),
                    seed: int = 0, latent_dim: int = 128) -> list[dict]:
    """The sampling request of the synthesis bundle's inference as a datalist, one item per image:
    ``{"image": z (latent_dim,), "label": class index, "index": i, "seed": seed, "class": name}``.

    Latents are drawn exactly as :func:`generate` draws them (one ``N x latent_dim`` draw from
    ``torch.Generator().manual_seed(seed)``), so the evaluator-driven inference writes the same images.

    Raises:
        ValueError: ``class_name`` is not one of ``class_names`` or ``num_images < 1``.
    """
    names = [c.upper() for c in class_names]
    if str(class_name).upper() not in names:
        raise ValueError(f"class_name {class_name!r} is not one of {list(class_names)}")
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    index = names.index(str(class_name).upper())
    z = torch.randn(int(num_images), int(latent_dim), generator=torch.Generator().manual_seed(int(seed)))
    return [{"image": z[i], "label": index, "index": i, "seed": int(seed), "class": class_names[index]}
            for i in range(int(num_images))]


class PrepareLatentBatch:
    """``prepare_batch`` for a MONAI evaluator that runs a class-conditional generator: the batch's latents
    are the network input and its labels go to the network as the second argument (``G(z, y)``)."""

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        z = batchdata["image"].to(device=device, non_blocking=non_blocking)
        y = torch.as_tensor(batchdata["label"]).long().to(device=device, non_blocking=non_blocking)
        return z, None, (y,), {}


class SampleWriter:
    """Ignite handler of the synthesis inference: writes each generated image as
    ``<class>_seed<seed>_<index>.png`` and, when the run completes, ``manifest.csv`` (file, class, seed,
    index), as :func:`write_samples` does.

    Args:
        output_dir: folder to write into (created).
        bits: PNG bit depth (8 or 16).
    """

    def __init__(self, output_dir: str | Path, bits: int = 8) -> None:
        self.output_dir, self.bits = Path(output_dir), int(bits)
        self.rows: list[dict] = []

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda e: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._write_batch)
        engine.add_event_handler(Events.COMPLETED, self._write_manifest)

    def _write_batch(self, engine) -> None:
        batch, pred = engine.state.batch, engine.state.output[0]["pred"] if isinstance(engine.state.output, list) \
            else engine.state.output["pred"]
        self.output_dir.mkdir(parents=True, exist_ok=True)
        preds = pred if isinstance(pred, (list, tuple)) else list(pred)
        for i, img in enumerate(preds):
            name = f"{batch['class'][i]}_seed{int(batch['seed'][i])}_{int(batch['index'][i]):05d}.png"
            save_png(self.output_dir / name, img.float().clamp(0, 1).cpu(), bits=self.bits)
            self.rows.append({"file": name, "class": batch["class"][i], "seed": int(batch["seed"][i]),
                              "index": int(batch["index"][i])})

    def _write_manifest(self, engine) -> None:
        with (self.output_dir / "manifest.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["file", "class", "seed", "index"])
            writer.writeheader()
            writer.writerows(sorted(self.rows, key=lambda r: r["index"]))


