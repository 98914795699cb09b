"""Progress that fits the place: plain step lines when output is captured, --quiet, --help defaults."""

import json
import subprocess
import sys

from compactcl.cli.main import main

# a tiny compressed run: one distill and one quantize step per task (the lines under test)
TINY = ["--set", "data.tasks=2", "--set", "data.classes_per_task=2", "--set", "learner.epochs=1",
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


def test_quiet_run_prints_no_step_lines(tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["run", "--out", str(out), "--quiet", "--json", *TINY]) == 0
    captured = capsys.readouterr()
    assert "deploy step" not in captured.out + captured.err and "learns classes" not in captured.err
    assert "final_accuracy" in json.loads(captured.out)["working"]  # the result is still printed
