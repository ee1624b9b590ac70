"""The CPU profile and the layout experiments behind the README's "What the profile said" paragraph.

    CXR_NUM_THREADS=1 python -m cxr_monai.studies.layout_study --out benchmarks/results/layout_study.json

One thread, process CPU time (so another job on the machine does not count), medians of ``--repeats`` runs with
the variants interleaved. Measures, on the shipped CSAEGAN-lite weights (128 px input) unless said otherwise:

* ``profile``: share of self CPU time per operator (``torch.profiler``, 3 forward passes);
* ``inference``: NCHW eager (the reference) against channels_last weights, a preallocated dense-block buffer
  instead of ``torch.cat`` (NCHW and channels_last), TorchScript frozen and ``optimize_for_inference``, bf16
  autocast; speed-up over the reference and max abs error against it;
* ``classifier``: the shipped ensemble at batch 32, 160 px, NCHW against channels_last;
* ``training``: one optimiser step (forward, backward, AdamW), NCHW against channels_last, for ResNet18SA-slim
  (batch 32, 160 px) and CSAEGAN-lite (8 patches of 32 -> 128).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from cxr_monai.inference import inference_layout
from cxr_monai.networks import classifier_ensemble, csaegan_lite, resnet18_sa
from cxr_monai.networks.sr import ResidualDenseBlock
from cxr_monai.utils import configure_threads, load_bundle_network

ROOT = Path(__file__).resolve().parents[2]


def _cpu_seconds(fns: dict, repeats: int) -> dict:
    """Median process CPU seconds of each callable, interleaved, after one warm-up call each."""
    times: dict = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.process_time()
            fn()
            times[k].append(time.process_time() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def _dense_block_with_buffer(self, x: torch.Tensor) -> torch.Tensor:
    """ResidualDenseBlock.forward writing each growth map into one preallocated buffer (no torch.cat)."""
    n, c, h, w = x.shape
    g = self.convs[0].out_channels
    fmt = torch.contiguous_format if x.is_contiguous() else torch.channels_last
    buf = torch.empty(n, c + 4 * g, h, w, dtype=x.dtype, memory_format=fmt)
    buf[:, :c] = x
    for i, conv in enumerate(self.convs[:4]):
        buf[:, c + i * g: c + (i + 1) * g] = F.leaky_relu(conv(buf[:, : c + i * g]), 0.2)
    return x + self.res_scale * self.convs[4](buf)


def _with_buffer(net: torch.nn.Module) -> torch.nn.Module:
    for m in net.modules():
        if isinstance(m, ResidualDenseBlock):
            m.forward = types.MethodType(_dense_block_with_buffer, m)
    return net


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "layout_study.json"))
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    threads = configure_threads()
    result: dict = {"threads": threads, "repeats": args.repeats, "timer": "process CPU time, medians"}

    sr = load_bundle_network(ROOT / "bundles" / "cxr_sr_csaegan").eval()
    x = torch.rand(1, 1, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for _ in range(2):
            sr(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                sr(x)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    result["profile"] = {e.key: round(e.self_cpu_time_total / total, 4) for e in top}

    def cl(net):
        return inference_layout(copy.deepcopy(net), "cpu")

    def bf16(net):
        def run(t):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return net(t).float()
        return run

    variants = {
        "nchw (reference)": sr,
        "channels_last": cl(sr),
        "buffer, nchw": _with_buffer(copy.deepcopy(sr)),
        "buffer, channels_last": cl(_with_buffer(copy.deepcopy(sr))),
        "torchscript frozen": torch.jit.freeze(torch.jit.script(copy.deepcopy(sr))),
        "torchscript optimize_for_inference": torch.jit.optimize_for_inference(torch.jit.script(copy.deepcopy(sr))),
        "bf16 autocast": bf16(sr),
    }
    with torch.inference_mode():
        ref = sr(x)
        errors = {k: float((f(x) - ref).abs().max()) for k, f in variants.items()}
        secs = _cpu_seconds({k: (lambda f=f: f(x)) for k, f in variants.items()}, args.repeats)
    base = secs["nchw (reference)"]
    result["inference"] = {k: {"cpu_s": round(v, 4), "speedup": round(base / v, 3), "max_abs_err": errors[k]}
                           for k, v in secs.items()}
    print(json.dumps(result["inference"], indent=1), flush=True)

    ens = classifier_ensemble("slim").eval()
    xb = torch.rand(32, 1, 160, 160, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        c = _cpu_seconds({"nchw": lambda: ens(xb), "channels_last": (lambda e=cl(ens): e(xb))}, args.repeats)
    result["classifier"] = {"cpu_ms_per_image": {k: round(1000 * v / 32, 2) for k, v in c.items()},
                            "speedup": round(c["nchw"] / c["channels_last"], 3),
                            "weights": "random (speed does not depend on them)"}

    def step(net, inp, target, loss):
        opt = torch.optim.AdamW(net.parameters(), 1e-4)

        def run():
            opt.zero_grad()
            loss(net(inp), target).backward()
            opt.step()
        return run

    result["training"] = {}
    g = torch.Generator().manual_seed(2)
    cases = {"classifier (ResNet18SA-slim, 32 x 160 px)": (lambda: resnet18_sa("slim"), torch.rand(32, 1, 160, 160, generator=g),
                                                            torch.randint(0, 2, (32,), generator=g), F.cross_entropy),
             "SR (CSAEGAN-lite, 8 x 32 -> 128 px)": (csaegan_lite, torch.rand(8, 1, 32, 32, generator=g),
                                                     torch.rand(8, 1, 128, 128, generator=g), F.l1_loss)}
    for name, (make, inp, target, loss) in cases.items():
        a = make().train()
        b = copy.deepcopy(a).to(memory_format=torch.channels_last)
        t = _cpu_seconds({"nchw": step(a, inp, target, loss), "channels_last": step(b, inp, target, loss)},
                         max(3, args.repeats // 2))
        result["training"][name] = {"cpu_s_per_step": {k: round(v, 4) for k, v in t.items()},
                                    "speedup": round(t["nchw"] / t["channels_last"], 3)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("profile", "classifier", "training")}, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("CXR_NUM_THREADS", "1")
    main()
