"""Build the deployed model after every task: distil, prune, quantize (QAT) — to a budget.

The ``compress:`` section of a recipe::

    compress:
      budget: {fraction_of_backbone: 0.1}     # or bytes: 20000; optional latency_ms (ONNX Runtime)
      tolerance: 0.01                         # accuracy drop allowed by `auto` choices without a budget
      steps:
        - distill: {student: cnn, options: {width: 8}, epochs: 10, temperature: 4, alpha: 0.9}
        - prune: {method: structured, ratio: 0.3, finetune_epochs: 10}
        - quantize: {method: kmeans, bits: auto, qat_epochs: 2}

``bits: auto`` searches per-layer bit widths (sensitivity-guided greedy) until the packed
artifact fits the byte budget; ``ratio: auto`` picks the largest prune ratio whose validation
drop stays within ``tolerance`` (and whose ONNX latency meets ``latency_ms`` when set). The
working model is never touched: every step works on a copy. Data: the task's training data
plus the exemplar memory (what a deployed learner really has); choices use the validation
splits of the tasks seen so far, never the test split.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from ..data.datasets import TensorData
from ..data.memory import ExemplarMemory
from ..data.stream import Task
from ..errors import BudgetNotMet, CompactCLError
from ..engine.loop import TrainConfig, accuracy, train
from ..engine.losses import teacher_kd_loss
from ..models.protocol import IncrementalModel
from .config import Budget, CompressConfig, DistillStep, PruneStep, QuantizeStep
from .deploy import DeployContext, Deployed, Deployer
from .measure import RUNG_FILES

if TYPE_CHECKING:
    from .measure import Measurer

__all__ = ["CompressDeployer", "budget_bytes", "deploy_data", "quality_warnings"]


# --------------------------------------------------------------------------------------------------


def budget_bytes(budget: Budget, working: IncrementalModel) -> int | None:
    """The byte budget: explicit, or a fraction of ONE fp32 backbone with a head for the classes
    seen — what a single, non-growing model would weigh (DER's working model holds one per task)."""
    if budget.bytes is not None:
        return budget.bytes
    if budget.fraction_of_backbone is None:
        return None
    return int(4 * working.single_params() * budget.fraction_of_backbone)


def deploy_data(task: Task, kept: TensorData | None, memory: ExemplarMemory, balance: float | None,
                seed: int) -> TensorData:
    """What the deployed model may train on: what the learner keeps of the tasks so far (``kept``:
    exemplars, everything for joint training, nothing for memory-less learners) + the new task's data,
    class-balanced: every old class as kept, each new class capped at ``balance`` x the images an old
    class has (exemplars per class when the learner has a memory)."""
    if kept is None:  # a memory-less learner: the new task only (and the working model's outputs)
        return task.train
    old = kept.subset(torch.nonzero(~torch.isin(kept.y, torch.tensor(task.labels))).flatten())
    if balance is None:
        return TensorData.cat([task.train, old])
    if memory.x:  # exemplars per class seen (the memory already holds this task's classes)
        per_class = max(1, int(balance * memory.size / len(memory.x)))
    else:  # everything kept (joint): as many as an old class has on average; the first task takes all
        n_old = len(torch.unique(old.y))
        per_class = max(1, int(balance * len(old) / n_old)) if n_old else len(task.train)
    gen = torch.Generator().manual_seed(seed)
    new = []
    for label in task.labels:
        idx = torch.nonzero(task.train.y == label).flatten()
        new.append(task.train.subset(idx[torch.randperm(len(idx), generator=gen)[:per_class]]))
    return TensorData.cat([old, *new])


def quality_warnings(ctx: DeployContext, val_accuracy: float, working_val_accuracy: float, num_classes: int,
                     warn_drop: float) -> list[str]:
    """Why the deployed model may not be what a user expects, with the likely fixes."""
    out = []
    if ctx.kept is None and ctx.task.index > 0:  # nothing earlier to forget on the first task
        out.append(f"learner {ctx.learner!r} keeps no data of earlier tasks, so the deployed model trains on this "
                   "task's images and the working model's outputs only and will forget earlier classes; use a "
                   "learner with a memory (icarl, der, replay) for a deployed model that remembers")
    drop = working_val_accuracy - val_accuracy
    causes = ("likely causes: too few distill epochs (compress.steps[].distill.epochs), a student too small for "
              "the task (distill options, compress.budget), too little data for old classes (compress.balance, "
              "memory.size)")
    if drop > warn_drop:
        out.append(f"the deployed model is {drop:.1%} below the working model on validation ({val_accuracy:.3f} vs "
                   f"{working_val_accuracy:.3f}, compress.warn_drop={warn_drop}); {causes}")
    if num_classes > 1 and val_accuracy < 1.5 / num_classes:
        out.append(f"the deployed model is near chance on validation ({val_accuracy:.3f} over {num_classes} "
                   f"classes); {causes}")
    return out


class CompressDeployer(Deployer):
    """The recipe's ``compress:`` steps, in order, on a copy of the working model, to the budget.

    Carries the previous task's fp32 student (grown and reused by a ``distill`` step with
    ``reuse``): saved as ``student.safetensors`` in every task folder, restored by :meth:`resume`.
    """

    files = ("deployed.ccl", "deployed.onnx", "deployed.int8.onnx")
    state_files = ("student.safetensors",)
    extra_files = RUNG_FILES  # compress.measure's ladder
    note = "deployed = working compressed by the recipe's compress steps into a packed .ccl artifact"

    def __init__(self, config: CompressConfig, export_onnx: bool = False, int8: bool = False, strict: bool = False):
        self.config = config
        self.export_onnx = export_onnx
        self.int8 = int8
        self.strict = strict  # export checks stop the run (else: recorded + a warning)
        self.student: nn.Module | None = None  # the previous task's fp32 student

    def resume(self, task_dir: Path) -> None:
        from ..models.checkpoint import load_checkpoint

        path = task_dir / self.state_files[0]
        self.student = load_checkpoint(path) if path.exists() else None

    def deploy(self, working: nn.Module, ctx: DeployContext) -> Deployed:
        from ..export.artifact import artifact_breakdown, save_artifact
        from ..export.compressed import describe
        from ..models.checkpoint import save_checkpoint

        config, task, device = self.config, ctx.task, ctx.device
        seed = ctx.seed + task.index
        teacher = copy.deepcopy(working).eval().requires_grad_(False)
        data = deploy_data(task, ctx.kept, ctx.memory, config.balance, seed)
        val = ctx.seen_val()
        limit = budget_bytes(config.budget, working)
        # the .ccl says how to use it, as the ONNX does (class names, input, normalization, version)
        d = describe(ctx.meta, ctx.input_shape)
        meta = {**ctx.meta, **{k: d[k] for k in ("class_names", "input", "normalization", "compactcl_version")}}
        report: dict[str, Any] = {"budget_bytes": limit, "steps": []}
        model = copy.deepcopy(working)
        grid = None  # the last quantize step's config: later prune/distill steps end on it again
        rungs: list[dict[str, Any]] = []
        measurer = self._measurer(ctx, data, meta) if config.measure else None
        if measurer is not None:
            rungs.append(measurer.row(1, "working", model, False, 0.0, "the working model (fp32)"))
        steps = config.step_list()
        for i, (kind, step) in enumerate(steps, 1):
            t0 = time.perf_counter()
            ctx.log(f"task {task.index}: deploy step {i}/{len(steps)}: {_doing(kind, step)} ...")
            if kind == "distill":
                model = _distill(teacher, step, data, self.student, device, seed)
                self.student = copy.deepcopy(model)
                info = {"val_accuracy": accuracy(model, val)}
                if grid is not None and grid.layer_bits:  # per-layer bits were chosen for another model
                    grid = dataclasses.replace(grid, layer_bits={})
            elif kind == "prune":
                if grid is not None:  # prune + fine-tune the float weights; the grid is fitted again below
                    _drop_grid_(model)
                model, info = _prune(model, teacher, step, data, val, ctx.input_shape, config, device, seed)
            elif kind == "quantize":  # sized as the files it ships as, header and metadata included
                model, info, grid = _quantize(model, teacher, step, data, val, limit, config, device, seed,
                                              _size_of(ctx, meta, self.export_onnx))
            else:  # measure: a row, the model unchanged
                info = {}
            if grid is not None and kind in ("prune", "distill"):
                from ..compress.quantize import quantize_

                quantize_(model, grid)  # post-training, no QAT: the grid of the quantize step before
                info.update(requantized=True, val_accuracy=accuracy(model, val))
            report["steps"].append({kind: info})
            ctx.log(f"task {task.index}: deploy step {i}/{len(steps)}: {kind} done in "
                    f"{time.perf_counter() - t0:.1f} s" + (f" (val accuracy {info['val_accuracy']:.4f})"
                                                            if "val_accuracy" in info else ""))
            if measurer is not None:
                rungs.append(measurer.row(len(rungs) + 1, kind, model, _is_quantized(model),
                                          time.perf_counter() - t0, _describe(kind, step, grid)))
        if rungs:
            for r in rungs:  # against the first rung: the working model
                r["size_ratio"] = rungs[0]["bytes"] / r["bytes"]
                r["accuracy_drop"] = rungs[0]["accuracy"] - r["accuracy"]
            report["rungs"] = rungs
        model.eval()
        path = ctx.task_dir / self.files[0]
        nbytes = save_artifact(model, path, meta)
        report.update({"bytes": nbytes, "breakdown": artifact_breakdown(model, meta),  # codes/tables/header
                       "val_accuracy": accuracy(model, val),
                       "teacher_val_accuracy": accuracy(teacher, val)})
        report["warnings"] = quality_warnings(ctx, report["val_accuracy"], report["teacher_val_accuracy"],
                                              working.num_classes, config.warn_drop)
        if limit is not None:
            report["within_budget"] = nbytes <= limit
            if nbytes > limit:
                raise BudgetNotMet(f"task {task.index}: the deployed artifact is {nbytes} bytes, {nbytes - limit} "
                                     f"({nbytes / limit - 1:.0%}) over the budget of {limit} bytes even after "
                                     "compression; use a smaller student, a higher prune ratio, fewer bits, or "
                                     "raise compress.budget")
        if self.student is not None:
            save_checkpoint(self.student, ctx.task_dir / self.state_files[0], ctx.meta)
        if self.export_onnx or config.budget.latency_ms:
            t0 = time.perf_counter()
            ctx.log(f"task {task.index}: export: deployed.onnx{' + deployed.int8.onnx' if self.int8 else ''}, "
                    "checked against deployed.ccl, latency in ONNX Runtime ...")
            report["onnx"] = _export(model, ctx, self.int8, config.budget, limit, self.strict)
            ctx.log(f"task {task.index}: export done in {time.perf_counter() - t0:.1f} s")
            if config.budget.latency_ms and report["onnx"]["latency_ms"] > config.budget.latency_ms:
                b = config.budget
                raise BudgetNotMet(f"task {task.index}: deployed latency {report['onnx']['latency_ms']:.3f} ms "
                                     f"(ONNX Runtime, batch {b.latency_batch}, {b.latency_threads} thread(s)) "
                                     f"exceeds compress.budget.latency_ms={b.latency_ms}; use a smaller student, "
                                     "prune more (a prune step with round_to: 8; its `tried` list in metrics.json "
                                     "shows each ratio's latency) or raise the latency budget")
        return Deployed(model, path, report)

    def _measurer(self, ctx: DeployContext, data: TensorData, meta: dict[str, Any]) -> "Measurer":
        from ..export.int8 import calibration_batch
        from .measure import Measurer

        return Measurer(ctx.task_dir, ctx.input_shape, ctx.seen_test(), ctx.seen_val(), calibration_batch(data), meta,
                        log=lambda s: None)


def _is_quantized(model: nn.Module) -> bool:
    from ..compress.quantize.state import quantized_layers

    return bool(quantized_layers(model))


def _drop_grid_(model: nn.Module) -> None:
    """Forget the quantization grids (the weights keep their values): pruning slices channels the
    per-channel grids describe, and the grid is fitted again after the step."""
    from ..compress.quantize.state import set_weight_quant

    for m in model.modules():
        set_weight_quant(m, None)


def _doing(kind: str, step: Any) -> str:
    """What a step is about to do, in words, for the run's log."""
    if kind == "distill":
        return f"distill into {step.student} ({step.epochs} epochs)"
    if kind == "prune":
        ratio = "ratio search" if step.ratio == "auto" else f"ratio {step.ratio}"
        return f"prune {step.method}, {ratio}, fine-tune {step.finetune_epochs} epochs"
    if kind == "quantize":
        bits = "bit search" if step.bits == "auto" else f"{step.bits}-bit"
        return f"quantize {step.method}, {bits}" + (f", QAT {step.qat_epochs} epochs" if step.qat_epochs else "")
    return "measure"


def _describe(kind: str, step: Any, grid: Any) -> str:
    """One line for a rung: the step's options that matter, and the grid it ends on."""
    if kind == "measure":
        return "measured, unchanged"
    keys = {"distill": ("student", "options", "epochs", "temperature", "alpha"),
            "prune": ("method", "ratio", "round_to", "finetune_epochs"),
            "quantize": ("method", "bits", "qat_epochs")}[kind]
    text = ", ".join(f"{k}={getattr(step, k)}" for k in keys if getattr(step, k) not in (None, {}))
    if grid is not None and kind != "quantize":
        text += f"; then {grid.method} {grid.bits}-bit (PTQ)"
    return f"{kind}: {text}"


def _distill(teacher: nn.Module, step: DistillStep, data: TensorData, previous: nn.Module | None, device: str,
             seed: int) -> nn.Module:
    from ..compress.distill import DistillConfig, create_student, distill

    n = teacher.num_classes
    prev = previous if step.reuse else None
    if prev is not None and prev.num_classes < n:
        student = copy.deepcopy(prev).to(device)
        student.grow(n - prev.num_classes)
    else:
        torch.manual_seed(seed)
        student = create_student(step.student, teacher, n, **step.options)
    cfg = DistillConfig(temperature=step.temperature, alpha=step.alpha, epochs=step.epochs, lr=step.lr,
                        batch_size=step.batch_size, device=device, seed=seed)
    return distill(teacher, student.to(device), data, cfg)


def _prune(model: nn.Module, teacher: nn.Module, step: PruneStep, data: TensorData, val: TensorData,
           input_shape: tuple[int, ...], config: CompressConfig, device: str, seed: int) -> tuple[nn.Module, dict]:
    from ..compress.prune import PruneData, config_for, finalize_, prune_

    def one(ratio: float) -> nn.Module:
        m = copy.deepcopy(model)
        if ratio <= 0:
            return m
        kwargs = {"round_to": step.round_to} if step.round_to else {}  # a method without channels refuses it
        tc = TrainConfig(epochs=step.finetune_epochs or 1, lr=step.lr, device=device, seed=seed)
        prune_(m, config_for(step.method, ratio, **kwargs),
               PruneData(input_shape=tuple(input_shape), train=data, val=val, train_cfg=tc))
        if step.finetune_epochs:
            train(m, data, teacher_kd_loss(teacher, step.temperature, step.alpha), tc, desc="prune finetune")
        return finalize_(m)

    if step.ratio != "auto":
        m = one(float(step.ratio))
        return m, {"ratio": float(step.ratio), "val_accuracy": accuracy(m, val)}
    base = accuracy(model, val)
    tried = []
    for ratio in sorted(step.choices, reverse=True):
        m = one(ratio)
        acc = accuracy(m, val)
        ok = base - acc <= config.tolerance
        lat = _latency(m, input_shape, config.budget) if config.budget.latency_ms else None
        if lat is not None:
            ok = ok and lat <= config.budget.latency_ms
        tried.append({"ratio": ratio, "val_accuracy": acc, "latency_ms": lat, "ok": ok})
        if ok:
            return m, {"ratio": ratio, "val_accuracy": acc, "tried": tried}
    return model, {"ratio": 0.0, "val_accuracy": base, "tried": tried, "note": "no ratio met the tolerance"}


def _size_of(ctx: DeployContext, meta: dict[str, Any], onnx: bool) -> Callable[[nn.Module], int]:
    """Bytes a quantized model ships as: its ``.ccl`` (with this task's header) and, when the run
    exports one, its compressed ONNX — both must fit the budget, so the search sees the larger."""
    from ..export.artifact import artifact_nbytes

    if not onnx:
        return lambda m: artifact_nbytes(m, meta)
    return lambda m: max(artifact_nbytes(m, meta), _onnx_nbytes(m, ctx))


def _quantize(model: nn.Module, teacher: nn.Module, step: QuantizeStep, data: TensorData, val: TensorData,
              limit: int | None, config: CompressConfig, device: str, seed: int,
              size_of: Callable[[nn.Module], int]) -> tuple[nn.Module, dict, Any]:
    from ..compress.quantize import QATConfig, config_for, get_method, qat_, search_layer_bits, search_model_bits

    method = get_method(step.method)
    extra = method.accepted({"per_channel": step.per_channel})  # e.g. k-means has one codebook per layer
    info: dict[str, Any] = {"method": step.method}
    if step.bits == "auto":
        choices = tuple(b for b in step.choices if b >= method.min_bits)
        if limit is not None:
            res = search_layer_bits(model, step.method, val, tolerance=None, budget_bytes=limit, choices=choices,
                                    size_of=size_of, **extra)
        else:
            res = search_model_bits(model, step.method, val, tolerance=config.tolerance, choices=choices,
                                    size_of=size_of, **extra)
        qcfg = res.config
        info.update({"bits": res.bits, "search_met": res.met, "search_bytes": res.bytes})
    else:
        qcfg = config_for(step.method, int(step.bits), **extra)
        info["bits"] = int(step.bits)
    if step.qat_epochs:
        qat_(model, qcfg, data, QATConfig(epochs=step.qat_epochs, lr=step.lr, seed=seed, device=device),
             loss_fn=teacher_kd_loss(teacher, step.temperature, step.alpha))
    else:
        from ..compress.quantize import quantize_

        quantize_(model, qcfg)
    info["val_accuracy"] = accuracy(model, val)
    return model, info, qcfg


def _latency(model: nn.Module, input_shape: tuple[int, ...], budget: Budget) -> float:
    import tempfile

    from ..export.onnx import export_onnx
    from ..metrics.latency import onnx_latency_ms

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.onnx"
        export_onnx(copy.deepcopy(model).cpu(), path, input_shape)
        return onnx_latency_ms(path, input_shape, budget.latency_batch, budget.latency_threads)


def _onnx_nbytes(model: nn.Module, ctx: DeployContext) -> int:
    """Size of the compressed, self-describing ONNX of ``model`` (written to a temporary folder)."""
    import tempfile

    from ..export.compressed import deploy_metadata, export_compressed_onnx

    meta = deploy_metadata(ctx.meta, ctx.input_shape, None)
    meta["source_sha256"] = "0" * 64  # same length as the real digest
    with tempfile.TemporaryDirectory() as d:
        return export_compressed_onnx(copy.deepcopy(model).cpu(), Path(d) / "m.onnx", ctx.input_shape, meta)


def _export(model: nn.Module, ctx: DeployContext, int8: bool, budget: Budget, limit: int | None,
            strict: bool = False) -> dict[str, Any]:
    """deployed.onnx — the weight codes decoded in the graph, self-describing — checked against
    ``compactcl.load(deployed.ccl)`` on the test split of the tasks seen (a check, never a choice),
    and, with ``int8``, deployed.int8.onnx (QDQ from the fp32 graph); latency in ONNX Runtime.
    A failed check is recorded and warned about; ``strict`` makes it stop the run."""
    import warnings

    from ..export.artifact import load_artifact
    from ..export.compressed import check_against, deploy_metadata, export_compressed_onnx
    from ..export.onnx import export_checked
    from ..metrics.latency import onnx_latency_ms

    input_shape, folder = ctx.input_shape, ctx.task_dir
    test = ctx.seen_test()
    cpu_model = copy.deepcopy(model).cpu().eval()
    ccl, onnx_path = folder / "deployed.ccl", folder / "deployed.onnx"
    props = deploy_metadata(ctx.meta, input_shape, ccl)
    nbytes = export_compressed_onnx(copy.deepcopy(cpu_model), onnx_path, input_shape, props)
    # the reference is the file the budget counts, read back as a user would
    check = check_against(onnx_path, load_artifact(ccl), test, test.y)
    # beside the .ccl: a run folder stays valid when moved (and resumes exactly)
    out: dict[str, Any] = {"format": "onnx-codes", "path": "deployed.onnx", "bytes": nbytes,
                           "within_budget": None if limit is None else nbytes <= limit,
                           "class_names": json.loads(props["class_names"]), **check,
                           "latency_ms": onnx_latency_ms(onnx_path, input_shape, budget.latency_batch,
                                                         budget.latency_threads)}
    problems = []
    if check["agreement"] < 1.0:
        problems.append(f"deployed.onnx agrees with deployed.ccl on {check['agreement']:.2%} of the test images "
                        f"(max |dlogit| {check['max_abs_logit_diff']:.2e})")
    if limit is not None and nbytes > limit:
        problems.append(f"deployed.onnx is {nbytes} bytes, over the budget of {limit}")
    if int8:
        seen = TensorData.cat([t.train for t in ctx.seen])
        calib = seen.batch(torch.randperm(len(seen), generator=torch.Generator().manual_seed(0))[:512])
        try:
            q = export_checked(cpu_model, folder / "deployed.int8.onnx", input_shape, test, test.y, int8=True,
                               calib_x=calib, latency=False, max_int8_drop=1.0)
        except CompactCLError as e:
            problems.append(str(e))
        else:
            out["int8"] = {"bytes": q["bytes"], "accuracy": q["accuracy"], "agreement": q["agreement"],
                           "torch_accuracy": q["torch_accuracy"],
                           "latency_ms": onnx_latency_ms(folder / "deployed.int8.onnx", input_shape,
                                                         budget.latency_batch, budget.latency_threads)}
            drop = q["torch_accuracy"] - q["accuracy"]
            if drop > 0.01:
                problems.append(f"ONNX int8 accuracy {q['accuracy']:.4f} is {drop:.4f} below PyTorch "
                                f"({q['torch_accuracy']:.4f}), more than 0.01")
    if problems:
        out["problems"] = problems
        msg = f"task {ctx.task.index}: export check: " + "; ".join(problems)
        if strict:
            raise CompactCLError(msg + " (export.strict is on; set export.strict=false to record and go on)")
        warnings.warn(msg + " — recorded in metrics.json; the run goes on (export.strict=true stops it)",
                      stacklevel=2)
    return out
