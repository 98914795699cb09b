"""README promises about a run with a ``compress:`` section, checked on one tiny run where possible.

Each test names the README line it backs (the full table: ``notes/promises.md``). The recipes are
the tests' own tiny ones (``tests/data``): 3 tasks x 2 digits, width-4 CNN, one epoch.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import pytest
import yaml

from compactcl import CompactCLError
from compactcl.engine import accuracy
from compactcl.export.load import load
from compactcl.export.update import apply_update, make_update
from compactcl.metrics.model_stats import count_flops, count_params
from compactcl.models import load_checkpoint
from compactcl.pipeline.recipe import load_recipe
from compactcl.pipeline.run import run_recipe
from compactcl.pipeline.stream import build_stream

DATA = Path(__file__).parent / "data"
COMPRESSED = str(DATA / "tiny-compressed.yaml")  # DER; distill (carried student), prune auto, kmeans bits auto + QAT
SHAPE = (1, 8, 8)


def _run(recipe: str | None, out: Path, overrides: list[str] = ()) -> dict:
    return run_recipe(load_recipe(recipe, list(overrides)), out, progress=False, log=lambda s: None)


def _files(out: Path) -> dict[str, bytes]:
    """Every file a run wrote but metrics.json and the report (they hold timings) and the run marker and
    lock (a run id, a pid)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in ("metrics.json", "report.html", ".compactcl-run", ".compactcl-run.lock")}


def _timeless(v):
    """A metrics document without what a clock measures (seconds, latencies)."""
    if isinstance(v, dict):
        return {k: _timeless(x) for k, x in v.items() if "seconds" not in k and "latency" not in k}
    return [_timeless(x) for x in v] if isinstance(v, list) else v


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    out = tmp_path_factory.mktemp("compressed") / "run"
    t0 = time.perf_counter()
    doc = _run(COMPRESSED, out)
    return out, doc, time.perf_counter() - t0


# --- Reliability: "same recipe + seed on the same machine -> identical metrics and checkpoints" ------------

def test_same_recipe_and_seed_give_identical_compressed_runs(compressed, tmp_path):
    out, doc, _ = compressed
    again = _run(COMPRESSED, tmp_path / "again")
    assert _timeless(again) == _timeless(doc)
    a, b = _files(out), _files(tmp_path / "again")
    assert a.keys() == b.keys() and "tasks/02/deployed.ccl" in a and "tasks/02/deployed.int8.onnx" in a
    assert [k for k in a if a[k] != b[k]] == []  # .ccl, ONNX, student, working, state: byte for byte


# --- "Compressing never changes the working model" ----------------------------------------------------------

def _assert_working_unchanged(plain_out: Path, plain: dict, packed_out: Path, packed: dict) -> None:
    assert [t["accuracy"]["working"] for t in packed["tasks"]] == [t["accuracy"]["working"] for t in plain["tasks"]]
    for t in range(len(plain["tasks"])):
        name = f"tasks/{t:02d}/working.safetensors"
        assert (packed_out / name).read_bytes() == (plain_out / name).read_bytes(), name
    assert plain["summary"]["working"] == packed["summary"]["working"]


@pytest.fixture(scope="module")
def der_plain(tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "run"
    return out, _run(COMPRESSED, out, ["compress=null"])


def test_der_distill_prune_auto_bits_auto_qat_leave_the_working_model_unchanged(compressed, der_plain):
    out, doc, _ = compressed
    _assert_working_unchanged(*der_plain, out, doc)


def test_compressing_the_working_model_itself_leaves_it_unchanged(der_plain, tmp_path):
    # No distill step: prune and quantize (bits: auto, QAT) act on a copy of the DER working model itself.
    steps = "compress.steps=[{prune: {method: structured, ratio: 0.25, finetune_epochs: 1}}, " \
            "{quantize: {method: kmeans, bits: auto, choices: [4, 2], qat_epochs: 1}}]"
    ovr = ["compress.budget.bytes=100000", steps, "export.onnx=false"]
    doc = _run(COMPRESSED, tmp_path / "direct", ovr)
    assert all(t["deploy"]["steps"][1]["quantize"]["method"] == "kmeans" for t in doc["tasks"])
    _assert_working_unchanged(*der_plain, tmp_path / "direct", doc)


# --- The run folder and metrics.json: every documented key, with its meaning --------------------------------

def _summary_by_hand(rows: list[list[float]]) -> dict[str, float]:
    """The four summary figures from their definitions (an independent reference, not compactcl.metrics)."""
    last, n = rows[-1], len(rows)
    return {"average_incremental_accuracy": sum(sum(r) / len(r) for r in rows) / n,
            "final_accuracy": sum(last) / n,
            "forgetting": sum(max(rows[i][j] for i in range(j, n - 1)) - last[j] for j in range(n - 1)) / (n - 1),
            "bwt": sum(last[j] - rows[j][j] for j in range(n - 1)) / (n - 1)}


def test_metrics_json_has_every_documented_key_with_its_meaning(compressed):
    out, doc, wall = compressed
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(doc))  # what the function returns is what the file holds
    assert doc["schema"] == "compactcl.metrics/1" and doc["status"] == "complete"
    recipe = load_recipe(COMPRESSED)
    assert doc["recipe"]["name"] == "tiny-compressed" and doc["recipe"]["compress"]["budget"]["bytes"] == 3500
    assert yaml.safe_load((out / "recipe.yaml").read_text())["compress"] == doc["recipe"]["compress"]
    assert sorted(doc["class_order"]) == list(range(10)) and "compress" in doc["deployed_note"]

    stream = build_stream(recipe)
    assert stream.class_order == doc["class_order"]
    previous = None
    for i, (row, task) in enumerate(zip(doc["tasks"], stream.tasks)):
        d = out / "tasks" / f"{i:02d}"
        assert row["classes"] == doc["class_order"][2 * i: 2 * i + 2] == task.classes
        working, deployed = load_checkpoint(d / "working.safetensors"), load(d / "deployed.ccl")
        seen = stream.tasks[: i + 1]
        # row i of the accuracy matrices: each seen task's test split, scored again from the files
        assert row["accuracy"]["working"] == [accuracy(working, t.test) for t in seen]
        assert row["accuracy"]["deployed"] == [accuracy(deployed, t.test) for t in seen]
        assert all(0 <= a <= 1 for a in row["accuracy"]["working"] + row["accuracy"]["deployed"])
        b = row["bytes"]
        assert row["params"] == count_params(working) and b["fp32"] == 4 * row["params"]
        assert b["working_file"] == (d / "working.safetensors").stat().st_size
        assert b["deployed"] == (d / "deployed.ccl").stat().st_size <= row["deploy"]["budget_bytes"]
        new = (d / "deployed.ccl").read_bytes()
        assert row["update_kind"] == ("full" if previous is None else "delta")  # the tiny files do compress
        kind, payload = make_update(previous, new)
        assert (row["update_kind"], b["update"]) == (kind, len(payload)) and apply_update(previous, kind, payload) == new
        assert b["update"] == (len(new) if previous is None else b["update"]) and b["update"] <= len(new)
        previous = new
        assert row["flops"] == count_flops(working, SHAPE)
        assert (row["deployed_params"], row["deployed_flops"]) == (count_params(deployed), count_flops(deployed, SHAPE))
        assert row["deployed_flops"] < row["flops"]  # distilled and pruned: fewer multiply-accumulates
        assert row["seconds"] > 0 and row["deploy_seconds"] > 0
    assert sum(t["seconds"] + t["deploy_seconds"] for t in doc["tasks"]) < wall
    for which in ("working", "deployed"):
        rows = [t["accuracy"][which] for t in doc["tasks"]]
        assert doc["summary"][which] == pytest.approx(_summary_by_hand(rows), abs=1e-12)
    # the run folder: final/ is the last finished task's working and deployed models
    for name in ("working.safetensors", "deployed.ccl", "deployed.onnx", "deployed.int8.onnx"):
        assert (out / "final" / name).read_bytes() == (out / "tasks" / "02" / name).read_bytes(), name
    assert all((out / "tasks" / f"{i:02d}" / "state.safetensors").exists() for i in range(3))


def test_without_compress_the_deployed_model_is_the_working_model(der_plain):
    out, doc = der_plain
    assert "deployed = working" in doc["deployed_note"]
    for t in doc["tasks"]:
        assert t["accuracy"]["deployed"] == t["accuracy"]["working"] and t["deployed_params"] == t["params"]


# --- compress.tolerance, ratio: auto and budget.latency_ms change what is chosen ---------------------------

# One 10-class task, a width-8 CNN (0.95 validation accuracy): removing 90% of its channels or 2-bit
# weights cost far more than 0.02 (measured: 0.85 and > 0.3), nothing costs more than 1.
AUTO = ["data.tasks=1", "data.classes_per_task=10", "model.options.width=8", "learner.epochs=2", "compress.budget={}",
        "compress.steps=[{prune: {method: structured, ratio: auto, choices: [0.9, 0.25], finetune_epochs: 1}}, "
        "{quantize: {method: linear, bits: auto, choices: [8, 2], qat_epochs: 0}}]", "export.onnx=false"]


def _choices(doc: dict) -> tuple[float, set[int], dict]:
    steps = doc["tasks"][0]["deploy"]["steps"]
    return steps[0]["prune"]["ratio"], set(steps[1]["quantize"]["bits"].values()), steps[0]["prune"]


def test_tolerance_decides_the_auto_prune_ratio_and_bits(tmp_path):
    loose = _run(str(DATA / "tiny.yaml"), tmp_path / "loose", [*AUTO, "compress.tolerance=1"])
    strict = _run(str(DATA / "tiny.yaml"), tmp_path / "strict", [*AUTO, "compress.tolerance=0.02"])
    ratio, bits, prune = _choices(loose)
    assert (ratio, bits) == (0.9, {2})  # everything is within a tolerance of 1: the largest ratio, fewest bits
    assert [t["ratio"] for t in prune["tried"]] == [0.9] and prune["tried"][0]["ok"]
    ratio, bits, prune = _choices(strict)
    assert ratio in (0.25, 0.0) and bits == {8}
    base = strict["tasks"][0]["deploy"]["teacher_val_accuracy"]  # no distill: prune starts from the working copy
    assert prune["tried"][0]["ratio"] == 0.9 and not prune["tried"][0]["ok"]
    for t in prune["tried"]:  # each ratio tried is judged by the tolerance, largest first; the first ok is taken
        assert t["ok"] == (base - t["val_accuracy"] <= 0.02)
    assert ratio == next((t["ratio"] for t in prune["tried"] if t["ok"]), 0.0)


def test_latency_budget_decides_the_auto_prune_ratio(tmp_path, monkeypatch):
    # Latency is measured, so noisy: the per-ratio measurement is replaced by fixed figures where the
    # larger ratio is the slower (odd channel counts can be: README "Pruning"); the final model's real
    # latency is still measured and must meet the budget.
    from compactcl.pipeline import compress

    measured = itertools.cycle([5.0, 0.5])  # ratio 0.9, then 0.25
    monkeypatch.setattr(compress, "_latency", lambda model, shape, budget: next(measured))
    ovr = [*AUTO, "compress.tolerance=1"]
    fast = _run(str(DATA / "tiny.yaml"), tmp_path / "fast", [*ovr, "compress.budget.latency_ms=1.0"])
    ratio, _, prune = _choices(fast)
    assert ratio == 0.25
    assert [(t["ratio"], t["latency_ms"], t["ok"]) for t in prune["tried"]] == [(0.9, 5.0, False), (0.25, 0.5, True)]
    final = fast["tasks"][0]["deploy"]["onnx"]["latency_ms"]  # exported for the budget even with export.onnx=false
    assert 0 < final <= 1.0


def test_a_latency_budget_no_model_meets_stops_the_run_with_the_latency_reached(tmp_path):
    steps = "compress.steps=[{quantize: {method: linear, bits: 8, qat_epochs: 0}}]"
    with pytest.raises(CompactCLError, match=r"task 0: deployed latency [0-9.]+ ms .* exceeds "
                                             r"compress\.budget\.latency_ms=1e-06"):
        _run(str(DATA / "tiny.yaml"), tmp_path / "slow",
             ["data.tasks=1", "data.all_classes=false", "compress.budget={latency_ms: 0.000001}", steps, "export.onnx=false"])


# --- Commands: "compactcl compare ... several learners on the same stream and seeds, one table" ------------

def test_compare_runs_each_learner_on_the_same_streams_and_averages_the_seeds(tmp_path, capsys, monkeypatch):
    import statistics

    from compactcl.cli.main import main
    from compactcl.report import html

    monkeypatch.setattr(html, "write_report", lambda out: None)  # the report is tested on its own; it is slow
    out = tmp_path / "cmp"
    assert main(["compare", str(DATA / "tiny.yaml"), "--learners", "finetune,icarl", "--seeds", "0,1", "--out",
                 str(out), "--set", "data.tasks=2", "--set", "data.all_classes=false", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table == json.loads((out / "compare.json").read_text()) and table["seeds"] == [0, 1]
    runs = {(n, s): json.loads((out / f"{n}-seed{s}" / "metrics.json").read_text())
            for n in ("finetune", "icarl") for s in (0, 1)}
    for s in (0, 1):  # the same stream for every learner of a seed; another seed, another class order
        assert runs["finetune", s]["class_order"] == runs["icarl", s]["class_order"]
        assert runs["icarl", s]["recipe"]["learner"]["name"] == "icarl" and runs["icarl", s]["recipe"]["seed"] == s
    assert runs["icarl", 0]["class_order"] != runs["icarl", 1]["class_order"]
    assert [r["learner"] for r in table["rows"]] == ["finetune", "icarl"]
    for row in table["rows"]:
        finals = [runs[row["learner"], s]["summary"]["working"]["final_accuracy"] for s in (0, 1)]
        assert row["final_accuracy"] == pytest.approx(statistics.mean(finals), abs=1e-12)
        assert row["final_std"] == pytest.approx(statistics.pstdev(finals), abs=1e-12)
