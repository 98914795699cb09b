"""Drive the task loop: learn on the working model, build the deployed model, score, save, record.

Run folder layout::

    RUN/.compactcl-run          marker: the folder is compactcl's (written first; see pipeline/folder.py)
    RUN/.compactcl-run.lock     flock'ed by the run writing the folder
    RUN/recipe.yaml             the recipe as started, recorded once (resume is checked against it)
    RUN/metrics.json            schema compactcl.metrics/1, rewritten after every task
    RUN/tasks/NN/working.safetensors   working model after task NN (+ spec, stream meta)
    RUN/tasks/NN/deployed.*     the deployed model after task NN
    RUN/tasks/NN/state.safetensors     exemplars, RNG state and learner state to resume
    RUN/final/                  working + deployed of the last task finished

Every file is written atomically; a killed run resumes from the last finished task.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save as st_save
from torch import nn

from ..data.datasets import DatasetSplits, TensorData
from ..data.memory import ExemplarMemory
from ..data.stream import Stream, Task
from ..errors import CompactCLError
from ..engine.loop import TrainConfig, TrainHooks, accuracy, predict
from ..learners import LearnerState, learner_class
from ..export.update import update_size
from ..metrics.continual import summarize
from ..metrics.model_stats import count_flops, count_params, fp32_bytes
from ..models.checkpoint import load_checkpoint, read_header, save_checkpoint
from ..models.net import IncrementalNet
from ..utils.atomic import atomic_write_bytes, atomic_write_json
from ..utils.classes import class_names_text
from ..utils import distributed as dist
from ..utils.heap import release_freed_memory
from .deploy import DeployContext, Deployer, IdentityDeployer
from .folder import check_out, claim_run_folder, clean_stale_temps, record_changes, recorded_recipe
from .recipe import Recipe
from .stream import build_stream, stream_meta

__all__ = ["run_recipe", "METRICS_SCHEMA"]

METRICS_SCHEMA = "compactcl.metrics/1"


def new_model(recipe: Recipe, stream: Stream) -> nn.Module:
    from ..models.external import create_external, is_external_name, load_weights

    ds, m = stream.dataset, recipe.model
    if is_external_name(m.backbone):
        net = create_external(m.backbone, 0, ds.in_channels, m.pretrained, ds.input_size, m.head, m.options)
        if m.weights:
            load_weights(net, m.weights, strict=False, exclude_head=True)
        return net
    _check_model_options(recipe, ds.in_channels, ds.input_size)
    return learner_class(recipe.learner.name).build_model(m.backbone, ds.in_channels, ds.input_size, m.options)


def given_model(recipe: Recipe, model: nn.Module) -> nn.Module:
    """A copy of a model handed in from Python (the caller's stays as it was), checked before any
    training: one the learner can grow, that checkpoints can rebuild; its head emptied (the run adds
    the classes of each task)."""
    from ..models.protocol import IncrementalModel, empty_linear

    if not isinstance(model, IncrementalModel):
        raise CompactCLError(f"model: a {type(model).__name__} is not a compactcl model; wrap it with "
                             "compactcl.models.from_module(model, head='<its nn.Linear>', factory=<a @model_factory "
                             "function>) so the run can grow its head and save checkpoints")
    model.spec  # raises now, not after a task's training, when no factory can rebuild it
    model = copy.deepcopy(model)
    network = learner_class(recipe.learner.name).network
    if model.grows_branches != network.grows_branches:
        raise CompactCLError(f"learner {recipe.learner.name!r} grows a {network.__name__}; the model handed in is a "
                             f"{type(model).__name__} — build it with that learner's network, or pick another learner")
    if model.num_classes:
        model.head = empty_linear(model.head.in_features, 0)
    return model


def first_task_model(recipe: Recipe, stream: Stream) -> nn.Module:
    """The model named by ``model.first_task_from``, checked to be the first task's model: a
    full-precision checkpoint of the network the recipe describes (the kind the learner grows), for
    the same data and input, whose head holds the first task's classes in order."""
    from ..export.load import check_input, load

    source = recipe.model.first_task_from
    path = Path(source)
    if path.is_dir():  # a run folder: its first task's model (final/ holds the last task's)
        path = path / "tasks" / "00" / "working.safetensors"
    where = f"model.first_task_from={source}"
    header = read_header(path)
    if not str(header.get("format", "")).startswith("compactcl.checkpoint/"):
        raise CompactCLError(f"{where}: {path} is not a full-precision compactcl checkpoint (format "
                             f"{header.get('format')!r}; a packed .ccl artifact cannot keep learning); point at "
                             "RUN/tasks/00/working.safetensors or your model saved with save_checkpoint")
    model = load(path)
    network = learner_class(recipe.learner.name).network
    if model.grows_branches != network.grows_branches:
        want = "a DER model (one branch per task, from a der run)" if network.grows_branches else \
            "a single-backbone model"
        raise CompactCLError(f"{where}: learner {recipe.learner.name!r} needs {want}, got a {type(model).__name__}")
    spec, m = model.spec, recipe.model
    if "backbone" in spec and (spec["backbone"], spec.get("backbone_kwargs") or {}) != (m.backbone, m.options):
        raise CompactCLError(f"{where}: it is a {spec['backbone']} with options {spec.get('backbone_kwargs') or {}}, "
                             f"the recipe says model.backbone={m.backbone} with options {m.options}; make them "
                             "agree (new tasks' branches and the recorded recipe follow the recipe)")
    ds, task = stream.dataset, stream.tasks[0]
    check_input(model, torch.zeros(1, ds.in_channels, ds.input_size, ds.input_size), where)
    if model.num_classes != len(task.labels):
        raise CompactCLError(f"{where}: the model has {model.num_classes} outputs but the first task has "
                             f"{len(task.labels)} classes; set data.first_task_classes: {model.num_classes}")
    meta = header.get("meta") if isinstance(header.get("meta"), dict) else {}
    trained_on = (meta.get("stream") or {}).get("dataset") if isinstance(meta.get("stream"), dict) else None
    if trained_on is not None and trained_on != recipe.data.dataset:
        raise CompactCLError(f"{where}: it was trained on {trained_on!r}, the recipe's data.dataset is "
                             f"{recipe.data.dataset!r}")
    want, known = [stream.class_order[i] for i in task.labels], meta.get("classes")
    if known is not None and list(known) != want:
        raise CompactCLError(f"{where}: its outputs are dataset classes {known} but the first task holds {want}; "
                             f"set data.class_order to start with {known}")
    return model


def _check_model_options(recipe: Recipe, channels: int, size: int) -> None:
    """Build the backbone on the meta device (no memory, no RNG draw) and run it once, so bad
    ``model.options`` fail here with the key's name instead of a deep RuntimeError/TypeError."""
    m = recipe.model
    what = f"model.options {m.options} for backbone {m.backbone!r} on {channels}x{size}x{size} images"
    try:
        with torch.device("meta"):
            probe = IncrementalNet(m.backbone, channels, size, 2, m.options)
            probe(torch.empty(2, channels, size, size))
    except (TypeError, ValueError, RuntimeError, ZeroDivisionError, OverflowError, IndexError) as e:
        raise CompactCLError(f"{what} do not build a model: {type(e).__name__}: {str(e)[:200]}") from e
    n = sum(p.numel() for p in probe.parameters())
    if n > 2 ** 30:
        raise CompactCLError(f"{what} give a model of {n:,} parameters ({4 * n / 2 ** 30:.0f} GiB in fp32); "
                             "lower them (e.g. model.options.width)")


def train_config(recipe: Recipe, device: str, progress: bool) -> TrainConfig:
    return recipe.learner.train_config(device, recipe.seed, progress)


@dataclass
class _Scores:
    working: list[float]
    deployed: list[float]


def _confusion(model: nn.Module, tasks: list[Task], class_order: list[int]) -> dict[str, Any]:
    """Confusion matrix of ``model`` over the test split of ``tasks``: rows true, columns predicted,
    in output order; ``classes`` names each output's dataset class id."""
    test = TensorData.cat([t.test for t in tasks])
    k = sum(len(t.labels) for t in tasks)
    pred = predict(model, test).clamp(0, k - 1)
    matrix = torch.zeros(k, k, dtype=torch.long)
    matrix.index_put_((test.y, pred), torch.ones_like(pred), accumulate=True)
    return {"classes": [class_order[i] for i in range(k)], "matrix": matrix.tolist()}


def _score(model: nn.Module, deployed: nn.Module, tasks: list[Task], means) -> _Scores:
    return _Scores([accuracy(model, t.test, means) for t in tasks], [accuracy(deployed, t.test) for t in tasks])


def _save_state(path: Path, state: LearnerState) -> None:
    tensors = {**state.memory.state_tensors(), "rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # layers grown on a GPU draw from its RNG
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    meta = {"task_index": state.task_index, "seen_labels": state.seen_labels, "classifier": state.classifier}
    atomic_write_bytes(path, st_save(tensors, metadata={"compactcl": json.dumps(meta)}))


def _load_state(path: Path, state: LearnerState, stream: Stream) -> LearnerState:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["compactcl"])
        tensors = load_file(str(path))
        rng = tensors["rng.torch"]
    except Exception as e:  # missing, truncated or foreign file: safetensors raises its own types
        raise CompactCLError(f"cannot resume: {path} is missing or unreadable ({type(e).__name__}: {e}). "
                             "Start a new --out, or delete this task's row from metrics.json to redo it.") from e
    state.memory.load_state_tensors(tensors)
    state.memory.compute_means(state.model)
    torch.set_rng_state(rng)
    cuda = [tensors[f"rng.cuda.{i}"] for i in range(sum(k.startswith("rng.cuda.") for k in tensors))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    state.task_index = meta["task_index"]
    state.seen_labels = meta["seen_labels"]
    state.classifier = meta["classifier"]
    state.archive = [t.train for t in stream.tasks[: state.task_index + 1]]
    return state


def _metrics_doc(recorded: dict[str, Any], stream: Stream, rows: list[dict[str, Any]], status: str, note: str,
                 changes: list[dict[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": METRICS_SCHEMA,
        "status": status,
        "recipe": recorded,  # as started (recipe.yaml); later export.*/log.* changes: recipe_changes
        **({"recipe_changes": changes} if changes else {}),
        "class_order": stream.class_order,
        "class_names": list(stream.dataset.class_names),  # by dataset class id (tasks[i].classes)
        "deployed_note": note,
        "tasks": rows,
    }
    if rows:
        doc["summary"] = {which: summarize([r["accuracy"][which] for r in rows]) for which in ("working", "deployed")}
        doc["summary"]["bytes"] = {"working_fp32": rows[-1]["bytes"]["fp32"], "deployed": rows[-1]["bytes"]["deployed"]}
    return doc


def _read_rows(metrics_path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The finished tasks' rows and recorded recipe changes of a run being resumed."""
    try:
        doc = json.loads(metrics_path.read_text())
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise CompactCLError(f"cannot resume: {metrics_path} is not a compactcl metrics file "
                             f"({type(e).__name__}); start a new --out") from None
    rows = doc.get("tasks") if isinstance(doc, dict) else None
    changes = doc.get("recipe_changes", []) if isinstance(doc, dict) else []
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows) or not isinstance(changes, list):
        raise CompactCLError(f"cannot resume: {metrics_path} is not a compactcl metrics file (its 'tasks' is not a "
                             "list of task rows); start a new --out")
    return rows, changes


def run_recipe(recipe: Recipe, out: str | Path, resume: bool = False, progress: bool = True,
               deployer: "Deployer | None" = None, log: Callable[[str], None] = print, *,
               dataset: DatasetSplits | None = None, model: nn.Module | None = None) -> dict[str, Any]:
    """Run ``recipe`` into folder ``out`` and return the metrics document (metrics.json).

    ``dataset`` replaces the recipe's ``data.dataset`` (in-memory data from Python); ``model``
    (an :class:`~compactcl.models.protocol.IncrementalModel`, e.g. ``from_module(...)``) replaces the
    model the recipe's ``model:`` section would build — its head is emptied: the run grows it task by task.
    """
    out = Path(out)
    if dist.maybe_init(recipe.device) and not dist.is_main():
        check_out(out, resume)  # refused on rank 0 too: every rank stops before the barrier
        return _follow(recipe, out, resume, deployer, _Given(dataset, model))
    with claim_run_folder(out, recipe.model_dump(mode="json"), resume, log) as folder:
        doc = _run(recipe, out, resume, progress, deployer, log, folder.recorded, _Given(dataset, model))
        # drawn after the run's data and models are freed: the figures do not add to the run's peak memory
        release_freed_memory()
        from ..report.html import write_report

        write_report(out)
        return doc


@dataclass(frozen=True)
class _Given:
    """What a Python caller handed in instead of the recipe's data and model sections."""

    dataset: DatasetSplits | None = None
    model: nn.Module | None = None


def _follow(recipe: Recipe, out: Path, resume: bool, deployer: Deployer | None, given: _Given) -> dict[str, Any]:
    """Ranks > 0 under torchrun: the same run, step for step (DDP needs every rank in every
    training step), but into a private scratch copy of ``out`` that is deleted afterwards —
    rank 0 alone writes the run folder. Copying ``out`` first makes resume (and the refusal
    to overwrite a finished run) behave exactly as on rank 0."""
    scratch = Path(tempfile.mkdtemp(prefix=f"compactcl-rank{dist.rank()}-"))
    try:
        if out.is_dir():
            # rank 0 may be writing the folder right now: its temp files come and go (never copy them)
            shutil.copytree(out, scratch, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*.tmp"))
        recorded = recorded_recipe(scratch) or recipe.model_dump(mode="json")
        return _run(recipe, scratch, resume, False, deployer, lambda _msg: None, recorded, given)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run(recipe: Recipe, out: Path, resume: bool, progress: bool, deployer: Deployer | None,
         log: Callable[[str], None], recorded: dict[str, Any], given: _Given) -> dict[str, Any]:
    metrics_path = out / "metrics.json"
    if metrics_path.exists() and not resume:
        raise CompactCLError(f"{out} already holds a run; continue it with `compactcl run --resume {out}`, "
                             "or choose another --out")
    device = dist.resolve_device(recipe.device)
    torch.manual_seed(recipe.seed)
    stream = build_stream(recipe, given.dataset)
    # checked before anything is written: a wrong first-task model fails the run at once
    given_first = (first_task_model(recipe, stream) if recipe.model.first_task_from and not metrics_path.exists()
                   else None)
    dist.barrier()  # every rank has checked (and a follower copied) the folder before rank 0 writes to it

    learner = learner_class(recipe.learner.name)(recipe.learner)
    working = given_model(recipe, given.model) if given.model is not None else new_model(recipe, stream)
    state = LearnerState(working.to(device), ExemplarMemory(recipe.memory.size,
                         recipe.memory.selection, recipe.seed, normalization=stream.dataset.normalization,
                         bytes=recipe.memory.bytes), train_config(recipe, device, progress))
    rows: list[dict[str, Any]] = []
    changes: list[dict[str, Any]] = []
    if resume:
        clean_stale_temps(out)  # temp files of a killed writer (never renamed into place); marked folders only
    if resume and metrics_path.exists():
        rows, changes = _read_rows(metrics_path)
        if rows:
            last = out / "tasks" / f"{len(rows) - 1:02d}"
            state.model = load_checkpoint(last / "working.safetensors").to(device)
            state = _load_state(last / "state.safetensors", state, stream)
            log(f"resuming {out} after task {len(rows) - 1}" if len(rows) < len(stream) else
                f"{out} is complete ({len(rows)} tasks); nothing to do. Report: {out / 'report.html'}")
    if len(rows) < len(stream):  # a finished run has no task a changed key could apply to
        changes = record_changes(recorded, recipe.model_dump(mode="json"), changes, len(rows))
    if deployer is None and recipe.compress is not None:
        from .compress import CompressDeployer

        deployer = CompressDeployer(recipe.compress, recipe.export.onnx, recipe.export.int8, recipe.export.strict)
    deployer = deployer or IdentityDeployer()
    if rows:
        deployer.resume(out / "tasks" / f"{len(rows) - 1:02d}")
    meta_stream = stream_meta(recipe, stream)
    input_shape = (stream.dataset.in_channels, stream.dataset.input_size, stream.dataset.input_size)

    tb = None
    if recipe.log.tensorboard:
        from ..report.tensorboard import TensorBoardLogger, accuracy_matrix

        tb = TensorBoardLogger(out)
    tasks_bar = _bar(len(stream), len(rows), progress)
    try:
        for task in stream.tasks[len(rows):]:
            if tb is not None:
                state.hooks = TrainHooks(end_epoch=lambda _m, epoch, loss, t=task.index: tb.log_epoch(t, epoch, loss))
            t0 = time.perf_counter()
            log(f"task {task.index} (of {len(stream)}): {learner.name} learns classes "
                f"[{class_names_text(task.classes, stream.dataset.class_names)}] ...")
            if task.index == 0 and recipe.model.first_task_from:
                given = given_first if given_first is not None else first_task_model(recipe, stream)
                state = learner.adopt_task(state, task, given.to(device))
            else:
                state = learner.fit_task(state, task)
            seconds = time.perf_counter() - t0
            log(f"task {task.index}: trained in {seconds:.1f} s")
            task_dir = out / "tasks" / f"{task.index:02d}"
            meta = {"stream": meta_stream, "task": task.index, "labels": state.seen_labels,
                    "classes": [stream.class_order[i] for i in state.seen_labels], "recipe": recipe.name}
            working_bytes = save_checkpoint(state.model, task_dir / "working.safetensors", meta)
            ctx = DeployContext(task=task, seen=stream.tasks[: task.index + 1], memory=state.memory,
                                kept=learner.kept_data(state), meta=meta, input_shape=input_shape,
                                task_dir=task_dir, device=device, seed=recipe.seed, learner=learner.name,
                                log=log)
            t1 = time.perf_counter()
            # The deployer's random draws (student init, calibration picks) stay out of the
            # learner's stream: adding a compress section must not change the working model.
            for path in deployer.written_in(task_dir):  # a killed attempt's: never published as ours
                path.unlink(missing_ok=True)
            with torch.random.fork_rng(devices=_live_cuda_devices()):
                result = deployer.deploy(state.model, ctx)
            deployed, deployed_path, extra = result.model, result.path, result.report
            deploy_seconds = time.perf_counter() - t1
            for warning in extra.get("warnings", ()):
                log(f"warning: task {task.index}: {warning}")
            scores = _score(state.model, deployed, stream.tasks[: task.index + 1], state.means())
            previous = out / "tasks" / f"{task.index - 1:02d}" / deployed_path.name
            update = update_size(previous.read_bytes() if previous.exists() else None, deployed_path.read_bytes())
            rows.append({
                "index": task.index,
                "classes": task.classes,
                "accuracy": {"working": scores.working, "deployed": scores.deployed},
                "bytes": {"fp32": fp32_bytes(state.model), "working_file": working_bytes,
                          "deployed": deployed_path.stat().st_size, "update": update["bytes"],
                          **({"breakdown": extra["breakdown"]} if "breakdown" in extra else {}),
                          # memory-aligned accounting (MEMO): what the learner stores = model + exemplars
                          "exemplars": state.memory.nbytes,
                          "learner_total": fp32_bytes(state.model) + state.memory.nbytes},
                "exemplars": len(state.memory),
                "update_kind": update["kind"],
                "params": count_params(state.model),
                "flops": count_flops(state.model, input_shape),
                "deployed_params": count_params(deployed),
                "deployed_flops": count_flops(deployed, input_shape),
                "seconds": seconds,
                "deploy_seconds": deploy_seconds,
                "confusion_deployed": _confusion(deployed, stream.tasks[: task.index + 1], stream.class_order),
                **({"deploy": extra} if extra else {}),
            })
            _save_state(task_dir / "state.safetensors", state)
            _publish_final(out, task_dir, deployer.files)
            atomic_write_json(metrics_path, _metrics_doc(recorded, stream, rows, "running", deployer.note, changes))
            release_freed_memory()  # the next task starts from what is held, not from this one's peak
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
    doc = _metrics_doc(recorded, stream, rows, "complete", deployer.note, changes)
    atomic_write_json(metrics_path, doc)
    return doc


def _live_cuda_devices() -> list[int]:
    """CUDA devices whose RNG fork_rng must save (none on CPU; touching CUDA would initialise it)."""
    return list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []


def _publish_final(out: Path, task_dir: Path, deployed_files: tuple[str, ...]) -> None:
    """final/ mirrors the last finished task (copied atomically, file by file): the working model
    and the deployer's declared files. A declared file this task did not write is removed from
    final/ (it belonged to an earlier task); no other file there is touched."""
    final = out / "final"
    final.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(final / "working.safetensors", (task_dir / "working.safetensors").read_bytes())
    for name in deployed_files:
        if (task_dir / name).exists():
            atomic_write_bytes(final / name, (task_dir / name).read_bytes())
        else:
            (final / name).unlink(missing_ok=True)


def _bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    from ..utils.console import on_terminal

    return tqdm(total=total, initial=initial, desc="tasks", unit="task", disable=not on_terminal())
