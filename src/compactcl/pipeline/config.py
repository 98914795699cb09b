"""The recipe's compression section as typed, torch-free configs: ``compress:`` (budget + steps).
The code that runs it is in :mod:`compactcl.pipeline.compress` (a deployer); registries (quantization methods, pruning importances)
are consulted lazily, inside validators.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["Budget", "DistillStep", "PruneStep", "QuantizeStep", "MeasureStep", "STEP_TYPES", "CompressConfig"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Budget(_Strict):
    bytes: int | None = Field(None, gt=0)  # packed artifact bytes on disk
    fraction_of_backbone: float | None = Field(None, gt=0)  # of ONE fp32 backbone + head of the working model
    latency_ms: float | None = Field(None, gt=0)  # ONNX Runtime, batch latency_batch, latency_threads threads
    latency_batch: int = Field(1, ge=1)
    latency_threads: int = Field(1, ge=1)


class DistillStep(_Strict):
    student: str = "same"  # a student name (compactcl.compress.distill.list_students) or a backbone
    options: dict[str, Any] = Field(default_factory=dict)  # student backbone options, e.g. width
    epochs: int = Field(30, ge=1)  # task data + memory is small: a short schedule under-trains the student
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1)
    lr: float = Field(0.05, gt=0)
    batch_size: int = Field(32, ge=1)
    reuse: bool = True  # start from the previous task's student (head grown) — FOSTER-style continuity


class PruneStep(_Strict):
    method: str = "structured"  # a registered pruning method: compactcl.compress.prune.list_methods()
    ratio: float | Literal["auto"] = 0.3
    round_to: int | None = Field(None, ge=1)
    # The deploy data are exemplars + a capped share of the new task (a few hundred images on digits):
    # 2 epochs left a half-pruned student at 0.71 validation accuracy, 10 brought it back to 0.98.
    finetune_epochs: int = Field(10, ge=0)
    lr: float = Field(0.01, gt=0)
    temperature: float = Field(4.0, gt=0)  # the fine-tune's KD from the working model
    alpha: float = Field(0.5, ge=0, le=1)
    choices: list[float] = Field(default_factory=lambda: [0.7, 0.5, 0.3, 0.1])  # tried by ratio: auto

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        from ..compress.prune import list_methods

        if v not in list_methods():
            raise ValueError(f"prune method {v!r} unknown; choose one of {', '.join(list_methods())}")
        return v

    @model_validator(mode="after")
    def _ratio_range(self) -> "PruneStep":
        if self.ratio != "auto" and not 0 <= float(self.ratio) < 1:
            raise ValueError(f"prune ratio must be in [0, 1) or 'auto', got {self.ratio}")
        if self.ratio == "auto" and (not self.choices or not all(0 <= c < 1 for c in self.choices)):
            raise ValueError(f"ratio: auto tries choices in [0, 1), got {self.choices}")
        if self.round_to is not None:  # the method's own config says whether it has channels to round
            from ..compress.prune import config_for
            from ..errors import CompactCLError

            try:
                config_for(self.method, 0.5, round_to=self.round_to)
            except CompactCLError as e:
                raise ValueError(str(e)) from None
        return self


class QuantizeStep(_Strict):
    method: str = "linear"  # a registered quantization method: compactcl.compress.quantize.list_methods()
    bits: int | Literal["auto"] = 8
    per_channel: bool = True
    qat_epochs: int = Field(2, ge=0)
    lr: float = Field(1e-3, gt=0)
    temperature: float = Field(4.0, gt=0)  # QAT's KD from the working model
    alpha: float = Field(0.5, ge=0, le=1)
    choices: list[int] = Field(default_factory=lambda: [8, 6, 5, 4, 3, 2])

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        from ..compress.quantize import list_methods

        if v not in list_methods():
            raise ValueError(f"quantize method {v!r} unknown; choose one of {', '.join(list_methods())}")
        return v

    @model_validator(mode="after")
    def _bits_range(self) -> "QuantizeStep":
        if self.bits != "auto" and not 1 <= int(self.bits) <= 8:
            raise ValueError(f"quantize bits must be 1..8 or 'auto', got {self.bits}")
        if self.bits == "auto":  # the search needs something to try, on this method's grid
            from ..compress.quantize import get_method

            floor = get_method(self.method).min_bits
            if not any(floor <= b <= 8 for b in self.choices):
                raise ValueError(f"bits: auto needs choices in {floor}..8 for method {self.method!r}, "
                                 f"got {self.choices}")
        return self


class MeasureStep(_Strict):
    """Records a measured row (with ``compress.measure``) and leaves the model as it is."""


STEP_TYPES: dict[str, type[_Strict]] = {"distill": DistillStep, "prune": PruneStep, "quantize": QuantizeStep,
                                        "measure": MeasureStep}


class CompressConfig(_Strict):
    budget: Budget = Field(default_factory=Budget)
    tolerance: float = Field(0.01, ge=0, le=1)
    # Class balance of the data the deployed model is trained on (distill, prune fine-tune, QAT): the
    # exemplars of every class seen, plus at most `balance` x (exemplars per class) images of each new
    # class. Without it the new task's data swamps the old classes and the student forgets them.
    # null: the task's data + the memory, unbalanced.
    balance: float | None = Field(2.0, gt=0)
    # After each task: warn (console, metrics.json, report) when the deployed model is more than this
    # below the working model on validation, or near chance.
    warn_drop: float = Field(0.10, ge=0, le=1)
    # Measure the model after every step (and the working model first): one row per rung in the task
    # row's deploy.rungs — .ccl bytes, test accuracy of the model read back, params/MACs, ORT latency.
    measure: bool = False
    # Steps run in order. A quantize step may come before others: later prune/distill steps end by
    # quantizing again with its grid (post-training), so each rung keeps the compression before it.
    steps: list[dict[str, Any]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _parse_steps(self) -> "CompressConfig":
        parsed = []
        for i, item in enumerate(self.steps):
            if not isinstance(item, dict) or len(item) != 1:
                raise ValueError(f"steps[{i}] must be a one-key mapping like {{prune: {{...}}}}; "
                                 f"allowed steps: {', '.join(STEP_TYPES)}")
            (kind, opts), = item.items()
            if kind not in STEP_TYPES:
                raise ValueError(f"steps[{i}]: unknown step {kind!r}; allowed steps: {', '.join(STEP_TYPES)}")
            cfg = opts if isinstance(opts, BaseModel) else STEP_TYPES[kind].model_validate(opts or {})
            parsed.append({kind: cfg})
        object.__setattr__(self, "steps", parsed)
        return self

    def step_list(self) -> list[tuple[str, Any]]:
        return [next(iter(s.items())) for s in self.steps]
