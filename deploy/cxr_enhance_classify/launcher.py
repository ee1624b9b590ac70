"""Process set-up for the app: the stack size holoscan needs, and this app's own options."""

from __future__ import annotations

import argparse
import os
import resource
import sys

STACK_BYTES = 32 * 1024 * 1024
"""holoscan warns below 32 MB of stack ('may cause segmentation faults')."""


def ensure_stack_size(argv: list[str]) -> None:
    """Raise the soft stack limit to 32 MB and re-execute this process, so the main thread and every
    thread holoscan starts get that stack (the limit is read at process start). No-op when the limit is
    already enough, unlimited, or the hard limit forbids it (then holoscan's warning stands)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    if soft == resource.RLIM_INFINITY or soft >= STACK_BYTES or os.environ.get("CXR_STACK_REEXEC"):
        return
    if hard != resource.RLIM_INFINITY and hard < STACK_BYTES:
        return
    resource.setrlimit(resource.RLIMIT_STACK, (STACK_BYTES, hard))
    os.environ["CXR_STACK_REEXEC"] = "1"
    os.execv(sys.executable, [sys.executable, *argv])


def split_app_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """This app's options (``--sr-max-side``, ``--strict``, ``--device``) and the rest for the SDK."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--sr-max-side", type=int, default=int(os.environ.get("CXR_SR_MAX_SIDE", "1024") or 1024))
    parser.add_argument("--strict", action="store_true", default=os.environ.get("CXR_STRICT", "") in ("1", "true"))
    parser.add_argument("--device", default=os.environ.get("CXR_DEVICE") or None)
    opts, rest = parser.parse_known_args(argv[1:])
    if opts.sr_max_side < 1:
        raise ValueError(f"--sr-max-side must be a positive number of pixels, got {opts.sr_max_side}")
    if opts.device not in (None, "cpu", "cuda") and not str(opts.device).startswith("cuda:"):
        raise ValueError(f"--device must be cpu or cuda[:N], got {opts.device!r}")
    return opts, [argv[0], *rest]
