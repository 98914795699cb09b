"""The ladder: the source document's worked example, one measured row per rung.

    teacher fp32 -> teacher int8 -> 30% of channels removed + fine-tune (int8)
                 -> distilled smaller student (int8) -> that student pruned + quantized (final)

Each rung keeps the compression of the rungs before it (the pruned teacher stays int8, the
student is int8 too), so the size goes down rung by rung; the last rung swaps 8-bit weights
for 4-bit k-means (or whatever ``final_quant``/``final_bits`` say) with quantization-aware
fine-tuning. Every figure is measured on a real file:

* ``bytes``: the packed ``.ccl`` artifact (:func:`compactcl.export.artifact.save_artifact`) —
  for the teacher its fp32 artifact (float weights stored as float32);
* ``latency_ms`` / ``latency_ms_b64``: ONNX Runtime, 1 thread, batch 1 / 64, of the graph the
  rung deploys: the int8 QDQ graph (:mod:`compactcl.export.int8`) for int8 rungs, the fp32
  graph for the teacher; the fp32 graph's figures are kept beside them to compare;
* ``accuracy``: the PyTorch model rebuilt from the artifact, on the test split;
  ``onnx_accuracy`` the timed ONNX graph's; ``agreement`` top-1 agreement with the teacher.

The teacher is a plain classifier on all classes (``data.tasks`` is forced to 1); the
validation split is carved from the training data and only reported (no choice here uses
the test split). Enabled by a recipe's ``ladder:`` section (``compactcl run ladder``).

>>> from compactcl.pipeline.recipe import load_recipe
>>> doc = run_ladder(load_recipe("ladder"), "runs/ladder")   # doctest: +SKIP
>>> [r["stage"] for r in doc["rows"]][-1]                     # doctest: +SKIP
'student-pruned-quantized'
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable


from .config import LadderConfig

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..data.datasets import TensorData
    from .recipe import Recipe

__all__ = ["run_ladder", "ladder_markdown", "LADDER_SCHEMA", "STAGES"]

LADDER_SCHEMA = "compactcl.ladder/1"
STAGES = ("teacher", "teacher-int8", "teacher-pruned", "student", "student-pruned-quantized")


# --------------------------------------------------------------------------------------------- helpers
def _logits(model: "nn.Module", x: "torch.Tensor", batch_size: int = 512):
    import torch

    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i: i + batch_size]) for i in range(0, len(x), batch_size)]).numpy()


def _subset(data: "TensorData", limit: int | None, seed: int) -> "TensorData":
    import torch

    if limit is None or limit >= len(data):
        return data
    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:limit]
    return data.subset(index.sort().values)


class _Measurer:
    """Writes a rung's files (artifact, ONNX) and measures them; one row per call."""

    def __init__(self, out: Path, cfg: LadderConfig, input_shape: tuple[int, int, int], test: "TensorData",
                 val: "TensorData", calib_x: "torch.Tensor", meta: dict[str, Any], log: Callable[[str], None]):
        self.out, self.cfg, self.input_shape, self.test, self.val = out, cfg, input_shape, test, val
        self.calib_x, self.meta, self.log = calib_x, meta, log
        self.teacher_logits = None
        self.int8_error: str | None = None

    def _latency(self, path: Path) -> tuple[float, float]:
        from ..metrics.latency import onnx_latency_ms

        return tuple(onnx_latency_ms(path, self.input_shape, batch=b, threads=1, repeats=self.cfg.latency_repeats)
                     for b in (1, 64))  # type: ignore[return-value]

    def _int8(self, fp32_path: Path, int8_path: Path) -> bool:
        try:
            from ..export.int8 import quantize_onnx_int8

            quantize_onnx_int8(fp32_path, int8_path, self.calib_x, max_samples=self.cfg.calib_samples)
            return True
        except Exception as e:  # exporter missing or failing: fall back to the fp32 graph, and say so
            self.int8_error = f"{type(e).__name__}: {e}"
            self.log(f"ladder: int8 ONNX unavailable ({self.int8_error}); timing the fp32 graph instead")
            return False

    def row(self, index: int, stage: str, model: "nn.Module", int8: bool, seconds: float,
            description: str, note: str = "") -> dict[str, Any]:
        from ..export.artifact import load_artifact, save_artifact
        from ..export.onnx import agreement, export_onnx, onnx_predict
        from ..engine.loop import accuracy
        from ..metrics.model_stats import count_flops, count_params

        model = model.cpu().eval()
        stem = f"{index}-{stage}"
        ccl = self.out / f"{stem}.ccl"
        nbytes = save_artifact(model, ccl, {**self.meta, "ladder_stage": stage})
        deployed = load_artifact(ccl)  # what ships: score the model rebuilt from the file
        logits = _logits(deployed, self.test.x)
        if self.teacher_logits is None:
            self.teacher_logits = logits
        y = self.test.y.numpy()
        onnx_fp32 = self.out / f"{stem}.onnx"
        export_onnx(deployed, onnx_fp32, self.input_shape)
        fp32_b1, fp32_b64 = self._latency(onnx_fp32)
        row: dict[str, Any] = {
            "stage": stage, "description": description, "params": count_params(deployed),
            "flops": count_flops(deployed, self.input_shape), "bytes": nbytes, "file": ccl.name,
            "accuracy": float((logits.argmax(1) == y).mean()), "val_accuracy": accuracy(deployed, self.val),
            "agreement": agreement(logits, self.teacher_logits),
        }
        graph, notes = onnx_fp32, [note] if note else []
        if int8 and self._int8(onnx_fp32, self.out / f"{stem}.int8.onnx"):
            graph = self.out / f"{stem}.int8.onnx"
            b1, b64 = self._latency(graph)
            row.update(onnx="int8", onnx_file=graph.name, latency_ms=b1, latency_ms_b64=b64,
                       fp32_latency_ms=fp32_b1, fp32_latency_ms_b64=fp32_b64,
                       int8_speedup=fp32_b1 / b1, int8_speedup_b64=fp32_b64 / b64)
        else:
            row.update(onnx="fp32", onnx_file=graph.name, latency_ms=fp32_b1, latency_ms_b64=fp32_b64)
            if int8:
                notes.append(f"int8 ONNX failed ({self.int8_error}); latency of the fp32 graph of the "
                             "fake-quant model")
        onnx_logits = onnx_predict(graph, self.test.x)
        row["onnx_accuracy"] = float((onnx_logits.argmax(1) == y).mean())
        row["onnx_agreement"] = agreement(onnx_logits, logits)  # the timed graph vs the PyTorch model
        row["seconds"] = seconds
        row["note"] = "; ".join(notes)
        self.log(f"ladder: {stage:26s} bytes {nbytes:>8,}  acc {row['accuracy']:.4f}  "
                 f"{row['onnx']} {row['latency_ms']:.3f} ms")
        return row


# --------------------------------------------------------------------------------------------- the ladder
def run_ladder(recipe: "Recipe", out: str | Path, resume: bool = False, progress: bool = False,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the ladder of ``recipe.ladder`` into folder ``out``; return the ladder document.

    Writes ``ladder.json`` (``{"schema": "compactcl.ladder/1", "rows": [...], ...}``),
    ``ladder.md`` (the table), and per rung ``N-stage.ccl`` / ``.onnx`` / ``.int8.onnx``.
    ``resume=True`` reuses the saved fp32 teacher and student (``teacher.safetensors``,
    ``student.safetensors``) instead of training them again; every row is measured again.
    """
    import torch
    import yaml

    from ..compress.distill import DistillConfig, create_student, distill
    from ..compress.prune import PruneData, StructuredConfig, finalize_, finetune_, prune_
    from ..compress.quantize import LinearQuantConfig, QATConfig, config_for, get_method, qat_, quantize_
    from ..errors import CompactCLError
    from ..engine.loop import TrainConfig, train
    from ..engine.losses import ce_loss, teacher_kd_loss
    from ..models.backbones import list_backbones
    from ..models.checkpoint import load_checkpoint, save_checkpoint
    from ..models.net import IncrementalNet
    from ..utils.atomic import atomic_write_json, atomic_write_text
    from ..utils.distributed import resolve_device
    from .stream import build_stream

    if recipe.ladder is None:
        raise CompactCLError("run_ladder needs a recipe with a ladder: section (see `compactcl run ladder`)")
    cfg = recipe.ladder.for_dataset(recipe.data.dataset)
    if recipe.model.backbone not in list_backbones():
        raise CompactCLError(f"the ladder needs a built-in backbone (got {recipe.model.backbone!r}): structured "
                             f"pruning and students are defined for {', '.join(list_backbones())}")
    out = Path(out)
    doc_path = out / "ladder.json"
    recipe_text = yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
    if doc_path.exists() and not resume:
        raise CompactCLError(f"{out} already holds a ladder; rerun it with --resume, or choose another --out")
    if resume and (out / "recipe.yaml").exists() and (out / "recipe.yaml").read_text() != recipe_text:
        raise CompactCLError(f"{out} was started with a different recipe; resume with the same --set values "
                             f"(see {out / 'recipe.yaml'}) or choose another --out")
    atomic_write_text(out / "recipe.yaml", recipe_text)
    device = resolve_device(recipe.device)
    torch.manual_seed(recipe.seed)

    # One task holding every class: a plain classifier. Validation carved from train.
    one_task = recipe.model_copy(update={"data": recipe.data.model_copy(
        update={"tasks": 1, "classes_per_task": None, "first_task_classes": None})})
    stream = build_stream(one_task)
    task = stream.tasks[0]
    train_data = _subset(task.train, cfg.train_limit, recipe.seed)
    ds = stream.dataset
    input_shape = (ds.in_channels, ds.input_size, ds.input_size)
    n_classes = len(task.classes)
    meta = {"recipe": recipe.name, "dataset": recipe.data.dataset, "class_order": stream.class_order}
    m = _Measurer(out, cfg, input_shape, task.test, task.val, train_data.x, meta, log)
    tc = lambda epochs, lr, seed_offset=0: TrainConfig(  # noqa: E731
        epochs=epochs, lr=lr, batch_size=cfg.batch_size, device=device, seed=recipe.seed + seed_offset,
        progress=progress)
    rows: list[dict[str, Any]] = []

    # (1) teacher, fp32
    t0 = time.perf_counter()
    def trained_once(name: str, build: Callable[[], "nn.Module"]) -> "nn.Module":
        """The model saved as ``name`` by an interrupted run being resumed (training is the slow
        part), else ``build()``, saved there."""
        path = out / name
        if resume and path.exists():
            log(f"ladder: reusing {path}")
            return load_checkpoint(path).to(device)
        model = build()
        save_checkpoint(model, path, meta)
        return model

    def train_teacher() -> "nn.Module":
        net = IncrementalNet(recipe.model.backbone, ds.in_channels, ds.input_size, n_classes,
                             recipe.model.options).to(device)
        train(net, train_data, ce_loss, tc(cfg.teacher_epochs, cfg.lr), desc="teacher")
        return net

    teacher = trained_once("teacher.safetensors", train_teacher).cpu().eval()
    rows.append(m.row(1, STAGES[0], teacher, False, time.perf_counter() - t0,
                      f"{recipe.model.backbone} {recipe.model.options}, {cfg.teacher_epochs} epochs",
                      "bytes: fp32 .ccl artifact (float32 weights)"))
    frozen = copy.deepcopy(teacher).requires_grad_(False)

    # (2) teacher int8: linear per-channel symmetric 8-bit weights (post-training)
    t0 = time.perf_counter()
    int8_teacher = quantize_(copy.deepcopy(teacher), LinearQuantConfig(bits=8, per_channel=True))
    rows.append(m.row(2, STAGES[1], int8_teacher, True, time.perf_counter() - t0,
                      "linear per-channel 8-bit weights (PTQ)"))

    # (3) 30% of the channels removed from the teacher, fine-tuned (KD from the fp32 teacher), int8 again
    t0 = time.perf_counter()
    pruned = copy.deepcopy(teacher).to(device)
    prune_(pruned, StructuredConfig(ratio=cfg.prune_ratio, importance=cfg.importance, round_to=cfg.round_to),
           PruneData(input_shape=input_shape, train=train_data, val=task.val))
    if cfg.finetune_epochs:
        finetune_(pruned, train_data, tc(cfg.finetune_epochs, cfg.finetune_lr, 1),
                  teacher_kd_loss(frozen.to(device), cfg.temperature, cfg.alpha))
    pruned = quantize_(finalize_(pruned).cpu(), LinearQuantConfig(bits=8, per_channel=True))
    rows.append(m.row(3, STAGES[2], pruned, True, time.perf_counter() - t0,
                      f"{cfg.prune_ratio:.0%} channels removed (round_to={cfg.round_to}), "
                      f"{cfg.finetune_epochs} fine-tune epochs, int8 weights"))

    # (4) a smaller student distilled from the fp32 teacher's soft targets, int8 weights
    t0 = time.perf_counter()
    def distill_student() -> "nn.Module":
        torch.manual_seed(recipe.seed + 2)
        net = create_student(cfg.student, teacher, n_classes, **cfg.student_options).to(device)
        return distill(frozen.to(device), net, train_data,
                       DistillConfig(temperature=cfg.temperature, alpha=cfg.alpha, epochs=cfg.distill_epochs,
                                     lr=cfg.lr, batch_size=cfg.batch_size, device=device, seed=recipe.seed + 2,
                                     progress=progress))

    student = trained_once("student.safetensors", distill_student).cpu().eval()
    rows.append(m.row(4, STAGES[3], quantize_(copy.deepcopy(student), LinearQuantConfig(bits=8, per_channel=True)),
                      True, time.perf_counter() - t0,
                      f"{cfg.student} {student.spec['backbone_kwargs']}, KD T={cfg.temperature} alpha={cfg.alpha}, "
                      f"{cfg.distill_epochs} epochs, int8 weights"))

    # (5) the student pruned (structured) + quantized with QAT — the final rung
    t0 = time.perf_counter()
    final = copy.deepcopy(student).to(device)
    kd = teacher_kd_loss(frozen.to(device), cfg.temperature, cfg.alpha)
    if cfg.final_prune_ratio > 0:
        prune_(final, StructuredConfig(ratio=cfg.final_prune_ratio, importance=cfg.importance, round_to=cfg.round_to),
               PruneData(input_shape=input_shape, train=train_data, val=task.val))
        if cfg.finetune_epochs:
            finetune_(final, train_data, tc(cfg.finetune_epochs, cfg.finetune_lr, 3), kd)
        final = finalize_(final)
    final = final.cpu()
    extra = get_method(cfg.final_quant).accepted({"per_channel": True})
    qcfg = config_for(cfg.final_quant, cfg.final_bits, **extra)
    if cfg.qat_epochs:
        qat_(final, qcfg, train_data, QATConfig(epochs=cfg.qat_epochs, lr=cfg.qat_lr, batch_size=cfg.batch_size,
                                                seed=recipe.seed + 4),
             loss_fn=teacher_kd_loss(frozen.cpu(), cfg.temperature, cfg.alpha))
    else:
        quantize_(final, qcfg)
    if cfg.final_onnx == "fp32":
        note = f"latency of the fp32 ONNX graph of the decoded {cfg.final_bits}-bit weights (no low-bit kernel)"
    elif cfg.final_quant == "linear" and cfg.final_bits == 8:
        note = ""
    else:  # ORT has no 4-bit k-means kernel: the codes are a storage format, decoded when loaded
        note = f"stored {cfg.final_bits}-bit {cfg.final_quant}; timed graph: ORT int8 QDQ of the decoded weights"
    rows.append(m.row(5, STAGES[4], final, cfg.final_onnx == "int8", time.perf_counter() - t0,
                      f"{cfg.final_prune_ratio:.0%} channels removed, {cfg.final_bits}-bit {cfg.final_quant} "
                      f"weights, {cfg.qat_epochs} QAT epochs", note))

    teacher_row = rows[0]
    for r in rows:
        r["size_ratio"] = teacher_row["bytes"] / r["bytes"]
        r["accuracy_drop"] = teacher_row["accuracy"] - r["accuracy"]
    doc = {
        "schema": LADDER_SCHEMA,
        "recipe": recipe.model_dump(mode="json"),
        "config": cfg.model_dump(mode="json"),
        "dataset": recipe.data.dataset,
        "train_images": len(train_data), "val_images": len(task.val), "test_images": len(task.test),
        "class_order": stream.class_order,
        "latency": "ONNX Runtime CPUExecutionProvider, 1 thread, median of "
                   f"{cfg.latency_repeats} runs; latency_ms batch 1, latency_ms_b64 batch 64",
        "bytes": "size on disk of each rung's packed .ccl artifact (the teacher's: fp32)",
        "rows": rows,
        "summary": {"size_ratio": rows[-1]["size_ratio"], "accuracy_drop": rows[-1]["accuracy_drop"],
                    "teacher_accuracy": teacher_row["accuracy"], "final_accuracy": rows[-1]["accuracy"],
                    "target_met": rows[-1]["size_ratio"] >= 10 and rows[-1]["accuracy_drop"] <= 0.02},
    }
    atomic_write_text(out / "ladder.md", ladder_markdown(doc))
    atomic_write_json(doc_path, json.loads(json.dumps(doc, default=float)))
    return doc


def ladder_markdown(doc: dict[str, Any]) -> str:
    """The ladder as a Markdown table (what ``ladder.md`` holds)."""
    head = ["stage", "params", "MACs", "bytes", "x smaller", "ms b1", "ms b64", "graph", "int8/fp32 speed b1",
            "int8/fp32 speed b64", "accuracy", "drop (pts)", "ONNX acc", "agree w/ teacher", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in doc["rows"]:
        speed = [f"{r[k]:.2f}x" if k in r else "" for k in ("int8_speedup", "int8_speedup_b64")]
        cells = [r["stage"], f"{r['params']:,}", f"{r['flops']:,}", f"{r['bytes']:,}", f"{r['size_ratio']:.1f}",
                 f"{r['latency_ms']:.3f}", f"{r['latency_ms_b64']:.2f}", r["onnx"], *speed,
                 f"{100 * r['accuracy']:.2f}%", f"{100 * r['accuracy_drop']:+.2f}", f"{100 * r['onnx_accuracy']:.2f}%",
                 f"{100 * r['agreement']:.2f}%", r["note"]]
        lines.append("| " + " | ".join(cells) + " |")
    s = doc["summary"]
    lines += ["", f"Dataset {doc['dataset']}: {doc['train_images']} training images, {doc['val_images']} validation, "
              f"{doc['test_images']} test. {doc['latency']}. Bytes: {doc['bytes']}.",
              f"Final rung: {s['size_ratio']:.1f}x smaller than the teacher, "
              f"{100 * s['accuracy_drop']:+.2f} points accuracy drop (target: >= 10x at <= 2 points: "
              f"{'met' if s['target_met'] else 'not met'})."]
    return "\n".join(lines) + "\n"
