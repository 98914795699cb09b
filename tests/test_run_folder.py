"""A user's files are sacred: compactcl writes, cleans and resumes only inside run folders it
marked, takes an exclusive lock for the run, keeps recipe names out of paths, and enforces the
recorded recipe on resume (issue 14, items 2 and 5)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from compactcl.cli.main import main
from compactcl.pipeline.folder import MARKER, _lock, claim_run_folder, recipe_diff, record_changes

FAST = ["--set", "data.tasks=2", "--set", "data.all_classes=false", "--set", "data.classes_per_task=2", "--set", "learner.epochs=1",
        "--set", "model.options.width=8", "--set", "learner.name=icarl", "--set", "compress=null", "--no-progress"]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _foreign(root: Path) -> Path:
    """A user's folder that looks a bit like a run: the names a run writes, and temp-looking files."""
    root.mkdir()
    (root / "report.html").write_text("my report")
    (root / "recipe.yaml").write_text("my: recipe\n")
    (root / "metrics.json").write_text('{"tasks": []}')
    (root / "tasks" / "00").mkdir(parents=True)
    (root / "tasks" / "00" / "working.safetensors").write_bytes(b"mine")
    (root / "tasks" / "00" / ".notes.abcdefgh.tmp").write_bytes(b"my temp")
    (root / "final").mkdir()
    (root / "final" / "deployed.old").write_bytes(b"keep me")
    return root


@pytest.mark.parametrize("extra", [[], ["--resume"]], ids=["run", "resume"])
def test_a_foreign_folder_is_refused_byte_for_byte_untouched(tmp_path, capsys, extra):
    user = _foreign(tmp_path / "user")
    before = _snapshot(user)
    assert main(["run", "--out", str(user), *FAST, *extra]) == 2
    err = capsys.readouterr().err
    assert "not a compactcl run folder" in err and "Traceback" not in err
    assert _snapshot(user) == before  # every byte of every file, and no file added


def test_resume_of_a_foreign_folder_by_name_and_out_file_are_refused(tmp_path, capsys):
    user = _foreign(tmp_path / "user")
    before = _snapshot(user)
    assert main(["run", "--resume", str(user), "--no-progress"]) == 2
    assert "not a compactcl run folder" in capsys.readouterr().err
    assert _snapshot(user) == before
    f = tmp_path / "afile"
    f.write_bytes(b"data")
    assert main(["run", "--out", str(f), *FAST]) == 2
    assert "is a file" in capsys.readouterr().err and f.read_bytes() == b"data"


def test_recipe_name_never_becomes_a_path(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("/tmp/elsewhere", "../up", "..", "a/b", ".hidden"):
        assert main(["run", "--set", f"name={name}", *FAST]) == 2
        assert "plain name" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not Path("/tmp/elsewhere").exists()
    recipe = tmp_path / "my recipe (v2).yaml"  # a file stem with odd characters still makes a plain name
    recipe.write_text("learner: {epochs: 1}\n")
    from compactcl.pipeline.recipe import load_recipe

    assert load_recipe(str(recipe)).name == "my-recipe--v2-"


def test_a_second_run_into_a_locked_folder_fails_at_once(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    fd = _lock(out)  # as another live run holds it
    try:
        assert main(["run", "--out", str(out), *FAST]) == 2
        err = capsys.readouterr().err
        assert "another compactcl run" in err and str(os.getpid()) in err
        assert not (out / "metrics.json").exists()
    finally:
        os.close(fd)


def test_a_refused_claim_writes_nothing_and_a_new_one_marks_first(tmp_path):
    doc = {"name": "x", "seed": 0, "export": {"onnx": False}}
    out = tmp_path / "new"
    with pytest.raises(RuntimeError):
        with claim_run_folder(out, doc, resume=False):
            assert json.loads((out / MARKER).read_text())["run_id"]
            assert yaml.safe_load((out / "recipe.yaml").read_text()) == doc
            raise RuntimeError("refused before any result")
    assert not out.exists()  # nothing of the refused run is left


def test_resume_by_folder_uses_the_recorded_recipe_and_refuses_changes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *FAST]) == 0
    doc = json.loads((out / "metrics.json").read_text())
    doc["tasks"] = doc["tasks"][:1]  # as if killed after task 0
    (out / "metrics.json").write_text(json.dumps(doc))
    recorded = (out / "recipe.yaml").read_bytes()
    for change in (["--set", "seed=7"], ["--set", "data.tasks=3", "--set", "data.all_classes=false"], ["--set", "learner.epochs=2"]):
        assert main(["run", "--resume", str(out), "--no-progress", *change]) == 2
        err = capsys.readouterr().err
        assert change[1].split("=")[0] in err and "different recipe" in err
    assert main(["run", "--resume", str(out), "--no-progress", "--set", "export.int8=true"]) == 0
    done = json.loads((out / "metrics.json").read_text())
    assert done["status"] == "complete" and len(done["tasks"]) == 2
    assert done["recipe_changes"] == [{"from_task": 1, "set": {"export.int8": True}}]
    assert done["recipe"]["export"]["int8"] is False  # the recipe as started; the change is recorded beside it
    assert (out / "recipe.yaml").read_bytes() == recorded  # recorded once
    # a second resume with the same change records nothing new; a complete run says so and exits 0
    assert main(["run", "--resume", str(out), "--no-progress", "--set", "export.int8=true"]) == 0
    assert "complete" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["recipe_changes"] == done["recipe_changes"]


def test_resume_without_recorded_recipe_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *FAST]) == 0
    (out / "recipe.yaml").unlink()
    before = _snapshot(out)
    assert main(["run", "--out", str(out), "--resume", *FAST, "--set", "seed=3"]) == 2
    assert "not a resumable run" in capsys.readouterr().err
    assert main(["run", "--resume", str(out), "--no-progress"]) == 2
    assert _snapshot(out) == {k: v for k, v in before.items()}


def test_out_then_resume_flag_starts_or_continues(tmp_path, capsys):
    """What `make demo` does: the first call runs, the second says the run is complete (exit 0)."""
    out = tmp_path / "demo"
    assert main(["run", "--out", str(out), "--resume", *FAST]) == 0
    assert main(["run", "--out", str(out), "--resume", *FAST]) == 0
    assert f"{out} is complete" in capsys.readouterr().out


def test_stale_temps_are_cleaned_only_in_marked_folders(tmp_path):
    from compactcl.pipeline.folder import clean_stale_temps

    user = _foreign(tmp_path / "user")
    assert clean_stale_temps(user) == 0 and (user / "tasks" / "00" / ".notes.abcdefgh.tmp").exists()
    (user / MARKER).write_text("{}")
    (user / "mine.tmp").write_bytes(b"not a temp name compactcl uses")
    assert clean_stale_temps(user) == 1 and (user / "mine.tmp").exists()


def test_recipe_diff_and_changes_are_generic_by_prefix():
    a = {"seed": 0, "export": {"onnx": False, "strict": False}, "log": {"tensorboard": False}}
    b = {"seed": 0, "export": {"onnx": False, "strict": True}, "log": {"tensorboard": True}}
    assert recipe_diff(a, b) == {"export.strict": (False, True), "log.tensorboard": (False, True)}
    first = record_changes(a, b, [], 2)
    assert first == [{"from_task": 2, "set": {"export.strict": True, "log.tensorboard": True}}]
    assert record_changes(a, b, first, 3) == first
