"""`compactcl predict MODEL IMAGE|FOLDER... [--top-k K] [--json]`: class names and probabilities.

MODEL is a deployed ``.onnx`` (ONNX Runtime) or ``.ccl`` (PyTorch), or a run folder (its deployed
``.onnx``); the preprocessing (channels, size, per-channel normalization) and the class names come
from the file itself.
"""

from __future__ import annotations

from pathlib import Path

from .common import add_json_flag, emit, format_table, say


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="classify images with a deployed model (.onnx or .ccl)")
    p.add_argument("model", help="deployed.onnx, deployed.ccl, or a run folder (its final/deployed.onnx)")
    p.add_argument("inputs", nargs="+", metavar="IMAGE|FOLDER",
                   help="PNG/JPEG images, IDX files (MNIST format) or folders of them")
    p.add_argument("--top-k", type=int, default=1, help="print the K most probable classes (default 1)")
    p.add_argument("--resize", action="store_true", help="resize images of another size to the model's input")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import CompactCLError
    from ..export.predict import Predictor, deployed_file

    if args.top_k < 1:
        raise CompactCLError(f"--top-k must be at least 1, got {args.top_k}")
    path = deployed_file(args.model)
    if path != Path(args.model):
        say(args, f"using {path}")
    preds = Predictor.open(path).predict(args.inputs, top_k=args.top_k, resize=args.resize)
    rows = [{"image": p.source, "class": p.top[0][0], "probability": p.top[0][1],
             **({"top": ", ".join(f"{n} {q:.3f}" for n, q in p.top)} if args.top_k > 1 else {})} for p in preds]
    emit(args, [p.as_dict() for p in preds], format_table(rows))
    return 0
