import json
import subprocess
import sys

import pytest

from compactcl import load
from compactcl.cli.main import main

FAST = ["--set", "data.tasks=2", "--set", "data.all_classes=false", "--set", "data.classes_per_task=2", "--set", "learner.epochs=2",
        "--set", "model.options.width=8", "--set", "learner.name=icarl", "--set", "compress=null", "--no-progress"]


def test_run_json_prints_summary_and_writes_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--json", *FAST]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["working"]) == {"average_incremental_accuracy", "final_accuracy", "forgetting", "bwt"}
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["schema"] == "compactcl.metrics/1" and doc["status"] == "complete"
    assert len(doc["tasks"]) == 2 and len(doc["tasks"][1]["accuracy"]["working"]) == 2
    t = doc["tasks"][1]
    assert t["bytes"]["fp32"] == 4 * t["params"]
    assert t["bytes"]["deployed"] == (out / "tasks" / "01" / "deployed.safetensors").stat().st_size
    assert doc["summary"]["working"]["final_accuracy"] == pytest.approx(sum(t["accuracy"]["working"]) / 2)
    model = load(out, model="working")  # a run folder: its final working model on request
    assert model.num_classes == 4
    assert not list(out.rglob("*.tmp"))


def test_existing_run_is_not_overwritten_and_resume_finishes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *FAST]) == 0
    before = (out / "metrics.json").read_text()
    assert main(["run", "--out", str(out), *FAST]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == before
    assert main(["run", "--out", str(out), "--resume", *FAST]) == 0  # nothing left to do


def test_resume_from_partial_run_matches_uninterrupted(tmp_path):
    """Stop after task 0 (by running a 1-task prefix), then resume: same accuracies as one go."""
    full, part = tmp_path / "full", tmp_path / "part"
    args = [*FAST, "--set", "data.tasks=3", "--set", "data.all_classes=false"]
    assert main(["run", "--out", str(full), *args]) == 0
    assert main(["run", "--out", str(part), *args]) == 0
    doc = json.loads((part / "metrics.json").read_text())
    doc["tasks"] = doc["tasks"][:1]  # as if killed after task 0
    (part / "metrics.json").write_text(json.dumps(doc))
    assert main(["run", "--out", str(part), "--resume", *args]) == 0
    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((part / "metrics.json").read_text())
    assert [t["accuracy"] for t in a["tasks"]] == [t["accuracy"] for t in b["tasks"]]


def test_bad_recipe_key_exits_2_with_message(capsys):
    assert main(["run", "--set", "learner.nme=maybe", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "learner.nme" in err


def test_list_names_registries(capsys):
    assert main(["list", "--json"]) == 0
    cat = json.loads(capsys.readouterr().out)
    assert "icarl" in cat["learners"] and "resnet20" in cat["backbones"] and "default" in cat["recipes"]


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "compactcl", "list"], capture_output=True, text=True)
    assert out.returncode == 0 and "learners:" in out.stdout


def test_import_is_light():
    code = ("import sys, compactcl; heavy = [m for m in ('onnxruntime', 'matplotlib', 'sklearn', 'torch_pruning') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_compressed_run_fits_its_budget_every_task(tmp_path, capsys):
    """DER grows; the deployed artifact (distilled + k-means, bits searched) stays within budget."""
    out = tmp_path / "c"
    args = ["run", "--out", str(out), "--no-progress", "--set", "data.tasks=2", "--set", "data.all_classes=false", "--set", "data.classes_per_task=3",
            "--set", "learner.name=der", "--set", "learner.epochs=3", "--set", "model.options.width=8",
            "--set", "compress.budget.fraction_of_backbone=0.25", "--set", "export.int8=true",
            "--set", "compress.steps=[{distill: {student: cnn, options: {width: 4}, epochs: 10}}, "
                     "{quantize: {method: kmeans, bits: auto, qat_epochs: 1}}]"]
    assert main(args) == 0
    doc = json.loads((out / "metrics.json").read_text())
    for t in doc["tasks"]:
        budget = t["deploy"]["budget_bytes"]
        size = (out / "tasks" / f"{t['index']:02d}" / "deployed.ccl").stat().st_size
        assert size == t["bytes"]["deployed"] <= budget
        assert t["deployed_params"] < t["params"]
        assert t["bytes"]["update"] <= t["bytes"]["deployed"]  # a delta, or the whole file at most
    assert doc["tasks"][1]["params"] > doc["tasks"][0]["params"]  # DER grew
    assert doc["summary"]["deployed"]["final_accuracy"] > 0.6  # 6 digit classes: chance is 1/6
    deployed = load(out / "final" / "deployed.ccl")
    assert deployed.num_classes == 6
    assert (out / "final" / "deployed.onnx").exists() and (out / "report.html").exists()
    int8 = doc["tasks"][-1]["deploy"]["onnx"]["int8"]
    assert int8["bytes"] == (out / "final" / "deployed.int8.onnx").stat().st_size
    assert int8["agreement"] > 0.9
