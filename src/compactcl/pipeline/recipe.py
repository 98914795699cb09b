"""Recipes: YAML -> typed, validated config. Unknown keys and wrong types fail with the key's name.

A recipe is a file path or a built-in name (``compactcl list``); ``--set a.b=value`` overrides
any key (the value is parsed as YAML, so ``--set learner.epochs=3`` is an int).
"""

from __future__ import annotations

import copy
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator, model_validator

from ..errors import CompactCLError
from .config import CompressConfig

__all__ = ["Recipe", "load_recipe", "validate_recipe", "list_recipes", "apply_overrides", "set_path", "RECIPE_VERSION"]

RECIPE_VERSION = 1
MAX_SEED = 2**31 - 1
MAX_RECIPE_BYTES = 2**20
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:[0-9]{1,3})?")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    dataset: str = "digits"
    root: str | None = None
    tasks: int = Field(5, ge=1, le=100_000)
    classes_per_task: int | None = Field(None, ge=1, le=10_000_000)
    first_task_classes: int | None = Field(None, ge=1, le=10_000_000)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    class_order: list[int] | None = None
    # false: a stream that covers fewer classes than the dataset holds learns the first ones of the order
    # (true refuses it, so that e.g. --set data.tasks=3 on 5 x 2 never drops classes silently)
    all_classes: bool = True
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

    if section is not None and not isinstance(section, dict) and not hasattr(section, "name"):
        raise ValueError(f"the learner section must be a mapping (name:, epochs: ...), got {type(section).__name__}")
    return learner_options(section if section is not None else {})


class MemoryConfig(_Strict):
    size: int = Field(200, ge=0)  # exemplars in all (ignored when `bytes` is set)
    bytes: int | None = Field(None, ge=0)  # the exemplar budget in bytes of stored images: size = bytes // image bytes
    selection: Literal["herding", "random"] = "herding"


class LogConfig(_Strict):
    tensorboard: bool = False  # event files in RUN/tensorboard/ (pip install 'compactcl[tensorboard]')


class ExportConfig(_Strict):
    onnx: bool = False  # deployed.onnx: the weight codes decoded in the graph, self-describing
    int8: bool = False  # also deployed.int8.onnx (QDQ from the fp32 graph)
    strict: bool = False  # a failed export check (agreement, int8 drop, ONNX over budget) stops the run


class Recipe(_Strict):
    version: int = RECIPE_VERSION
    name: str = "custom"  # a plain name: the default run folder is runs/<name>
    seed: int = Field(0, ge=0, le=MAX_SEED)  # seeds torch, numpy and scikit-learn (the last takes < 2**32)
    device: str = "auto"  # auto, cpu, cuda, cuda:1 ...
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    learner: SerializeAsAny[Any] = Field(default_factory=lambda: _learner_section({}))
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    compress: CompressConfig | None = None  # compression steps and budget; none = deployed is working
    export: ExportConfig = Field(default_factory=ExportConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        # the name becomes a folder (runs/<name>): no separators, no '..', nothing hidden or odd
        if not _NAME.fullmatch(v) or v in (".", ".."):
            raise ValueError(f"name {v!r} must be a plain name (letters, digits, '.', '_', '-', at most 100, not "
                             "starting with '.'): it names the run folder runs/<name>; use --out for a path")
        return v

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        if not _DEVICE.fullmatch(v):
            raise ValueError(f"device {v!r} is not one compactcl runs on; use auto, cpu, cuda, cuda:N or mps")
        return v

    @field_validator("learner", mode="before")
    @classmethod
    def _learner_options(cls, v: Any) -> Any:
        return _learner_section(v)

    @model_validator(mode="after")
    def _learner_takes_backbone(self) -> "Recipe":
        from ..learners import learner_class

        learner_class(self.learner.name).check_backbone(self.model.backbone)
        return self

    def set(self, key: str, value: Any) -> "Recipe":
        """A copy with ``key`` (``learner.epochs``, ``compress.steps[0].distill.epochs``) set to ``value``,
        validated as a whole (errors name the key, as in a file).

        >>> load_recipe("default").set("compress.steps[0].distill.epochs", 5).compress.steps[0]["distill"].epochs
        5
        """
        raw = self.model_dump(mode="json")
        set_path(raw, key, value)
        return validate_recipe(raw, f"(after setting {key})")

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
            lines.append(f"{key}: {msg}" + (f" (got {e.get('input')!r})" if e["loc"] else ""))
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
        source = str(path)
        if path.stat().st_size > MAX_RECIPE_BYTES:
            raise CompactCLError(f"recipe {source} is over {MAX_RECIPE_BYTES >> 20} MiB; a recipe is a few lines")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise CompactCLError(f"recipe {source} is not text (UTF-8 YAML)") from None
    elif recipe in list_recipes():
        text, source = (resources.files("compactcl") / "recipes" / f"{recipe}.yaml").read_text(), f"built-in {recipe!r}"
    else:
        raise CompactCLError(f"unknown recipe {recipe!r}: not a file and not built in; "
                             f"built-in recipes: {', '.join(list_recipes())}")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CompactCLError(f"recipe {source} is not valid YAML: {e}") from e
    except RecursionError:
        raise CompactCLError(f"recipe {source} nests too deep for its YAML to be read; a recipe needs a few "
                             f"levels (at most {MAX_RECIPE_DEPTH})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise CompactCLError(f"recipe {source} must be a mapping of keys (data:, model:, learner: ...), "
                             f"got {type(raw).__name__}")
    return raw, source


_PATH_PART = re.compile(r"([^.\[\]]+)((?:\[\d+\])*)")


def _path(key: str) -> list[str | int]:
    """``compress.steps[0].distill.epochs`` -> ["compress", "steps", 0, "distill", "epochs"]."""
    parts: list[str | int] = []
    for piece in key.strip().split("."):
        m = _PATH_PART.fullmatch(piece)
        if m is None:
            raise CompactCLError(f"--set {key}: {piece!r} is not a key; write keys like a.b[0].c")
        parts.append(m.group(1))
        parts.extend(int(i) for i in re.findall(r"\d+", m.group(2)))
    return parts


def set_path(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key`` (``a.b[0].c``) in the nested dict ``raw`` in place; sections are created, list
    items must exist (``steps[1]`` of a one-step list is an error naming the length)."""
    parts = _path(key)
    node: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = key if last else ".".join(str(p) for p in parts[: depth + 1])
        if isinstance(part, int):
            if not isinstance(node, list):
                raise CompactCLError(f"--set {key}: {where!r} indexes something that is not a list")
            if not 0 <= part < len(node):
                raise CompactCLError(f"--set {key}: index {part} is out of range; the list has {len(node)} items")
        elif not isinstance(node, dict):
            raise CompactCLError(f"--set {key}: {str(parts[depth - 1])!r} is a value, not a section")
        elif not last and node.get(part) is None:
            node[part] = {}
        if last:
            node[part] = value
        else:
            node = node[part]


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` strings (``compress.steps[0].distill.epochs=5`` indexes lists); values
    are parsed as YAML scalars/lists."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CompactCLError(f"--set {item!r}: expected key=value, e.g. --set learner.epochs=3")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise CompactCLError(f"--set {key}: cannot parse value {value!r}: {e}") from e
        except RecursionError:
            raise CompactCLError(f"--set {key}: the value nests too deep") from None
        set_path(raw, key, parsed)
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


MAX_RECIPE_DEPTH = 32  # sections nest 3-4 deep; pydantic refuses to serialize past ~250 (a traceback)


def _depth_over(obj: Any, limit: int) -> bool:
    """True when ``obj`` nests dicts/lists more than ``limit`` deep (iterative: no recursion)."""
    stack, seen = [(obj, 1)], set()
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, (dict, list)) or id(node) in seen:
            continue
        if depth > limit:
            return True
        seen.add(id(node))
        stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return False


def validate_recipe(raw: dict[str, Any], source: str = "(dict)") -> Recipe:
    """A recipe from a plain dict (as YAML gives it), validated; errors name the key."""
    if not isinstance(raw, dict):
        raise CompactCLError(f"recipe {source} must be a mapping of keys (data:, model:, learner: ...), "
                             f"got {type(raw).__name__}")
    if _expanded_size(raw, {}, MAX_RECIPE_NODES) > MAX_RECIPE_NODES:
        raise CompactCLError(f"recipe {source} holds more than {MAX_RECIPE_NODES:,} values once its YAML aliases "
                             "(*name) are expanded; write the options out instead of nesting aliases")
    if _depth_over(raw, MAX_RECIPE_DEPTH):
        raise CompactCLError(f"recipe {source} nests more than {MAX_RECIPE_DEPTH} levels deep; a recipe's sections "
                             "need a few (data: options: key: value)")
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise CompactCLError(_format_errors(e, source, raw)) from None


def load_recipe(recipe: str | None = None, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe (path, built-in name, or None for the default), apply overrides, validate."""
    raw, source = _read_source(recipe)
    raw = apply_overrides(raw, overrides or [])
    if "name" not in raw and recipe is not None:  # a file's stem, made plain (see Recipe._plain_name)
        raw["name"] = re.sub(r"[^A-Za-z0-9._-]", "-", Path(recipe).stem).lstrip(".")[:100] or "custom"
    return validate_recipe(raw, source)
