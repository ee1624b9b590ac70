"""Run a bundle's train workflow (one process, or one rank under torchrun) and save the trained network's
parameters (not buffers) of this rank, for tests/bundles/test_ddp.py.

    [torchrun --standalone --nproc_per_node=2] ddp_driver.py BUNDLE_DIR '["train.json", ...]' '{overrides}' NET_ID OUT_PREFIX
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch


def main() -> None:
    bundle, configs, overrides, net_id, prefix = sys.argv[1:6]
    from monai.bundle import ConfigWorkflow

    from cxr_monai.engines.distributed import unwrap

    torch.set_num_threads(1)
    root = Path(bundle)
    files = [str(root / "configs" / c) for c in json.loads(configs)]
    wf = ConfigWorkflow(config_file=files, meta_file=str(root / "configs" / "metadata.json"),
                        logging_file=str(root / "configs" / "logging.conf"), workflow_type="train",
                        bundle_root=str(root), **json.loads(overrides))
    wf.initialize()
    wf.run()
    rank = int(os.environ.get("RANK", 0))
    net = unwrap(wf.parser.get_parsed_content(net_id))
    # parameters only: BatchNorm running statistics are per rank until DDP broadcasts them at the next forward
    torch.save({k: v.detach().cpu() for k, v in net.named_parameters()}, f"{prefix}_rank{rank}.pt")
    wf.finalize()


if __name__ == "__main__":
    main()
