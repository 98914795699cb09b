"""Recipes: YAML -> typed, validated config. Unknown keys and wrong types fail with the key's name.

A recipe is a file path or a built-in name (``compactcl list``); ``--set a.b=value`` overrides
any key (the value is parsed as YAML, so ``--set learner.epochs=3`` is an int).
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator, model_validator

from ..errors import CompactCLError
from .config import CompressConfig, LadderConfig

__all__ = ["Recipe", "load_recipe", "list_recipes", "apply_overrides", "RECIPE_VERSION"]

RECIPE_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    dataset: str = "digits"
    root: str | None = None
    tasks: int = Field(5, ge=1)
    classes_per_task: int | None = Field(None, ge=1)
    first_task_classes: int | None = Field(None, ge=1)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    class_order: list[int] | None = None
    options: dict[str, Any] = Field(default_factory=dict)  # loader options, e.g. image_size for folders

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        from ..data.datasets import list_datasets

        if v not in list_datasets():
            raise ValueError(f"unknown dataset {v!r}; allowed: {', '.join(list_datasets())}")
        return v


class ModelConfig(_Strict):
    backbone: str = "cnn"  # a built-in name, or timm:<name> / torchvision:<name> / module:<pkg.mod>:<factory>
    options: dict[str, Any] = Field(default_factory=dict)  # backbone keyword arguments, e.g. width
    head: str | None = None  # external models: the head's module name (default: timm's, or the last nn.Linear)
    pretrained: bool = False  # timm/torchvision pretrained weights (their download is the user's choice)
    weights: str | None = None  # safetensors / state-dict file of features to start from
    # A compactcl checkpoint or run folder whose model already knows the first task's classes:
    # task 0 is taken from it (measured, exemplars chosen, compressed), not trained.
    first_task_from: str | None = None

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, v: str) -> str:
        from ..models.backbones import list_backbones
        from ..models.external import is_external_name

        if v not in list_backbones() and not is_external_name(v):
            raise ValueError(f"unknown backbone {v!r}; allowed: {', '.join(list_backbones())}, "
                             "timm:<name>, torchvision:<name>, module:<package.module>:<factory>")
        return v


def _learner_section(section: Any) -> Any:
    """The ``learner:`` section, validated by the options of the learner it names (each learner
    file declares its own; see compactcl.learners.base.LearnerOptions)."""
    from ..learners import learner_options

    return learner_options(section if section is not None else {})


class MemoryConfig(_Strict):
    size: int = Field(200, ge=0)  # exemplars in all (ignored when `bytes` is set)
    bytes: int | None = Field(None, ge=0)  # the exemplar budget in bytes of stored images: size = bytes // image bytes
    selection: Literal["herding", "random"] = "herding"


class LogConfig(_Strict):
    tensorboard: bool = False  # event files in RUN/tensorboard/ (pip install 'compactcl[tensorboard]')


class ExportConfig(_Strict):
    onnx: bool = False
    int8: bool = False


class Recipe(_Strict):
    version: int = RECIPE_VERSION
    name: str = "custom"
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:1 ...
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    learner: SerializeAsAny[Any] = Field(default_factory=lambda: _learner_section({}))
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    compress: CompressConfig | None = None  # compression steps and budget; none = deployed is working
    ladder: LadderConfig | None = None  # the worked ladder (pipeline/ladder.py) instead of the task loop
    export: ExportConfig = Field(default_factory=ExportConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    @field_validator("learner", mode="before")
    @classmethod
    def _learner_options(cls, v: Any) -> Any:
        return _learner_section(v)

    @model_validator(mode="after")
    def _learner_takes_backbone(self) -> "Recipe":
        from ..learners import learner_class

        learner_class(self.learner.name).check_backbone(self.model.backbone)
        return self

    @field_validator("version")
    @classmethod
    def _supported(cls, v: int) -> int:
        if v != RECIPE_VERSION:
            raise ValueError(f"recipe version {v} is not supported; this compactcl reads version {RECIPE_VERSION}")
        return v


def _format_errors(err: ValidationError, source: str, raw: dict[str, Any] | None = None) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            parent = _section_fields(e["loc"][:-1], raw or {})
            lines.append(f"unknown key {key!r}; allowed here: {', '.join(parent)}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{key}: {msg} (got {e.get('input')!r})")
    return f"invalid recipe {source}:\n  " + "\n  ".join(lines)


def _section_fields(loc: tuple, raw: dict[str, Any]) -> list[str]:
    model: type[BaseModel] = Recipe
    if loc[:1] == ("learner",):  # the chosen learner's own options
        from ..learners import LEARNERS, LearnerOptions

        section = raw.get("learner") if isinstance(raw.get("learner"), dict) else {}
        chosen = LEARNERS.get(section.get("name", LearnerOptions.model_fields["name"].default))
        model, loc = (chosen.Options if chosen else LearnerOptions), loc[1:]
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            break
        model = ann
    return sorted(model.model_fields)


def list_recipes() -> list[str]:
    folder = resources.files("compactcl") / "recipes"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_source(recipe: str | None) -> tuple[dict[str, Any], str]:
    if recipe is None:
        recipe = "default"
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise CompactCLError(f"recipe file {path} not found; built-in recipes: {', '.join(list_recipes())}")
        text, source = path.read_text(), str(path)
    elif recipe in list_recipes():
        text, source = (resources.files("compactcl") / "recipes" / f"{recipe}.yaml").read_text(), f"built-in {recipe!r}"
    else:
        raise CompactCLError(f"unknown recipe {recipe!r}: not a file and not built in; "
                             f"built-in recipes: {', '.join(list_recipes())}")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CompactCLError(f"recipe {source} is not valid YAML: {e}") from e
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise CompactCLError(f"recipe {source} must be a mapping of keys (data:, model:, learner: ...), "
                             f"got {type(raw).__name__}")
    return raw, source


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` strings; values are parsed as YAML scalars/lists."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CompactCLError(f"--set {item!r}: expected key=value, e.g. --set learner.epochs=3")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise CompactCLError(f"--set {key}: cannot parse value {value!r}: {e}") from e
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise CompactCLError(f"--set {key}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = parsed
    return raw


MAX_RECIPE_NODES = 100_000  # far above any real recipe; YAML aliases can make a few lines expand to billions


def _expanded_size(obj: Any, memo: dict[int, int], limit: int) -> int:
    """Number of values ``obj`` holds once YAML aliases are expanded, computed without expanding
    (a shared sub-tree is sized once); stops counting past ``limit``."""
    if not isinstance(obj, (dict, list)):
        return 1
    if id(obj) in memo:
        return memo[id(obj)]
    memo[id(obj)] = limit + 1  # until counted: an alias to an enclosing node (a cycle) is unbounded
    total = 1
    for child in (obj.values() if isinstance(obj, dict) else obj):
        total += _expanded_size(child, memo, limit)
        if total > limit:
            break
    memo[id(obj)] = total
    return total


def load_recipe(recipe: str | None = None, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe (path, built-in name, or None for the default), apply overrides, validate."""
    raw, source = _read_source(recipe)
    raw = apply_overrides(raw, overrides or [])
    if _expanded_size(raw, {}, MAX_RECIPE_NODES) > MAX_RECIPE_NODES:
        raise CompactCLError(f"recipe {source} holds more than {MAX_RECIPE_NODES:,} values once its YAML aliases "
                             "(*name) are expanded; write the options out instead of nesting aliases")
    if "name" not in raw and recipe is not None:
        raw["name"] = Path(recipe).stem
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise CompactCLError(_format_errors(e, source, raw)) from None
