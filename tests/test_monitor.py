"""The drift monitor (cxr_monai.commissioning.monitor, python -m cxr_monai monitor): its false-alarm rate on fresh
windows from the commissioning distribution, its power on shifted ones, its output contract, and on real streams
(site sample as it is, tightly collimated, adults mixed in)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cxr_monai import commissioning as C
from cxr_monai.commissioning import monitor as M
from tests.conftest import PROJECT_ROOT, SHARED_DATA

BUNDLE = PROJECT_ROOT / "bundles" / "cxr_pneumonia_classifier"
MODEL = {"name": "test model", "version": "9.9.9", "weights_sha256": "ab" * 32}


def _population(n: int, rng: np.random.Generator, shift: float = 0.0, prevalence: float = 0.6
                ) -> tuple[np.ndarray, np.ndarray, list[dict], list[tuple[float, float]], np.ndarray]:
    """A synthetic site: labels, log-odds, image statistics (skewed, correlated), gate scores, gate decisions.
    ``shift``: the image statistics' 'detail' moves by that many of its s.d. (a detector change)."""
    y = (rng.random(n) < prevalence).astype(int)
    x = rng.normal(np.where(y == 1, 1.2, -1.2), 1.0)
    base = rng.gamma(4.0, 0.05, n)
    stats = [{"mean": 0.5 + 0.1 * b, "std": 0.2 + 0.02 * rng.normal(), "p05": 0.05 + 0.02 * rng.random(),
              "p50": 0.5 + 0.1 * b + 0.03 * rng.normal(), "p95": 0.9 + 0.02 * rng.normal(),
              "dark_fraction": 0.1 * rng.random(), "border_mean": 0.3 + 0.05 * rng.normal(),
              "center_mean": 0.6 + 0.05 * rng.normal(), "detail": 0.02 + 0.005 * rng.normal() + 0.005 * shift}
             for b in base]
    gate = [(float(rng.beta(1, 20)), float(rng.lognormal(3.0, 0.3))) for _ in range(n)]
    in_scope = np.array([p < 0.15 for p, _ in gate])
    return y, x, stats, gate, in_scope


@pytest.fixture(scope="module")
def synthetic_site(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    y, x, stats, gate, in_scope = _population(101, rng)
    rep = C.commission(x, y, MODEL, "synthetic", in_scope=in_scope, n_repeats=5, n_boot=20, min_per_class=10)
    site = tmp_path_factory.mktemp("site")
    M.write_reference(M.build_reference(rep, stats, gate), site)
    return site


def _window(folder: Path, rng: np.random.Generator, n: int, threshold: float, shift: float = 0.0,
            prevalence: float = 0.6) -> Path:
    y, x, stats, gate, in_scope = _population(n, rng, shift, prevalence)
    p = C.sigmoid(x)  # a deployed probability; calls at the site's threshold
    images = [{"file": f"img{i}.dcm", "status": "ok" if in_scope[i] else "out_of_scope",
               "scope": {"probability": gate[i][0], "distance": gate[i][1]}, "image_stats": stats[i],
               **({"classification": {"label_index": int(p[i] >= threshold)}} if in_scope[i] else {})}
              for i in range(n)]
    images.append({"file": "broken.dcm", "status": "failed", "reason": "unreadable"})  # not part of the stream
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({"images": images}))
    return folder / "results.json"


def test_false_alarm_rate_and_power_on_synthetic_streams(synthetic_site: Path, tmp_path: Path) -> None:
    """Fresh windows from the commissioning distribution alert at about the nominal rate (3 %); a one-s.d. shift
    of one image statistic alerts almost always."""
    from scipy.stats import norm

    ref = json.loads((synthetic_site / M.REFERENCE_FILE).read_text())
    rng = np.random.default_rng(1)
    # calls at the log-odds threshold giving the reference's out-of-fold sensitivity on the generator (N(+1.2, 1))
    labels, dec = np.asarray(ref["labels"]), np.asarray(ref["oof_decisions"], bool)
    threshold = float(C.sigmoid(np.array([1.2 + norm.ppf(1 - dec[:, labels == 1].mean())]))[0])
    alerts = {"null": 0, "shift": 0}
    n_runs = 60
    for k in range(n_runs):
        null = M.run_monitor(synthetic_site, _window(tmp_path / f"n{k}", rng, 60, threshold), tmp_path / f"o{k}",
                             window=60, n_null=400, seed=k, figure=False)
        shifted = M.run_monitor(synthetic_site, _window(tmp_path / f"s{k}", rng, 60, threshold, shift=1.0),
                                tmp_path / f"so{k}", window=60, n_null=400, seed=k, figure=False)
        alerts["null"] += null["alert"]
        alerts["shift"] += shifted["alert"]
        assert null["window"]["n"] == 60  # the failed image is not in the stream
    assert alerts["null"] / n_runs <= 0.1, alerts  # nominal 0.03; 0.1 is > 3 binomial s.e. above it at 60 runs
    assert alerts["shift"] / n_runs >= 0.9, alerts
    fa = M.measure_false_alarms(synthetic_site, window=50, n_splits=40, n_null=200)
    assert fa["false_alarm_rate"] <= 0.15 and set(fa["per_check"]) == {"out_of_scope_rate", "input_distribution",
                                                                          "positive_share"}


def test_monitor_command_writes_its_contract_and_exits_zero_on_alert(synthetic_site: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    a = _window(tmp_path / "a", rng, 40, 0.5, shift=3.0)
    b = _window(tmp_path / "b", rng, 40, 0.5, shift=3.0)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "cxr_monai", "monitor", "--site_dir", str(synthetic_site),
                           "--results", str(a), str(b.parent), "--output_dir", str(out), "--window", "70"],
                          capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((out / M.MONITOR_FILE).read_text())
    assert res["alert"] is True and res["message"].startswith("RE-COMMISSION")
    assert [c["name"] for c in res["checks"]] == ["out_of_scope_rate", "input_distribution", "positive_share"]
    for c in res["checks"]:
        assert set(c) >= {"name", "statistic", "threshold", "passed"} and c["passed"] == (c["statistic"] <=
                                                                                          c["threshold"])
    assert not next(c for c in res["checks"] if c["name"] == "input_distribution")["passed"]
    assert res["window"]["n"] == 70 and res["window"]["n_in_stream"] == 80
    assert (out / M.MONITOR_FIGURE).stat().st_size > 10_000
    # too few images: no check, no alert; no reference: a message and exit 2, no traceback
    small = M.run_monitor(synthetic_site, a, tmp_path / "small", window=20)
    assert small["alert"] is False and small["status"] == "too_few_images" and small["checks"] == []
    proc = subprocess.run([sys.executable, "-m", "cxr_monai", "monitor", "--site_dir", str(tmp_path / "nosite"),
                           "--results", str(a), "--output_dir", str(out)], capture_output=True, text=True,
                          cwd=PROJECT_ROOT, timeout=300)
    assert proc.returncode == 2 and "no monitor reference" in proc.stdout and "Traceback" not in proc.stderr


def test_image_statistics_see_collimation_and_the_detector() -> None:
    from cxr_monai.studies.monitor_streams import alter

    yy, xx = np.mgrid[-1:1:256j, -1:1:256j]
    img = (0.15 + 0.6 * np.exp(-(xx ** 2 + yy ** 2) * 2)).astype(np.float32)[None]
    img[:, :, :20] = 0.02  # collimation margin
    base = M.image_statistics(img)
    crop = M.image_statistics(alter(img, "collimated", np.random.default_rng(0)))
    det = M.image_statistics(alter(img, "detector", np.random.default_rng(0)))
    assert crop["border_mean"] > base["border_mean"] + 0.05 and crop["dark_fraction"] < base["dark_fraction"]
    assert det["detail"] > 3 * base["detail"] and det["p50"] < base["p50"] - 0.05
