"""Reliability: a killed run resumes to the exact result of an uninterrupted one; same seed, same numbers.

The kill test runs ``python -m compactcl run`` as a real subprocess and SIGKILLs it (no
cleanup handlers run), then finishes it with ``--resume``.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from compactcl import CompactCLError
from compactcl.cli.main import main
from compactcl.pipeline.recipe import load_recipe
from compactcl.pipeline.run import run_recipe

# A recipe of its own (not the built-in default, which may grow compression steps): 3 tasks x 2 digits.
RECIPE = Path(__file__).parent / "data" / "tiny.yaml"
TINY = [str(RECIPE), "--no-progress"]
KILL_ARGS = [*TINY, "--set", "learner.epochs=6"]  # ~1 s a task: room to land kills inside a task
FAST_ARGS = [*TINY, "--set", "learner.epochs=1"]
# Every compress step kind (distill with a carried student, prune ratio: auto, quantize bits: auto +
# QAT, ONNX fp32 + int8): resume must give the same bytes for everything the run writes.
COMPRESSED = [str(Path(__file__).parent / "data" / "tiny-compressed.yaml"), "--no-progress"]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # same threads as the in-process run
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1] / "src"), env.get("PYTHONPATH", "")])
    return env


def _start(out: Path, resume: bool, args: list[str] = KILL_ARGS) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "compactcl", "run", *args, "--out", str(out), *(["--resume"] if resume else [])]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(proc: subprocess.Popen, cond, timeout: float = 120.0) -> bool:
    """Poll (2 ms) until ``cond()``; False if the process ended first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        if proc.poll() is not None:
            return cond()
        time.sleep(0.002)
    raise AssertionError("timed out waiting for the run")


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _rows(out: Path) -> int:
    m = out / "metrics.json"
    return len(json.loads(m.read_text())["tasks"]) if m.exists() else 0


def _comparable(doc: dict) -> list:
    return [(t["classes"], t["accuracy"], t["bytes"], t["params"], t["flops"]) for t in doc["tasks"]]


def test_sigkilled_run_resumes_to_the_uninterrupted_result(tmp_path):
    rng = random.Random(7)  # kill delays are random but reproducible; the result must not depend on them
    ref, out = tmp_path / "ref", tmp_path / "killed"
    assert main(["run", "--out", str(ref), *KILL_ARGS]) == 0
    expected = json.loads((ref / "metrics.json").read_text())

    # 1. before the first task ends: the folder has recipe.yaml, maybe half of tasks/00, no metrics.json
    proc = _start(out, resume=False)
    assert _wait_for(proc, lambda: (out / "recipe.yaml").exists())
    time.sleep(rng.uniform(0.0, 0.25))
    _kill(proc)
    assert not (out / "metrics.json").exists(), "kill 1 landed after task 0; make tasks longer"

    # 2. at a random point inside task 1, after metrics.json records task 0
    proc = _start(out, resume=True)
    assert _wait_for(proc, lambda: _rows(out) >= 1)
    time.sleep(rng.uniform(0.0, 0.4))
    _kill(proc)
    assert 1 <= _rows(out) < 3

    # 3. the moment task 2's working checkpoint lands: a half-written task folder metrics.json does not know
    proc = _start(out, resume=True)
    assert _wait_for(proc, lambda: (out / "tasks" / "02" / "working.safetensors").exists())
    _kill(proc)
    killed_rows = _rows(out)

    # 4. resume to the end
    proc = _start(out, resume=True)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    got = json.loads((out / "metrics.json").read_text())
    assert got["status"] == "complete" and killed_rows <= 3
    assert _comparable(got) == _comparable(expected)
    assert got["summary"]["working"] == expected["summary"]["working"]
    # bit-identical final weights, and no temp file of a killed writer left behind
    a, b = load_file(str(ref / "final" / "working.safetensors")), load_file(str(out / "final" / "working.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert not list(out.rglob("*.tmp"))


def _truncate_to(out: Path, n: int) -> None:
    """Make ``out`` look like a run killed after task ``n - 1`` (metrics.json rewritten atomically)."""
    doc = json.loads((out / "metrics.json").read_text())
    doc["tasks"], doc["status"] = doc["tasks"][:n], "running"
    (out / "metrics.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("extra", [
    ["--set", "learner.name=der"],  # grown branches + head rows drawn from the restored RNG
    ["--set", "learner.name=lwf"],
    ["--set", "learner.name=replay", "--set", "memory.selection=random"],
    ["--set", "learner.name=joint"],
    ["--set", "learner.name=icarl", "--set", "learner.nme=true", "--set", "learner.augment=true"],
], ids=["der", "lwf", "replay-random", "joint", "icarl-nme-augment"])
def test_resume_is_exact_for_every_learner(tmp_path, extra):
    full, part = tmp_path / "full", tmp_path / "part"
    args = [*FAST_ARGS, *extra]
    assert main(["run", "--out", str(full), *args]) == 0
    assert main(["run", "--out", str(part), *args]) == 0
    _truncate_to(part, 1)
    # a later task's files partially written by the killed run, and a temp file it never renamed
    (part / "tasks" / "01" / "working.safetensors").write_bytes(b"half a file")
    (part / "tasks" / "01" / "state.safetensors").unlink()
    (part / "tasks" / "01" / ".working.safetensors.abc123.tmp").write_bytes(b"junk")
    assert main(["run", "--out", str(part), "--resume", *args]) == 0
    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((part / "metrics.json").read_text())
    assert _comparable(a) == _comparable(b)
    assert not list(part.rglob("*.tmp"))


def _run_files(out: Path) -> dict[str, bytes]:
    """Every file a run wrote (but metrics.json and the report, which hold timings, and the
    folder's marker and lock, which hold the run's id and pid), by path."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in ("metrics.json", "report.html", ".compactcl-run", ".compactcl-run.lock")}


def _timeless(doc: dict) -> list:
    """The metrics rows without what a clock measures (seconds, latencies)."""
    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if "seconds" not in k and "latency" not in k}
        return [strip(x) for x in v] if isinstance(v, list) else v
    return strip(doc["tasks"])


def test_resume_with_every_compress_step_rewrites_identical_files(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["run", "--out", str(full), *COMPRESSED]) == 0
    assert main(["run", "--out", str(part), *COMPRESSED]) == 0
    _truncate_to(part, 1)
    for name in ("student.safetensors", "deployed.ccl", "deployed.onnx"):
        (part / "tasks" / "01" / name).unlink()
    assert main(["run", "--out", str(part), "--resume", *COMPRESSED]) == 0
    a, b = (json.loads((p / "metrics.json").read_text()) for p in (full, part))
    assert _timeless(a) == _timeless(b)
    files_a, files_b = _run_files(full), _run_files(part)
    assert files_a.keys() == files_b.keys() and "tasks/02/student.safetensors" in files_a
    assert [k for k in files_a if files_a[k] != files_b[k]] == []


def test_sigkilled_compressed_run_resumes_to_identical_files(tmp_path):
    rng = random.Random(11)
    ref, out = tmp_path / "ref", tmp_path / "killed"
    assert main(["run", "--out", str(ref), *COMPRESSED]) == 0
    proc = _start(out, resume=False, args=COMPRESSED)
    assert _wait_for(proc, lambda: _rows(out) >= 1)
    time.sleep(rng.uniform(0.0, 1.5))  # somewhere in task 1: training, distilling, searching or exporting
    _kill(proc)
    proc = _start(out, resume=True, args=COMPRESSED)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    a, b = (json.loads((p / "metrics.json").read_text()) for p in (ref, out))
    assert _timeless(a) == _timeless(b)
    files_a, files_b = _run_files(ref), _run_files(out)
    assert files_a.keys() == files_b.keys()
    assert [k for k in files_a if files_a[k] != files_b[k]] == []


OVR = ["learner.epochs=1"]


def test_same_recipe_and_seed_give_identical_metrics(tmp_path):
    recipe = load_recipe(str(RECIPE), OVR)
    docs = [run_recipe(recipe, tmp_path / f"r{i}", progress=False, log=lambda s: None) for i in range(2)]
    assert _comparable(docs[0]) == _comparable(docs[1])
    assert docs[0]["summary"] == docs[1]["summary"] and docs[0]["class_order"] == docs[1]["class_order"]
    w0 = (tmp_path / "r0" / "final" / "working.safetensors").read_bytes()
    assert w0 == (tmp_path / "r1" / "final" / "working.safetensors").read_bytes()  # bit for bit, header included
    other = run_recipe(load_recipe(str(RECIPE), [*OVR, "seed=1"]), tmp_path / "s1", progress=False, log=lambda s: None)
    assert other["class_order"] != docs[0]["class_order"]  # the seed matters


def test_resume_refuses_unreadable_state_with_a_clear_error(tmp_path):
    out, recipe = tmp_path / "run", load_recipe(str(RECIPE), OVR)
    run_recipe(recipe, out, progress=False, log=lambda s: None)
    _truncate_to(out, 2)
    (out / "tasks" / "01" / "state.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CompactCLError, match="cannot resume.*state.safetensors"):
        run_recipe(recipe, out, resume=True, progress=False, log=lambda s: None)
    (out / "metrics.json").write_text("{not json")
    with pytest.raises(CompactCLError, match="metrics"):
        run_recipe(recipe, out, resume=True, progress=False, log=lambda s: None)


def test_run_files_get_the_umask_mode_not_0600(tmp_path):
    import compactcl.utils.atomic as atomic

    mask = os.umask(0o022)
    os.umask(mask)
    atomic.atomic_write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~mask == atomic._FILE_MODE


def test_a_killed_attempts_deployed_files_are_never_published(tmp_path):
    # task 1 wrote deployed.int8.onnx, was killed before metrics.json knew; the resume turns int8 off
    run = tmp_path / "run"
    args = [*COMPRESSED, "--set", "data.tasks=2"]
    assert main(["run", "--out", str(run), *args]) == 0
    _truncate_to(run, 1)
    (run / "final" / "deployed.int8.onnx").unlink()
    assert (run / "tasks" / "01" / "deployed.int8.onnx").exists()
    assert main(["run", "--resume", str(run), "--set", "export.int8=false", "--no-progress"]) == 0
    assert not (run / "tasks" / "01" / "deployed.int8.onnx").exists()
    assert not (run / "final" / "deployed.int8.onnx").exists() and (run / "final" / "deployed.onnx").exists()


def test_a_killed_attempts_rung_files_are_cleared_before_the_task_is_redone(tmp_path):
    # compress.measure writes a rung's .ccl/.onnx per step in the task folder: declared deployer files
    # (Deployer.extra_files), so one a killed attempt left and this attempt does not write is not kept
    run = tmp_path / "run"
    args = [*COMPRESSED, "--set", "data.tasks=2", "--set", "compress.measure=true", "--set", "export.int8=false"]
    assert main(["run", "--out", str(run), *args]) == 0
    task = run / "tasks" / "01"
    written = sorted(p.name for p in task.glob("rung*"))
    assert written == ["rung01-working.ccl", "rung01-working.onnx", "rung02-distill.ccl", "rung02-distill.onnx",
                       "rung03-prune.ccl", "rung03-prune.onnx", "rung04-quantize.ccl", "rung04-quantize.int8.onnx",
                       "rung04-quantize.onnx"], written
    _truncate_to(run, 1)
    (task / "rung05-prune.ccl").write_bytes(b"a killed attempt's")  # a rung this attempt will not write
    (task / "notes.txt").write_text("not a deployer's file")
    assert main(["run", "--resume", str(run), "--no-progress"]) == 0
    assert sorted(p.name for p in task.glob("rung*")) == written
    assert (task / "notes.txt").read_text() == "not a deployer's file"
