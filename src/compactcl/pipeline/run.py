"""Drive the task loop: learn on the working model, build the deployed model, score, save, record.

Run folder layout::

    RUN/recipe.yaml             the recipe as run (resume checks it)
    RUN/metrics.json            schema compactcl.metrics/1, rewritten after every task
    RUN/tasks/NN/working.safetensors   working model after task NN (+ spec, stream meta)
    RUN/tasks/NN/deployed.*     the deployed model after task NN
    RUN/tasks/NN/state.safetensors     exemplars, RNG state and learner state to resume
    RUN/final/                  working + deployed of the last task finished

Every file is written atomically; a killed run resumes from the last finished task.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from safetensors.torch import load_file, save as st_save
from torch import nn

from ..data.datasets import load_dataset
from ..data.memory import ExemplarMemory
from ..data.stream import Stream, Task, class_incremental
from ..errors import CompactCLError
from ..learners import LearnerState, TrainConfig, accuracy, create_learner
from ..learners.base import LEARNERS
from ..metrics.continual import summarize
from ..metrics.model_stats import count_flops, count_params, fp32_bytes
from ..models.checkpoint import load_checkpoint, save_checkpoint
from ..models.net import DERNet, IncrementalNet
from ..utils.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from .recipe import Recipe

__all__ = ["run_recipe", "build_stream", "resolve_device", "METRICS_SCHEMA", "Deployer"]

METRICS_SCHEMA = "compactcl.metrics/1"

# deploy(working model, task, context) -> (deployed model, file written, extra figures)
Deployer = Callable[[nn.Module, Task, dict[str, Any]], tuple[nn.Module, Path, dict[str, Any]]]


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CompactCLError(f"device {name!r} asked for, but PyTorch sees no CUDA device; use --device cpu")
    return name


def build_stream(recipe: Recipe) -> Stream:
    d = recipe.data
    ds = load_dataset(d.dataset, d.root, **d.options)
    return class_incremental(ds, d.tasks, d.classes_per_task, d.first_task_classes, recipe.seed, d.val_fraction,
                             d.class_order)


def stream_meta(recipe: Recipe, stream: Stream) -> dict[str, Any]:
    """What `checkpoint_data` needs to rebuild the exact stream a checkpoint was trained on."""
    d = recipe.data
    return {"dataset": d.dataset, "root": d.root, "dataset_options": d.options, "tasks": d.tasks,
            "classes_per_task": d.classes_per_task, "first_task_classes": d.first_task_classes,
            "seed": recipe.seed, "val_fraction": d.val_fraction, "class_order": stream.class_order,
            "normalization": stream.dataset.normalization}


def new_model(recipe: Recipe, stream: Stream) -> nn.Module:
    from ..models.external import create_external, is_external_name, load_weights

    ds, m = stream.dataset, recipe.model
    if is_external_name(m.backbone):
        net = create_external(m.backbone, 0, ds.in_channels, m.pretrained, ds.input_size, m.head, m.options)
        if m.weights:
            load_weights(net, m.weights, strict=False, exclude_head=True)
        return net
    cls = DERNet if LEARNERS[recipe.learner.name].grows_branches else IncrementalNet
    return cls(m.backbone, ds.in_channels, ds.input_size, 0, m.options)


def train_config(recipe: Recipe, device: str, progress: bool) -> TrainConfig:
    lc = recipe.learner
    return TrainConfig(epochs=lc.epochs, iterations=lc.iterations, batch_size=lc.batch_size, lr=lc.lr,
                       optimizer=lc.optimizer, momentum=lc.momentum, weight_decay=lc.weight_decay,
                       schedule=lc.schedule, device=device, seed=recipe.seed, progress=progress,
                       augment=lc.augment)


def identity_deployer(run_dir: Path) -> Deployer:
    """Until a `compress:` section is given, the deployed model is the working model, saved as is."""

    def deploy(model: nn.Module, task: Task, ctx: dict[str, Any]) -> tuple[nn.Module, Path, dict[str, Any]]:
        path = run_dir / "tasks" / f"{task.index:02d}" / "deployed.safetensors"
        save_checkpoint(model, path, ctx["meta"])
        return model, path, {"note": "no compress section: deployed = working (fp32 checkpoint)"}

    return deploy


@dataclass
class _Scores:
    working: list[float]
    deployed: list[float]


def _score(model: nn.Module, deployed: nn.Module, tasks: list[Task], means) -> _Scores:
    return _Scores([accuracy(model, t.test, means) for t in tasks], [accuracy(deployed, t.test) for t in tasks])


def _save_state(path: Path, state: LearnerState) -> None:
    tensors = {**state.memory.state_tensors(), "rng.torch": torch.get_rng_state()}
    meta = {"task_index": state.task_index, "seen_labels": state.seen_labels, "classifier": state.classifier}
    atomic_write_bytes(path, st_save(tensors, metadata={"compactcl": json.dumps(meta)}))


def _load_state(path: Path, state: LearnerState, stream: Stream) -> LearnerState:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["compactcl"])
    tensors = load_file(str(path))
    state.memory.load_state_tensors(tensors)
    state.memory.compute_means(state.model)
    torch.set_rng_state(tensors["rng.torch"])
    state.task_index = meta["task_index"]
    state.seen_labels = meta["seen_labels"]
    state.classifier = meta["classifier"]
    state.archive = [t.train for t in stream.tasks[: state.task_index + 1]]
    return state


def _metrics_doc(recipe: Recipe, stream: Stream, rows: list[dict[str, Any]], status: str, note: str) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": METRICS_SCHEMA,
        "status": status,
        "recipe": recipe.model_dump(mode="json"),
        "class_order": stream.class_order,
        "deployed_note": note,
        "tasks": rows,
    }
    if rows:
        doc["summary"] = {which: summarize([r["accuracy"][which] for r in rows]) for which in ("working", "deployed")}
        doc["summary"]["bytes"] = {"working_fp32": rows[-1]["bytes"]["fp32"], "deployed": rows[-1]["bytes"]["deployed"]}
    return doc


def run_recipe(recipe: Recipe, out: str | Path, resume: bool = False, progress: bool = True,
               deployer: Deployer | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run ``recipe`` into folder ``out`` and return the metrics document (metrics.json)."""
    out = Path(out)
    recipe_text = yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
    metrics_path = out / "metrics.json"
    if metrics_path.exists() and not resume:
        raise CompactCLError(f"{out} already holds a run; continue it with --resume, or choose another --out")
    if resume and (out / "recipe.yaml").exists() and (out / "recipe.yaml").read_text() != recipe_text:
        raise CompactCLError(f"{out} was started with a different recipe; resume with the same recipe and --set "
                             f"values (see {out / 'recipe.yaml'}), or start a new --out")
    device = resolve_device(recipe.device)
    torch.manual_seed(recipe.seed)
    stream = build_stream(recipe)
    atomic_write_text(out / "recipe.yaml", recipe_text)

    lc = recipe.learner
    learner = create_learner(lc.name, temperature=lc.temperature, distill_weight=lc.distill_weight, nme=lc.nme)
    state = LearnerState(new_model(recipe, stream).to(device), ExemplarMemory(recipe.memory.size,
                         recipe.memory.selection, recipe.seed), train_config(recipe, device, progress))
    rows: list[dict[str, Any]] = []
    if resume and metrics_path.exists():
        rows = json.loads(metrics_path.read_text())["tasks"]
        if rows:
            last = out / "tasks" / f"{len(rows) - 1:02d}"
            state.model = load_checkpoint(last / "working.safetensors").to(device)
            state = _load_state(last / "state.safetensors", state, stream)
            log(f"resuming {out} after task {len(rows) - 1}")
    if deployer is None and recipe.compress is not None:
        from .compress import make_deployer

        deployer = make_deployer(recipe.compress, recipe.export.onnx, recipe.export.int8, recipe.seed)
    deploy = deployer or identity_deployer(out)
    note = ("no compress section: deployed = working (fp32 checkpoint)" if deployer is None else
            "deployed = working compressed by the recipe's compress steps into a packed .ccl artifact")
    meta_stream = stream_meta(recipe, stream)
    input_shape = (stream.dataset.in_channels, stream.dataset.input_size, stream.dataset.input_size)

    tb = None
    if recipe.log.tensorboard:
        from ..logging.tensorboard import TensorBoardLogger, accuracy_matrix

        tb = TensorBoardLogger(out)
    tasks_bar = _bar(len(stream), len(rows), progress)
    try:
        for task in stream.tasks[len(rows):]:
            if tb is not None:
                state.train.on_epoch = lambda epoch, loss, t=task.index: tb.log_epoch(t, epoch, loss)
            t0 = time.perf_counter()
            state = learner.fit_task(state, task)
            seconds = time.perf_counter() - t0
            task_dir = out / "tasks" / f"{task.index:02d}"
            meta = {"stream": meta_stream, "task": task.index, "labels": state.seen_labels,
                    "classes": [stream.class_order[i] for i in state.seen_labels], "recipe": recipe.name}
            working_bytes = save_checkpoint(state.model, task_dir / "working.safetensors", meta)
            ctx = {"meta": meta, "stream": stream, "state": state, "input_shape": input_shape, "dir": task_dir,
                   "student_path": out / "tasks" / f"{task.index - 1:02d}" / "student.safetensors"}
            deployed, deployed_path, extra = deploy(state.model, task, ctx)
            scores = _score(state.model, deployed, stream.tasks[: task.index + 1], state.means())
            rows.append({
                "index": task.index,
                "classes": task.classes,
                "accuracy": {"working": scores.working, "deployed": scores.deployed},
                "bytes": {"fp32": fp32_bytes(state.model), "working_file": working_bytes,
                          "deployed": deployed_path.stat().st_size},
                "params": count_params(state.model),
                "flops": count_flops(state.model, input_shape),
                "deployed_params": count_params(deployed),
                "deployed_flops": count_flops(deployed, input_shape),
                "seconds": seconds,
                **({"deploy": extra} if extra else {}),
            })
            _save_state(task_dir / "state.safetensors", state)
            _publish_final(out, task_dir, deployed_path)
            atomic_write_json(metrics_path, _metrics_doc(recipe, stream, rows, "running", note))
            if tb is not None:
                tb.log_task(task.index, rows[-1], {w: accuracy_matrix(rows, w) for w in ("working", "deployed")})
            if tasks_bar is not None:
                tasks_bar.set_postfix(acc=f"{sum(scores.working) / len(scores.working):.3f}")
                tasks_bar.update(1)
    finally:
        if tb is not None:
            tb.close()
        if tasks_bar is not None:
            tasks_bar.close()
    doc = _metrics_doc(recipe, stream, rows, "complete", note)
    atomic_write_json(metrics_path, doc)
    return doc


def _publish_final(out: Path, task_dir: Path, deployed_path: Path) -> None:
    """final/ mirrors the last finished task (copied atomically, file by file)."""
    final = out / "final"
    final.mkdir(parents=True, exist_ok=True)
    for src, name in ((task_dir / "working.safetensors", "working.safetensors"),
                      (deployed_path, f"deployed{''.join(deployed_path.suffixes)}")):
        atomic_write_bytes(final / name, src.read_bytes())
    for stale in final.glob("deployed.*"):
        if stale.name != f"deployed{''.join(deployed_path.suffixes)}":
            stale.unlink()
    extra = task_dir / "deployed.onnx"
    if extra.exists():
        shutil.copyfile(extra, final / "deployed.onnx")


def _bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="tasks", unit="task")
