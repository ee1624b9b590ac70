"""One benchmark run on this machine, side by side, medians of repeats: ``python -m benchmarks.run --out OUT``.

Measures, in the same process and run (so the ratios are fair on a shared machine):

* the machine's fp32 GEMM GFLOP/s (torch, 2048x2048 matmul, all threads);
* SR 256 -> 1024 latency and output megapixels per second for bicubic, a plain RRDBNet with the lite preset's
  blocks and features (``rrdbnet(6, 32, 16)``), CSAEGAN-lite and CSAEGAN-full, in PyTorch eager, TorchScript
  and ONNX Runtime (the full preset in eager only unless ``--full_runtimes``: one 256 px image is ~2.4 TFLOP);
  each network's achieved GFLOP/s (FLOPs counted by ``torch.utils.flop_counter``) divided by the GEMM figure;
* peak resident memory of tiled 512 -> 2048 inference of the shipped lite model (``cxr_monai.inference``), in a
  child process;
* classifier ms and images per second, batch 1 and 32, eager / TorchScript / ONNX Runtime, side by side for the
  shipped classifier (``inference.json``'s ``network_def``, e.g. the ensemble of three ResNet18SA-slim, at the image
  size of ``models/calibration.json``; ``models/model.pt`` loaded when it fits, else random weights, said in the
  output) and the previous single model as the baseline (``feature_extractor.json``: ResNet18SA-lite at 224 px,
  ``models/feature_extractor.pt``); also process CPU ms per image, and the shipped / baseline time per image at
  batch 32 per runtime and fastest vs fastest runtime;
* the deploy app's seconds per study, from ``deploy/cxr_enhance_classify/docs/timings.json`` (its own benchmark);
* training iterations per second of each bundle (classifier, SR PSNR stage, SR GAN stage, synthesis) at the
  shipped configs' batch and patch sizes, each bundle's own trainer on a few real images
  (:mod:`benchmarks.train_speed`).

``--sections inference,train`` (the default: both) selects what runs; the GEMM reference always runs;
``--sections classifier`` runs only the classifier part of ``inference``. A run of only some sections must be
written to another ``--out`` than the committed ``benchmarks/results``.

Writes ``OUT/bench.json`` and ``OUT/bench.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results"
CLASSIFIER_BUNDLE = ROOT / "bundles" / "cxr_pneumonia_classifier"
SECTIONS = ("inference", "train")
# selectable but not part of the default: only the classifier part of ``inference`` (quick checks)
EXTRA_SECTIONS = ("classifier",)


def _median_seconds(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def gemm_gflops(repeats: int) -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    sec = _median_seconds(lambda: a @ b, repeats, warmup=2)
    return 2 * 2048**3 / sec / 1e9


def count_flops(net: torch.nn.Module, x: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x)
    return float(counter.get_total_flops())


def onnx_session(net: torch.nn.Module, x: torch.Tensor, path: Path, dynamic_hw: bool):
    import onnxruntime as ort

    axes = {"x": {2: "h", 3: "w"}} if dynamic_hw else None
    torch.onnx.export(net, (x,), str(path), input_names=["x"], output_names=["y"], dynamic_axes=axes, dynamo=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _channels_last_copy(net: torch.nn.Module, script: bool) -> torch.nn.Module:
    """A copy of ``net`` (scripted when ``script``) in the layout the package runs it in on the CPU."""
    import copy

    from cxr_monai.inference import inference_layout

    net = copy.deepcopy(net).eval()
    return inference_layout(torch.jit.script(net) if script else net, "cpu")


def runtimes(net: torch.nn.Module, x: torch.Tensor, tmp: Path, names: tuple[str, ...], dynamic_hw: bool) -> dict:
    """{runtime: callable} for the requested runtimes, each checked against eager (max abs error)."""
    net = net.eval()
    out: dict = {}
    with torch.no_grad():
        ref = net(x)
    if "eager" in names:
        out["eager"] = (lambda: net(x), 0.0)
    if "torchscript" in names:
        ts = torch.jit.script(net)
        with torch.no_grad():
            err = float((ts(x) - ref).abs().max())
        out["torchscript"] = (lambda: ts(x), err)
    for runtime, script in (("eager+channels_last", False), ("torchscript+channels_last", True)):
        if runtime in names:  # weights in channels_last (cxr_monai.inference.inference_layout), input as it is
            cl = _channels_last_copy(net, script)
            with torch.no_grad():
                err = float((cl(x) - ref).abs().max())
            out[runtime] = (lambda cl=cl: cl(x), err)
    if "onnxruntime" in names:
        sess = onnx_session(net, x, tmp / f"{id(net)}.onnx", dynamic_hw)
        xn = x.numpy()
        err = float(np.abs(sess.run(None, {"x": xn})[0] - ref.numpy()).max())
        out["onnxruntime"] = (lambda: sess.run(None, {"x": xn}), err)
    return out


LITE_RUNTIMES = ("eager", "eager+channels_last", "torchscript", "torchscript+channels_last", "onnxruntime")


def bench_sr(args, tmp: Path) -> list[dict]:
    from cxr_monai.networks import csaegan_full, rrdbnet
    from cxr_monai.utils import load_bundle_network

    x = torch.rand(1, 1, 256, 256)
    out_mp = 1024 * 1024 / 1e6
    rows = []
    sec = _median_seconds(lambda: F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1),
                          args.repeats)
    rows.append({"model": "bicubic", "runtime": "torch", "params_M": 0.0, "seconds": sec, "mp_per_s": out_mp / sec})
    full_runtimes = LITE_RUNTIMES if args.full_runtimes else ("eager", "eager+channels_last")
    lite_cfg = dict(num_block=6, num_feat=32, num_grow_ch=16, upsampler="pixelshuffle", residual_bicubic=True)
    # two groups, each a network and its plain-RRDBNet twin; inside a group every repeat times every (network,
    # runtime) once and the GEMM reference once, round-robin, so the machine's drift (its GEMM rate moved by
    # 1.4x within one run here) hits all of them alike and each "of GEMM" uses the GEMM rate of the same rounds
    groups = [
        {"rrdbnet (lite size, no CSA)": (rrdbnet(**lite_cfg), LITE_RUNTIMES),
         "csaegan_lite (shipped weights)": (load_bundle_network(ROOT / "bundles" / "cxr_sr_csaegan"), LITE_RUNTIMES)},
        {"rrdbnet (full size, no CSA)": (rrdbnet(), full_runtimes),
         "csaegan_full": (csaegan_full(), full_runtimes)},
    ]
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for gi, nets in enumerate(groups):
        fns, meta = {}, {}
        for name, (net, names) in nets.items():
            net = net.eval()
            meta[name] = (count_flops(net, x), sum(p.numel() for p in net.parameters()) / 1e6)
            for runtime, fe in runtimes(net, x, tmp, names, dynamic_hw=True).items():
                fns[name, runtime] = fe
        reps = args.repeats if gi == 0 else max(1, args.repeats // 2)
        times: dict = {k: [] for k in fns}
        gemm_times = []
        with torch.no_grad():
            for fn, _ in fns.values():
                fn()  # warm-up
            for _ in range(reps):
                for _ in range(2):  # the GEMM rate scatters more than the networks' times: two samples a round
                    t = time.perf_counter()
                    a @ b
                    gemm_times.append(time.perf_counter() - t)
                for k, (fn, _) in fns.items():
                    t = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t)
        local_gemm = 2 * 2048**3 / statistics.median(gemm_times) / 1e9
        for (name, runtime), (fn, err) in fns.items():
            flops, params = meta[name]
            sec = statistics.median(times[name, runtime])
            rows.append({"model": name, "runtime": runtime, "params_M": round(params, 3), "seconds": sec,
                         "mp_per_s": out_mp / sec, "gflop": flops / 1e9, "gflop_per_s": flops / sec / 1e9,
                         "gemm_gflop_per_s_same_rounds": local_gemm,
                         "fraction_of_gemm": flops / sec / 1e9 / local_gemm, "max_abs_err_vs_eager": err})
            print(f"SR 256->1024 {name:32s} {runtime:26s} {sec:7.3f} s (GEMM {local_gemm:.0f} GFLOP/s)", flush=True)
    return rows


def _bundle_classifier(bundle: Path, config: str, weights_name: str, calibration: str | None) -> dict:
    """A classifier as ``configs/<config>`` defines it (``network_def``, instantiated by MONAI's ConfigParser),
    with ``models/<weights_name>`` loaded when its keys and shapes fit (random weights otherwise: speed does not
    depend on them) and its image size: ``image_size`` of ``models/<calibration>`` when that describes this
    network (same ``network_preset``, or none recorded), else ``image_size`` of the config."""
    from monai.bundle import ConfigParser

    from cxr_monai.utils import bare_state_dict, read_json

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / config))
    parser["bundle_root"] = str(bundle)
    net = parser.get_parsed_content("network_def").eval()
    raw = parser.get("network_def")
    kwargs = ", ".join(f"{k}={parser.get_parsed_content(f'network_def#{k}')}" for k in raw if not k.startswith("_"))
    definition = f"{str(raw['_target_']).rsplit('.', 1)[-1]}({kwargs})"
    size, size_from = int(parser.get_parsed_content("image_size")), f"configs/{config}"
    if calibration is not None:
        cal = read_json(bundle / "models" / calibration, default={})
        ours = parser.get_parsed_content("network_preset") if "network_preset" in parser.get() else None
        theirs = cal.get("network_preset")
        if "image_size" not in cal:
            size_from += f" (models/{calibration} has no image_size)"
        elif ours is not None and theirs is not None and theirs != ours:
            size_from += (f" (models/{calibration} is for network_preset {theirs!r}, not this network's {ours!r}: "
                          f"stale, its image_size {cal['image_size']} not used)")
        else:
            size, size_from = int(cal["image_size"]), f"models/{calibration}"
    weights_file = bundle / "models" / weights_name
    try:
        net.load_state_dict(bare_state_dict(torch.load(weights_file, map_location="cpu", weights_only=True)))
        weights = f"models/{weights_name}"
    except (FileNotFoundError, RuntimeError) as e:
        reason = "missing" if isinstance(e, FileNotFoundError) else "does not fit network_def"
        weights = f"random (models/{weights_name} {reason})"
    params = sum(p.numel() for p in net.parameters()) / 1e6
    channels = int(getattr(net, "in_channels", 1))  # the input views (0.5.0: whole film + lung-field view)
    gflop = count_flops(net.eval(), torch.rand(1, channels, size, size)) / 1e9
    return {"net": net, "config": f"configs/{config}", "network_def": definition, "params_M": round(params, 3),
            "gflop_per_image": gflop, "image_size": size, "image_size_from": size_from, "weights": weights,
            "channels": channels}


def _onnx_runtime(net: torch.nn.Module, x: torch.Tensor, ref: torch.Tensor, tmp: Path) -> tuple:
    """(callable, max abs error vs eager, exporter) with ONNX Runtime: the TorchScript-based (tracing) exporter
    first, the dynamo exporter if that fails; (None, error message, None) if both do."""
    import onnxruntime as ort

    errors = []
    for exporter, kw in (("torchscript-trace", {"dynamo": False}), ("dynamo", {"dynamo": True})):
        path = tmp / f"{id(net)}_{x.shape[0]}_{exporter}.onnx"
        try:
            torch.onnx.export(net, (x,), str(path), input_names=["x"], output_names=["y"], **kw)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            name, xn = sess.get_inputs()[0].name, x.numpy()
            err = float(np.abs(sess.run(None, {name: xn})[0] - ref.numpy()).max())
            return (lambda: sess.run(None, {name: xn})), err, exporter
        except Exception as e:  # noqa: BLE001 - reported in the results, the other runtimes still run
            errors.append(f"{exporter}: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
    return None, "; ".join(errors), None


CLASSIFIER_RUNTIMES = ("eager", "eager+channels_last", "torchscript", "torchscript+channels_last", "onnxruntime")


def bench_classifier(args, tmp: Path) -> tuple[list[dict], dict, dict]:
    """The shipped classifier (``inference.json``'s ``network_def`` at the calibrated image size) beside the previous
    single model (``feature_extractor.json``: ResNet18SA-lite at 224 px) as the baseline, batch 1 and 32, eager /
    TorchScript / ONNX Runtime; ms and process CPU ms per image, and the shipped / baseline ratios at batch 32.
    The two models' repeats alternate (per batch and runtime), so a shared machine's drift hits both alike.

    Returns (rows, {role: model description}, ratios)."""
    models = {
        "shipped": _bundle_classifier(CLASSIFIER_BUNDLE, "inference.json", "model.pt", "calibration.json"),
        "baseline": _bundle_classifier(CLASSIFIER_BUNDLE, "feature_extractor.json", "feature_extractor.pt", None),
    }
    info, nets, scripted = {}, {}, {}
    for role, m in models.items():
        nets[role] = m.pop("net")
        info[role] = {"model": f"{role}: {m['network_def']} @ {m['image_size']} px", **m}
        scripted[role] = torch.jit.script(nets[role])
        print(f"classifier {info[role]['model']}; weights {m['weights']}; image size from {m['image_size_from']}",
              flush=True)
    rows = []
    for batch in (1, 32):
        fns: dict = {}  # (runtime, role) -> (callable or None, error, exporter)
        for role, net in nets.items():
            size = info[role]["image_size"]
            x = torch.rand(batch, info[role]["channels"], size, size)
            with torch.no_grad():
                ref = net(x)
                ts = scripted[role]
                ts_err = float((ts(x) - ref).abs().max())
            fns["eager", role] = ((lambda net=net, x=x: net(x)), 0.0, None)
            fns["torchscript", role] = ((lambda ts=ts, x=x: ts(x)), ts_err, None)
            for runtime, script in (("eager+channels_last", False), ("torchscript+channels_last", True)):
                cl = _channels_last_copy(net, script)
                with torch.no_grad():
                    cl_err = float((cl(x) - ref).abs().max())
                fns[runtime, role] = ((lambda cl=cl, x=x: cl(x)), cl_err, None)
            fns["onnxruntime", role] = _onnx_runtime(net, x, ref, tmp)
        for runtime in CLASSIFIER_RUNTIMES:
            ok = {role: fns[runtime, role][0] for role in nets if fns[runtime, role][0] is not None}
            wall: dict = {role: [] for role in ok}
            cpu: dict = {role: [] for role in ok}
            with torch.no_grad():
                for fn in ok.values():
                    for _ in range(2):  # warm-up (TorchScript's profiling executor optimises on the second call)
                        fn()
                for _ in range(args.repeats):
                    for role, fn in ok.items():
                        t, c = time.perf_counter(), time.process_time()
                        fn()
                        wall[role].append(time.perf_counter() - t)
                        cpu[role].append(time.process_time() - c)
            for role in nets:
                fn, err, exporter = fns[runtime, role]
                size = info[role]["image_size"]
                row = {"model": info[role]["model"], "role": role, "image_size": size, "batch": batch,
                       "runtime": runtime}
                if fn is None:
                    rows.append({**row, "error": err})
                    print(f"classifier {role:8s} {size}px b{batch:<3d} {runtime:12s} FAILED: {err}", flush=True)
                    continue
                sec, cpu_sec = statistics.median(wall[role]), statistics.median(cpu[role])
                rows.append({**row, "ms_per_image": 1000 * sec / batch, "images_per_s": batch / sec,
                             "cpu_ms_per_image": 1000 * cpu_sec / batch, "max_abs_err_vs_eager": err,
                             **({"onnx_exporter": exporter} if exporter else {})})
                print(f"classifier {role:8s} {size}px b{batch:<3d} {runtime:12s} {1000 * sec / batch:7.2f} ms/image "
                      f"({1000 * cpu_sec / batch:.2f} CPU ms)", flush=True)
        del fns  # the ONNX Runtime sessions of this batch
    rows.sort(key=lambda r: (list(nets).index(r["role"]), r["batch"]))  # table: by model, then batch
    return rows, info, _classifier_ratios(rows, 32)


def _classifier_ratios(rows: list[dict], batch: int) -> dict:
    """Shipped / baseline time per image at ``batch``: per runtime, and fastest runtime vs fastest runtime."""
    t = {(r["role"], r["runtime"]): r for r in rows if r["batch"] == batch and "ms_per_image" in r}
    out: dict = {"batch": batch, "per_runtime": {}}
    for (role, runtime), r in t.items():
        if role == "shipped" and ("baseline", runtime) in t:
            b = t["baseline", runtime]
            out["per_runtime"][runtime] = {"wall": r["ms_per_image"] / b["ms_per_image"],
                                           "cpu": r["cpu_ms_per_image"] / b["cpu_ms_per_image"]}
    best = {role: min((r for (ro, _), r in t.items() if ro == role), key=lambda r: r["ms_per_image"], default=None)
            for role in ("shipped", "baseline")}
    if all(best.values()):
        s, b = best["shipped"], best["baseline"]
        out["best"] = {"shipped_runtime": s["runtime"], "baseline_runtime": b["runtime"],
                       "wall": s["ms_per_image"] / b["ms_per_image"], "cpu": s["cpu_ms_per_image"] / b["cpu_ms_per_image"]}
    out["torchscript"] = out["per_runtime"].get("torchscript+channels_last")  # the deploy app's runtime
    return out


_TILED = r"""
import sys, time, torch
sys.path.insert(0, sys.argv[1])
from cxr_monai.export import load_deploy_model
from cxr_monai.inference import super_resolve
model, info = load_deploy_model(sys.argv[2])
x = torch.rand(1, 512, 512).numpy()
t = time.perf_counter(); y = super_resolve(model, x, info); sec = time.perf_counter() - t
# VmHWM: this program's own peak (ru_maxrss would include the parent's peak, inherited through fork)
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print(sec, hwm / 1024**2, y.shape[-1])
"""


def bench_tiled_memory(tmp: Path) -> dict:
    from cxr_monai.export import export_sr

    # exported here: scripting a network costs more memory than running it, and a deployment loads the file
    export_sr(ROOT / "bundles" / "cxr_sr_csaegan", tmp / "sr.ts")
    proc = subprocess.run([sys.executable, "-c", _TILED, str(ROOT), str(tmp / "sr.ts")], capture_output=True,
                          text=True, timeout=900, check=True)
    sec, gb, side = proc.stdout.split()[-3:]
    return {"input_px": 512, "output_px": int(side), "seconds": float(sec), "peak_rss_gb": float(gb),
            "what": "child process: load the exported TorchScript lite model, tiled 512->2048 (128 px tiles, 25 % overlap)"}


def markdown(result: dict) -> str:
    lines = [f"Benchmark {result['date']} on {result['machine']['cpu']} ({result['machine']['cores']} cores, "
             f"{result['machine']['threads']} torch threads); fp32 GEMM {result['gemm_gflop_per_s']:.0f} GFLOP/s; "
             f"medians of {result['repeats']} repeats.", ""]
    inference = _inference_markdown(result)
    lines += inference
    if result.get("train"):
        from benchmarks.train_speed import markdown_rows

        lines += ([""] if inference else []) + markdown_rows(result["train"])
    return "\n".join(lines) + "\n"


def _inference_markdown(result: dict) -> list[str]:
    lines: list[str] = []
    if "sr" in result:
        lines += ["| SR 256 -> 1024 | runtime | params (M) | s / image | output MP/s | GFLOP/s | GEMM GFLOP/s, same rounds "
                  "| of GEMM |", "|---|---|---|---|---|---|---|---|"]
        for r in result["sr"]:
            lines.append(f"| {r['model']} | {r['runtime']} | {r['params_M']:.2f} | {r['seconds']:.3f} | "
                         f"{r['mp_per_s']:.2f} | {r.get('gflop_per_s', float('nan')):.0f} | "
                         f"{r.get('gemm_gflop_per_s_same_rounds', float('nan')):.0f} | "
                         f"{r.get('fraction_of_gemm', float('nan')):.2f} |")
    if result.get("classifier"):
        lines += ([""] if lines else []) + _classifier_markdown(result)
    if "tiled_sr_512_to_2048" in result:
        t = result["tiled_sr_512_to_2048"]
        lines += ["", f"Tiled 512 -> 2048 SR (shipped lite, TorchScript): {t['seconds']:.2f} s, peak RSS "
                      f"{t['peak_rss_gb']:.2f} GB (child process)."]
    if result.get("deploy_app"):
        for name, r in result["deploy_app"]["results"].items():
            lines.append(f"Deploy app, {name}: {r['seconds_in_operators_median']:.1f} s in operators "
                         f"(`benchmarks/deploy_timing.py`).")
    return lines


def _classifier_markdown(result: dict) -> list[str]:
    lines = ["| classifier (model @ image size) | batch | runtime | ms / image | images / s | CPU ms / image |",
             "|---|---|---|---|---|---|"]
    for r in result["classifier"]:
        model = r.get("model", "classifier 224")  # rows of older runs name no model
        if "ms_per_image" not in r:
            lines.append(f"| {model} | {r['batch']} | {r['runtime']} | failed | | |")
            continue
        lines.append(f"| {model} | {r['batch']} | {r['runtime']} | {r['ms_per_image']:.2f} | {r['images_per_s']:.1f} | "
                     f"{r.get('cpu_ms_per_image', float('nan')):.2f} |")
    lines.append("")  # a text line right below a table would be read as one more row
    for m in (result.get("classifier_models") or {}).values():
        lines.append(f"{m['model']}: {m['params_M']:.2f} M parameters, {m.get('gflop_per_image', float('nan')):.3f} "
                     f"GFLOP / image, weights {m['weights']}, image size from {m['image_size_from']}.")
    q = result.get("classifier_ratio_b32") or {}
    parts = []
    if q.get("best"):
        b = q["best"]
        parts.append(f"fastest runtime ({b['shipped_runtime']} vs {b['baseline_runtime']}) {b['wall']:.2f} "
                     f"(CPU time {b['cpu']:.2f})")
    if q.get("torchscript"):
        parts.append(f"TorchScript in channels_last (the deploy app's runtime) {q['torchscript']['wall']:.2f} "
                     f"(CPU time {q['torchscript']['cpu']:.2f})")
    if parts:
        lines.append(f"Shipped / baseline time per image at batch {q['batch']}: " + "; ".join(parts) + ".")
    for r in (r for r in result["classifier"] if "error" in r):
        lines.append(f"{r['model']} {r['runtime']} batch {r['batch']} failed: {r['error']}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--full_runtimes", action="store_true", help="also TorchScript/ONNX Runtime for the full presets")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of {list(SECTIONS + EXTRA_SECTIONS)} (the GEMM reference always "
                    "runs; 'classifier': only the classifier part of 'inference')")
    ap.add_argument("--train_bundles", default=None, help="comma-separated subset of the train section's bundles "
                    "(classifier, sr_psnr, sr_gan, synth; default all)")
    ap.add_argument("--train_warmup", type=int, default=1, help="training iterations dropped before timing")
    ap.add_argument("--train_iterations", type=int, default=5, help="timed training iterations per bundle")
    args = ap.parse_args()
    sections = [x.strip() for x in args.sections.split(",") if x.strip()]
    if not sections or any(x not in SECTIONS + EXTRA_SECTIONS for x in sections):
        ap.error(f"--sections must be a comma-separated subset of {list(SECTIONS + EXTRA_SECTIONS)}, "
                 f"got {args.sections!r}")
    partial = not set(SECTIONS) <= set(sections) or args.train_bundles is not None
    if partial and Path(args.out).resolve() == DEFAULT_OUT.resolve():
        ap.error(f"a run of only some sections must not overwrite {DEFAULT_OUT}: pass another --out")
    sys.path.insert(0, str(ROOT))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cpu = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(["lscpu"], capture_output=True, text=True)
                .stdout.splitlines() if ln.startswith("Model name")), platform.processor())
    result: dict = {"date": time.strftime("%Y-%m-%d"), "repeats": args.repeats, "sections": sections,
                    "machine": {"cpu": cpu, "cores": __import__("os").cpu_count(), "threads": torch.get_num_threads()},
                    "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        result["gemm_gflop_per_s"] = gemm_gflops(args.repeats)
        print(f"GEMM {result['gemm_gflop_per_s']:.0f} GFLOP/s", flush=True)
        if "inference" in sections or "classifier" in sections:
            result["classifier"], result["classifier_models"], result["classifier_ratio_b32"] = \
                bench_classifier(args, tmp)
        if "inference" in sections:
            result["sr"] = bench_sr(args, tmp)
        if "train" in sections:
            from benchmarks.train_speed import bench_train

            names = None if args.train_bundles is None else [n.strip() for n in args.train_bundles.split(",")]
            result["train"] = bench_train(names, args.train_warmup, args.train_iterations)
        result["gemm_gflop_per_s_after"] = gemm_gflops(args.repeats)  # the machine's speed drifts: both ends
        if "inference" in sections:
            result["tiled_sr_512_to_2048"] = bench_tiled_memory(tmp)
    if "inference" in sections:
        timings = ROOT / "deploy" / "cxr_enhance_classify" / "docs" / "timings.json"
        result["deploy_app"] = json.loads(timings.read_text()) if timings.is_file() else None
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    (out / "bench.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
