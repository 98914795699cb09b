"""One CLI that fits its place: plain step lines when output is captured, --quiet, defaults in --help,
--json on every verb, a run folder means its deployed model, prune/quantize of a .ccl dequantize first."""

import argparse
import contextlib
import io
import json
import subprocess
import sys

import pytest
import torch

from compactcl import load
from compactcl.cli.common import DefaultsHelpFormatter, dequantize_
from compactcl.cli.main import build_parser, main

# a tiny compressed run: one distill and one quantize step per task (the lines under test)
TINY = ["--set", "data.tasks=2", "--set", "data.classes_per_task=2", "--set", "data.all_classes=false", "--set", "learner.epochs=1",
        "--set", "model.options.width=4", "--set", "learner.name=icarl", "--set", "compress.budget={bytes: 1000000}",
        "--set", "compress.steps=[{distill: {student: cnn, options: {width: 4}, epochs: 1}}, "
                 "{quantize: {method: linear, bits: 8, qat_epochs: 0}}]"]


def test_captured_run_prints_one_plain_line_per_step_and_no_bar_noise(tmp_path):
    out = tmp_path / "r"
    proc = subprocess.run([sys.executable, "-m", "compactcl", "run", "--out", str(out), *TINY],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    both = proc.stdout + proc.stderr
    assert "\r" not in both and "\x1b[" not in both  # no tqdm redraws or cursor-up escapes in a log file
    for index in (0, 1):
        assert f"task {index} (of 2): icarl learns classes" in proc.stdout
        assert f"task {index}: deploy step 1/2: distill into cnn (1 epochs) ..." in proc.stdout
        assert f"task {index}: deploy step 2/2: quantize linear, 8-bit ..." in proc.stdout
        for step in ("distill", "quantize"):
            line = next(s for s in proc.stdout.splitlines() if s.startswith(f"task {index}: deploy step")
                        and f"{step} done in" in s)
            assert float(line.split("done in ")[1].split(" s")[0]) >= 0


@pytest.fixture(scope="module")
def quiet_run(tmp_path_factory):
    """A tiny compressed run made with --quiet --json: its folder and what it printed."""
    out, stdout, stderr = tmp_path_factory.mktemp("seams") / "run", io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(["run", "--out", str(out), "--quiet", "--json", *TINY])
    assert rc == 0, stderr.getvalue()
    return out, stdout.getvalue(), stderr.getvalue()


def test_quiet_run_prints_no_step_lines(quiet_run):
    _, out, err = quiet_run
    assert "deploy step" not in out + err and "learns classes" not in out + err
    assert "final_accuracy" in json.loads(out)["working"]  # the result is still printed


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_verb_shows_defaults_in_help_and_answers_json():
    verbs = _subparsers()
    assert {"run", "list", "quantize", "export", "prune", "sensitivity", "report", "compare", "predict"} <= set(verbs)
    for name, p in verbs.items():
        assert p.formatter_class is DefaultsHelpFormatter, name
        assert "--json" in p._option_string_actions, f"{name} has no --json"
    assert "default: linear" in verbs["quantize"].format_help() and "(default: 8)" in verbs["quantize"].format_help()
    assert "(default: deployed)" in verbs["prune"].format_help()
    assert "(default: None)" not in verbs["run"].format_help()  # no default, nothing shown


def test_run_folder_means_deployed_model_unless_model_working(quiet_run, tmp_path, capsys):
    run = quiet_run[0]
    assert main(["quantize", str(run), "--bits", "4", "--out", str(tmp_path / "q.ccl"), "--json"]) == 0
    o = capsys.readouterr()
    assert json.loads(o.out)["model_file"] == str(run / "final" / "deployed.ccl")
    assert f"quantize: using {run / 'final' / 'deployed.ccl'} (the run's deployed model" in o.err
    assert "deployed.ccl is quantized" in o.err and "dequantized to float weights first" in o.err
    assert main(["sensitivity", str(run), "--model", "working", "--ratios", "0,0.5", "--out", str(tmp_path / "s"),
                 "--json"]) == 0
    o = capsys.readouterr()
    assert json.loads(o.out)["model_file"] == str(run / "final" / "working.safetensors")
    assert o.err.count("using ") == 1


def test_prune_of_a_ccl_dequantizes_first_and_keeps_its_outputs(quiet_run, tmp_path, capsys):
    run = quiet_run[0]
    assert main(["prune", str(run / "final" / "deployed.ccl"), "--ratio", "0.5", "--finetune-epochs", "0",
                 "--out", str(tmp_path / "p.ccl"), "--json"]) == 0
    o = capsys.readouterr()
    assert "dequantized to float weights first" in o.err
    fig = json.loads(o.out)
    assert fig["nonzeros"] < fig["baseline_nonzeros"] and (tmp_path / "p.ccl").stat().st_size == fig["bytes"]
    # dropping the grid keeps the decoded weights: the same logits as the packed model
    model, x = load(run / "final" / "deployed.ccl"), torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        before = model(x)
        after = dequantize_(argparse.Namespace(command="test"), model, run / "final" / "deployed.ccl")(x)
    torch.testing.assert_close(after, before)


def test_export_writes_onnx_without_a_format_flag(quiet_run, tmp_path, capsys):
    run = quiet_run[0]
    out = tmp_path / "m.onnx"
    assert main(["export", str(run), "--out", str(out), "--no-latency", "--json"]) == 0
    fig = json.loads(capsys.readouterr().out)
    assert fig["bytes"] == out.stat().st_size and fig["agreement"] >= 0.999


def test_report_answers_json(quiet_run, capsys):
    run = quiet_run[0]
    assert main(["report", str(run), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["report"] == str(run / "report.html") and (run / "report.html").stat().st_size > 0
