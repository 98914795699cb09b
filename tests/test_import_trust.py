"""A file or a recipe naming a module must not get it imported (its top-level code run) before
the "marked factory" check passes; `python -m compactcl` must not run module files lying in the
current folder (issue 14, item 4)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from compactcl.errors import CompactCLError
from compactcl.models.external import create_external, model_from_spec

ROOT = Path(__file__).resolve().parents[1]


def _write_module(folder: Path, name: str, flag: Path, body: str = "") -> None:
    (folder / f"{name}.py").write_text(
        f"from pathlib import Path\nPath({str(flag)!r}).write_text('ran')\n"  # top-level code: must not run
        "from compactcl.models import model_factory\n" + body)


@pytest.fixture
def on_path(tmp_path, monkeypatch):
    folder = tmp_path / "mods"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    return folder


def test_a_module_naming_no_marked_factory_is_never_imported(on_path, tmp_path):
    flag = tmp_path / "flag"
    _write_module(on_path, "sneaky_mod", flag, "def f(num_classes=2):\n    return None\n"
                  "def g(**kw):\n    pass\ng.__compactcl_model_factory__ = True\n")
    for factory in ("sneaky_mod:f", "sneaky_mod:g", "sneaky_mod:missing", "sneaky_mod:f.x"):
        with pytest.raises(CompactCLError, match="not marked"):
            model_from_spec({"kind": "external", "factory": factory, "head": "fc", "num_classes": 2})
        with pytest.raises(CompactCLError, match="not marked"):
            create_external(f"module:{factory}", 2, 1)
    assert not flag.exists() and "sneaky_mod" not in sys.modules
    # modules without readable source (built in, compiled) and missing ones: refused, nothing imported
    compiled = next(m for m in ("_curses", "_dbm", "_gdbm", "_tkinter", "xxlimited", "_testcapi", "mmap", "_lzma")
                    if m not in sys.modules and getattr(importlib.util.find_spec(m), "origin", "").endswith(".so"))
    for factory, msg in ((f"{compiled}:f", "no Python source"), ("os:system", "not marked"),
                         ("no_such_mod_xyz:f", "cannot find module"), ("sneaky_mod.sub:f", "not a package")):
        with pytest.raises(CompactCLError, match=msg):
            model_from_spec({"kind": "external", "factory": factory, "head": "fc", "num_classes": 2})
    assert "sneaky_mod" not in sys.modules


def test_a_parent_package_init_does_not_run_for_an_unmarked_submodule(on_path, tmp_path):
    flag = tmp_path / "flag"
    pkg = on_path / "sneaky_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(f"from pathlib import Path\nPath({str(flag)!r}).write_text('init ran')\n")
    (pkg / "inner.py").write_text("def f():\n    return None\n")
    with pytest.raises(CompactCLError, match="not marked"):
        model_from_spec({"kind": "external", "factory": "sneaky_pkg.inner:f", "head": "fc", "num_classes": 2})
    assert not flag.exists() and "sneaky_pkg" not in sys.modules


def test_a_marked_factory_still_loads(on_path, tmp_path):
    flag = tmp_path / "flag"
    _write_module(on_path, "honest_mod", flag, "import torch.nn as nn\n@model_factory\n"
                  "def net(num_classes=2):\n    return nn.Sequential(nn.Flatten(), nn.Linear(4, num_classes))\n")
    model = model_from_spec({"kind": "external", "factory": "honest_mod:net", "factory_kwargs": {},
                             "head": "1", "num_classes": 2})
    assert model(torch.zeros(1, 1, 2, 2)).shape == (1, 2) and flag.exists()


def test_a_checkpoint_header_naming_a_module_does_not_import_it(on_path, tmp_path, capsys):
    from compactcl.cli.main import main

    flag = tmp_path / "flag"
    _write_module(on_path, "header_mod", flag, "def build(**kw):\n    return None\n")
    header = {"format": "compactcl.checkpoint/1", "spec": {"kind": "external", "factory": "header_mod:build",
                                                           "head": "fc", "num_classes": 2}, "meta": {}}
    path = tmp_path / "m.safetensors"
    save_file({"module.fc.weight": torch.zeros(2, 2)}, str(path), metadata={"compactcl": json.dumps(header)})
    for verb in (["quantize", str(path), "--out", str(tmp_path / "q.ccl")], ["export", str(path), "--out", str(tmp_path / "m.onnx")],
                 ["prune", str(path), "--ratio", "0.5", "--out", str(tmp_path / "p.safetensors")]):
        assert main(verb) == 2
        assert "Traceback" not in capsys.readouterr().err
    assert not flag.exists() and "header_mod" not in sys.modules


def test_python_m_compactcl_ignores_module_files_in_the_current_folder(tmp_path):
    flag = tmp_path / "flag"
    _write_module(tmp_path, "cwd_mod", flag, "@model_factory\ndef f(num_classes=2, **kw):\n    return None\n")
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "compactcl", "run", "--set", "model.backbone=module:cwd_mod:f", "--set", "learner.name=icarl",
                          "--set", "compress=null",
                          "--out", str(tmp_path / "r"), "--no-progress"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "cannot find module 'cwd_mod'" in out.stderr, out.stderr
    assert not flag.exists() and "Traceback" not in out.stderr
