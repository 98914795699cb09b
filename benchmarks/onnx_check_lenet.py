"""ONNX fp32 and int8 export of a trained LeNet-300-100 checked on the Fashion-MNIST test split.

    .venv/bin/python benchmarks/onnx_check_lenet.py CHECKPOINT

CHECKPOINT: a lenet300 trained on all 10 Fashion-MNIST classes (benchmarks/prune_latency.py
caches one in /tmp/compactcl_bench/). Prints agreement, accuracies and latency ratios.
"""

import json
import sys

import torch

from compactcl.data import load_dataset
from compactcl.export.onnx import export_checked
from compactcl.models import load_checkpoint


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit(__doc__)
    torch.set_num_threads(1)
    model = load_checkpoint(argv[0])
    ds = load_dataset("fashion-mnist")
    shape = (1, 28, 28)
    out = {}
    for int8 in (False, True):
        r = export_checked(model, f"/tmp/lenet{'_int8' if int8 else ''}.onnx", shape, ds.test.x, ds.test.y, int8=int8,
                           calib_x=ds.train.x[:512])
        out["int8" if int8 else "fp32"] = r
    print(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main(sys.argv[1:])
