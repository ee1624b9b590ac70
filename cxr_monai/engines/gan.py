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

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.engines import Trainer
from monai.engines.utils import default_prepare_batch
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from cxr_monai.engines.ema import make_ema, update_ema
from cxr_monai.losses.adversarial import hinge_d_loss, hinge_g_loss

__all__ = [
    "GANKeys",
    "bce_d_loss",
    "bce_g_loss",
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
    "evaluate_generator",
    "load_checkpoint_entry",
]


class GANKeys:
    """Keys of the per-iteration output dict of :class:`ConditionalGANTrainer`."""

    D_LOSS = "d_loss"
    G_LOSS = "g_loss"
    D_REAL = "d_real"
    D_FAKE = "d_fake"


def bce_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Original (DCGAN) discriminator loss: BCE with real = 1, fake = 0, on logits (the seed's sigmoid)."""
    return F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits)) + \
        F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))


def bce_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating (DCGAN) generator loss: BCE of the fakes against the "real" label."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


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
        from cxr_monai.engines.distributed import unwrap

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
        from cxr_monai.engines.distributed import world_size

        w = world_size()
        z = torch.randn(n * w, self.latent_dim, generator=self.noise)
        if w > 1:
            import torch.distributed as dist

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


@torch.no_grad()
def generate(
    generator: nn.Module,
    num_images: int,
    class_index: int | Sequence[int] | None = 0,
    seed: int = 0,
    latent_dim: int | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reproducible samples: ``num_images`` images (N, 1, H, W) in [0, 1] and their class indices.

    Latents are drawn on the CPU from ``torch.Generator().manual_seed(seed)`` (N x latent_dim at once), so
    the same seed gives the same images whatever the batch size or device.

    Args:
        generator: ``G(z, y)``; put in eval mode here.
        num_images: how many images.
        class_index: one class for all, a sequence of per-image classes, or ``None`` (unconditional).
        seed: noise seed.
        latent_dim: latent length (default: ``generator.latent_dim``).
        batch_size: images per forward pass.
        device: device to run on.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    latent_dim = int(latent_dim or getattr(generator, "latent_dim"))
    z = torch.randn(num_images, latent_dim, generator=torch.Generator().manual_seed(int(seed)))
    if class_index is None:
        y = torch.zeros(num_images, dtype=torch.long)
    elif isinstance(class_index, int):
        y = torch.full((num_images,), class_index, dtype=torch.long)
    else:
        y = torch.as_tensor(list(class_index), dtype=torch.long)
        if y.numel() != num_images:
            raise ValueError(f"{y.numel()} class indices for {num_images} images")
    generator = generator.eval().to(device)
    outs = []
    for i in range(0, num_images, batch_size):
        yy = None if class_index is None else y[i : i + batch_size].to(device)
        outs.append(generator(z[i : i + batch_size].to(device), yy).float().clamp(0, 1).cpu())
    return torch.cat(outs), y


def sample_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """Tile (N, 1, H, W) images into one (1, rows*(H+p)+p, nrow*(W+p)+p) grid (white separators)."""
    n, c, h, w = images.shape
    rows = (n + nrow - 1) // nrow
    grid = torch.full((c, rows * (h + padding) + padding, nrow * (w + padding) + padding), pad_value)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = images[i]
    return grid


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
        from ignite.engine import Events

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
            from PIL import Image

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
        import time

        return time.monotonic() if self.clock == "wall" else time.process_time()

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _started(self, engine: Any) -> None:
        self._start = self._now()

    def __call__(self, engine: Any) -> None:
        from cxr_monai.engines.distributed import any_rank

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
    from cxr_monai.networks.gans import bake_spectral_norm

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
    import csv

    from cxr_monai.io import save_png

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
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, lambda e: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._write_batch)
        engine.add_event_handler(Events.COMPLETED, self._write_manifest)

    def _write_batch(self, engine) -> None:
        from cxr_monai.io import save_png

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
        import csv

        with (self.output_dir / "manifest.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["file", "class", "seed", "index"])
            writer.writeheader()
            writer.writerows(sorted(self.rows, key=lambda r: r["index"]))


def evaluate_generator(
    generator: nn.Module,
    real_images: torch.Tensor,
    real_labels: torch.Tensor,
    output_dir: str | Path,
    extractor: nn.Module | Callable | None = None,
    class_names: Sequence[str] = ("NORMAL", "PNEUMONIA"),
    num_per_class: int = 256,
    seed: int = 0,
    discriminator: nn.Module | None = None,
    memorisation_threshold: float = 0.95,
    kid_subset_size: int = 1000,
    nearest_candidates: int = 32,
    device: str | torch.device = "cpu",
    extra: dict | None = None,
) -> dict:
    """Generate ``num_per_class`` images of every class and compare them with the real images of that class
    (and pooled over classes). Writes ``metrics.json`` and ``samples_grid.png`` into ``output_dir``.

    Args:
        generator: class-conditional generator ``G(z, y)`` with ``latent_dim``.
        real_images: (M, 1, H, W) real images in [0, 1] (the generator's training images for the
            memorisation check); resized to the generated size when they differ.
        real_labels: (M,) class indices.
        output_dir: where to write.
        extractor: feature extractor (``None``: pixel metrics only).
        class_names: class names in label order.
        num_per_class: generated images per class (256 for the memorisation criterion).
        seed: noise seed (class ``c`` uses ``seed + c``).
        discriminator: optional ``D(x, y)``; adds its real/fake accuracy, precision and recall (seed figures).
        memorisation_threshold: SSIM above which a sample counts as memorised.
        kid_subset_size: KID subset size.
        nearest_candidates: pre-selected reals per fake for the nearest-real SSIM.
        device: device for generation.
        extra: additional entries copied into ``metrics.json`` (e.g. training budget).
    """
    from cxr_monai.io import save_png
    from cxr_monai.metrics.generative import (ClassifierFeatures, class_fidelity, class_matched_indices, discriminator_report, extract_features, fid, generative_report, kid, knn_precision_recall, mmd)

    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fakes, fake_labels = [], []
    for c in range(len(class_names)):
        imgs, ys = generate(generator, num_per_class, c, seed=seed + c, device=device)
        fakes.append(imgs)
        fake_labels.append(ys)
    fake, fake_y = torch.cat(fakes), torch.cat(fake_labels)
    real = real_images.float()
    if real.shape[-2:] != fake.shape[-2:]:
        real = F.interpolate(real, size=fake.shape[-2:], mode="bilinear", align_corners=False,
                             antialias=real.shape[-1] > fake.shape[-1])
    report: dict[str, Any] = {"per_class": {}, "settings": {
        "num_per_class": num_per_class, "seed": seed, "image_size": list(fake.shape[-2:]),
        "memorisation_threshold": memorisation_threshold, "nearest_candidates": nearest_candidates,
        "ssim": "11x11 Gaussian sigma 1.5, k1 0.01, k2 0.03, data range 1, valid filtering",
        "feature_extractor": None if extractor is None else type(getattr(extractor, "network", extractor)).__name__}}
    fr = ff = None
    if extractor is not None:  # once for all images; the per-class metrics use slices
        fr, ff = extract_features(real, extractor), extract_features(fake, extractor)
    for c, name in enumerate(class_names):
        mask = real_labels == c
        if mask.sum() < 2:
            continue
        report["per_class"][name] = generative_report(
            fake[fake_y == c], real[mask], extractor, memorisation_threshold, kid_subset_size=kid_subset_size,
            nearest_candidates=nearest_candidates, seed=seed,
            real_features=None if fr is None else fr[mask], fake_features=None if ff is None else ff[fake_y == c])
    if extractor is not None:  # pooled over classes, with the real images subsampled to the generated class mix
        keep = class_matched_indices(real_labels, fake_y, seed)
        fr_all = fr[keep]
        report["all"] = {"fid": fid(fr_all, ff), "kid_mean": kid(fr_all, ff, 100, kid_subset_size, seed)[0],
                         "mmd": mmd(fr_all, ff, seed), "num_real": int(keep.numel()),
                         "class_mix": "real images subsampled to the generated images' class proportions"}
        p, r = knn_precision_recall(fr_all, ff)
        report["all"].update({"knn_precision": p, "knn_recall": r})
    if isinstance(extractor, ClassifierFeatures) and extractor.method is not None:
        report["class_fidelity"] = {"generated": class_fidelity(fake, fake_y, extractor, class_names),
                                    "real": class_fidelity(real, real_labels, extractor, class_names)}
    report["memorised_share"] = float(np.mean([v["memorised_share"] for v in report["per_class"].values()]))
    report["nearest_real_ssim_max"] = float(max(v["nearest_real_ssim_max"] for v in report["per_class"].values()))
    if discriminator is not None:
        discriminator = discriminator.eval().to(device)
        with torch.no_grad():
            n = min(real.shape[0], fake.shape[0])
            gen = torch.Generator().manual_seed(seed)
            ri = torch.randperm(real.shape[0], generator=gen)[:n]
            dr = torch.cat([discriminator(real[ri][i : i + 64].to(device), real_labels[ri][i : i + 64].to(device)).cpu()
                            for i in range(0, n, 64)])
            df = torch.cat([discriminator(fake[i : i + 64].to(device), fake_y[i : i + 64].to(device)).cpu()
                            for i in range(0, fake.shape[0], 64)])
        report["discriminator"] = discriminator_report(dr, df)
    if extra:
        report["extra"] = extra
    rows = [fake[fake_y == c][:8] for c in range(len(class_names))]
    save_png(out_dir / "samples_grid.png", sample_grid(torch.cat(rows), nrow=8), bits=8)
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    return report
