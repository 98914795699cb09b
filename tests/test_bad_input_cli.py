"""A seeded corpus of bad command lines for every verb (`compactcl --help` lists them): recipes
and --set values, run folders, --out paths, metrics.json files, checkpoint headers of the wrong
types. Every one ends in a named error (exit 2, `error:` on stderr), never a traceback or a hang.
Sibling of tests/test_bad_input_corpus.py (bad model and data files); the two together hold the
issue's >= 200 inputs across all verbs. All run in-process through ``main(argv)`` (an exception
escaping it is a traceback); a handful also run in a real subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import crafted
from bounds import Clock
from compactcl.cli.main import COMMANDS, main
from compactcl.models.checkpoint import read_header

CALL_S = 5.0
ROOT = Path(__file__).resolve().parents[1]
RUN_FAST = ["--no-progress", "--set", "learner.epochs=1", "--set", "data.tasks=2", "--set", "data.all_classes=false", "--set", "learner.name=icarl",
            "--set", "compress=null", "--set", "model.options.width=4"]


def _files(base: Path) -> dict[str, Path]:
    f = {}
    (base / "afile").write_bytes(b"a user's file")
    f["file"] = base / "afile"
    (base / "adir").mkdir()
    f["dir"] = base / "adir"
    user = base / "user"
    (user / "tasks").mkdir(parents=True)
    (user / "notes.txt").write_text("mine")
    f["foreign"] = user
    deep = {"dict300": "data:\n  options: " + "{a: " * 300 + "1" + "}" * 300 + "\n",
            "list300": "model:\n  options:\n    x: " + "[" * 300 + "]" * 300 + "\n",
            "nest2000": "a: " + "[" * 2000 + "]" * 2000 + "\n",
            "block300": "".join("  " * i + f"k{i}:\n" for i in range(300)) + "  " * 300 + "v: 1\n",
            "list": "- 1\n- 2\n", "str": "just text\n", "int": "5\n", "syntax": "a: [1, 2\nb: }\n",
            "tab": "a:\n\tb: 1\n", "pytag": "seed: !!python/object/apply:os.system ['echo hi']\n",
            "bomb": "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
                                                          for p, c in zip("abcdefgh", "bcdefghi")),
            "unknown": "nope: 1\n", "binary": None}
    for name, text in deep.items():
        path = base / f"{name}.yaml"
        path.write_bytes(bytes(range(256)) * 4 if text is None else text.encode())
        f[f"yaml:{name}"] = path
    metrics = {"binary": bytes(range(256)) * 8, "empty": b"", "null": b"null", "list": b"[1,2]",
               "tasks5": b'{"tasks": 5}', "tasks-empty": b'{"tasks": []}', "tasks-ints": b'{"tasks": [1, 2]}',
               "rows-empty": b'{"tasks": [{}]}', "acc-int": b'{"tasks": [{"accuracy": 1}]}',
               "acc-str": b'{"tasks": [{"accuracy": {"working": "x", "deployed": [1]}}]}',
               "acc-empty": b'{"tasks": [{"accuracy": {"working": [], "deployed": []}}]}',
               "no-summary": b'{"tasks": [{"accuracy": {"working": [0.5], "deployed": [0.5]}}]}',
               "deep": b'{"tasks": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nan": b'{"tasks": NaN}'}
    for name, raw in metrics.items():
        folder = base / f"metrics-{name}"
        folder.mkdir()
        (folder / "metrics.json").write_bytes(raw)
        f[f"metrics:{name}"] = folder
    # checkpoints whose header fields have the wrong types, re-signed as a crafter would
    ckpt = crafted.real_checkpoint(base, "real.safetensors")
    header = read_header(ckpt)
    wrong = {"meta5": {"meta": 5}, "meta-list": {"meta": [1]}, "classes-int": {"meta": {"classes": 5}},
             "stream-str": {"meta": {"stream": "x", "classes": "abc"}}, "labels-str": {"meta": {"labels": "ab"}},
             "spec-str": {"spec": "cnn"}, "spec-none": {"spec": None}, "kind-int": {"spec": {**header["spec"], "kind": 3}},
             "ncls-str": {"spec": {**header["spec"], "num_classes": "4"}},
             "ncls-neg": {"spec": {**header["spec"], "num_classes": -4}},
             "kwargs-list": {"spec": {**header["spec"], "backbone_kwargs": [4]}},
             "backbone-int": {"spec": {**header["spec"], "backbone": 7}},
             "format-int": {"format": 1}, "norm-str": {"meta": {"normalization": "x", "input_shape": "y"}}}
    for name, change in wrong.items():
        path = base / f"hdr-{name}.safetensors"
        path.write_bytes(ckpt.read_bytes())
        crafted.resign(path, {**header, **change})
        f[f"header:{name}"] = path
    f["ckpt"] = ckpt
    return f


def _cases(f: dict[str, Path], out: Path) -> list[list[str]]:
    o = str(out)
    ck = str(f["ckpt"])
    cases: list[list[str]] = [[]] + [[c, "--no-such-flag"] for c in COMMANDS]
    # run: recipes, --set values, folders
    cases += [["run", str(p), "--out", f"{o}/r"] for k, p in f.items() if k.startswith("yaml:")]
    sets = {"seed": ["10**29", "100000000000000000000000000000", "-1", "a", "1.5", "[]", "{}"],
            "device": ["meta", "xla", "cuda:abc", "''", "cpu:0:1", "1"],
            "name": ["/tmp/elsewhere", "..", "a/b", "''", ".hidden", "x" * 200, "a\\b"],
            "data.tasks": ["0", "-1", "x", "1000000000000000000000000000000"], "data.val_fraction": ["1", "-0.1", "a"],
            "data.dataset": ["nope", "[]"], "data.class_order": ["[1,1]", "x"], "data.options.image_size": ["0", "-3"],
            "learner.epochs": ["-1", "x"], "learner.name": ["nope", "5"], "memory.size": ["-5", "x"],
            "model.backbone": ["module:os:system", "module:no_such_mod_q:f", "module:", "nope", "module:json:loads"],
            "model.options": ["5", "{width: -1}", "{nope: 1}"], "compress.steps": ["x", "[{nope: {}}]"],
            "export.onnx": ["maybe"], "version": ["2"], "learner": ["[]"]}
    cases += [["run", "--out", f"{o}/r", "--no-progress", "--set", f"{k}={v}"] for k, vs in sets.items() for v in vs]
    cases += [["run", "--set", s, "--out", f"{o}/r"] for s in ("noequals", "=3", "seed.x=1", "a..b=1", "x=[")]
    cases += [["run", "--out", str(f["file"]), *RUN_FAST], ["run", "--out", str(f["foreign"]), *RUN_FAST],
              ["run", "--out", str(f["foreign"]), "--resume", *RUN_FAST], ["run", "--resume", str(f["foreign"])],
              ["run", "--resume", f"{o}/none"], ["run", "--resume", str(f["file"])],
              ["run", "--resume", str(f["dir"]), "--out", f"{o}/other"], ["run", "nope-recipe"],
              ["run", f"{o}/missing.yaml"], ["list", "extra"]]
    # model verbs: --out paths, missing models, headers of the wrong types
    outs = {"quantize": (["--out"], ".ccl"), "prune": (["--ratio", "0.5", "--out"], ".safetensors"),
            "export": (["--onnx", "--out"], ".onnx"), "sensitivity": (["--out"], "")}
    for verb, (flags, ext) in outs.items():
        cases += [[verb, ck, *flags, str(f["dir"]) if verb != "sensitivity" else str(f["file"])],
                  [verb, ck, *flags, f"{f['file']}/x{ext}"], [verb, f"{o}/none.safetensors", *flags, f"{o}/x{ext}"],
                  [verb, str(f["foreign"]), *flags, f"{o}/x{ext}"], [verb, str(f["metrics:binary"]), *flags, f"{o}/x{ext}"]]
        cases += [[verb, str(p), *flags, f"{o}/{verb}-{k[7:]}{ext}"] for k, p in f.items() if k.startswith("header:")]
    cases += [["quantize", ck, "--bits", b, "--out", f"{o}/q.ccl"] for b in ("0", "-3", "33", "x")]
    cases += [["quantize", ck, "--method", "nope", "--out", f"{o}/q.ccl"], ["quantize", ck, "--qat-epochs", "-2",
                                                                            "--out", f"{o}/q.ccl"]]
    cases += [["prune", ck, "--ratio", r, "--out", f"{o}/p.safetensors"] for r in ("2", "-0.5", "nan", "x")]
    cases += [["prune", ck, "--ratio", "0.5", "--out", f"{o}/p.txt"], ["prune", ck, "--ratio", "0.5", "--method", "nope",
                                                                          "--out", f"{o}/p.safetensors"]]
    cases += [["sensitivity", ck, "--ratios", r, "--out", f"{o}/s"] for r in ("a,b", "", "2,3", "-1")]
    cases += [["export", ck, "--onnx", "--out", f"{o}/e.txt"]]
    # report and compare: metrics files, baselines, seeds, --out
    cases += [["report", str(p)] for k, p in f.items() if k.startswith("metrics:")]
    cases += [["report", f"{o}/none"], ["report", str(f["file"])]]
    cases += [["report", str(f["metrics:no-summary"]), "--baseline", b]
              for b in (f"x={o}/none", "novalue", f"x={f['metrics:binary']}", f"x={f['metrics:tasks5']}", "=", "x=")]
    cases += [["compare", "--seeds", s, "--out", f"{o}/c"] for s in ("a,b", "1.5", ",", "")]
    cases += [["compare", "--learners", v, "--seeds", "0", "--out", f"{o}/c", *RUN_FAST[1:]] for v in ("nope", ",")]
    cases += [["compare", "--seeds", "0", "--out", str(f["file"]), *RUN_FAST[1:]],
              ["compare", "--seeds", "0", "--out", str(f["foreign"]), *RUN_FAST[1:]],
              ["compare", str(f["yaml:dict300"]), "--out", f"{o}/c"], ["compare", "--set", "seed=10**29", "--out", f"{o}/c"]]
    return cases


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return _files(tmp_path_factory.mktemp("bad-cli"))


def _call(argv: list[str], capsys) -> tuple[int, str, Clock]:
    clock = Clock()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse: a usage error is a named error with exit 2 too
        code = e.code if isinstance(e.code, int) else 1
    except Exception as e:  # escaped main(): a traceback for a user; collected to list them all
        return -1, f"Traceback: {type(e).__name__}: {e}", clock
    return code, capsys.readouterr().err, clock


def test_every_verb_refuses_every_bad_command_line_by_name(files, tmp_path, capsys) -> None:
    cases = _cases(files, tmp_path)
    verbs = {c[0] for c in cases if c}
    assert verbs == set(COMMANDS) and len(cases) >= 200, (sorted(verbs), len(cases))
    before = {p: p.read_bytes() for p in (files["file"], files["foreign"] / "notes.txt")}
    bad = []
    for argv in cases:
        code, err, clock = _call(argv, capsys)
        if code != 2 or "Traceback" in err or "error:" not in err or not clock.within(CALL_S):
            bad.append(f"{argv}: exit {code} in {clock}: {err[-300:]}")
    assert not bad, f"{len(bad)} of {len(cases)}:\n" + "\n".join(bad)
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in files["foreign"].iterdir()) == ["notes.txt", "tasks"]


def test_a_few_in_a_real_subprocess(files, tmp_path) -> None:
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    for argv in (["run", "--set", "seed=10**29"], ["report", str(files["metrics:binary"])],
                 ["quantize", str(files["ckpt"]), "--out", str(files["dir"])]):
        out = subprocess.run([sys.executable, "-m", "compactcl", *argv], capture_output=True, text=True,
                             timeout=60, env=env, cwd=tmp_path)
        assert out.returncode == 2 and "error:" in out.stderr and "Traceback" not in out.stderr, (argv, out.stderr)
