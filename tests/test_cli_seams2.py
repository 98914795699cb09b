"""The model verbs agree: one baseline size for one model, `prune --ratios` reads what `sensitivity`
writes, class names (not ids) in tables, a pruned .safetensors no larger than the dense one, and
compactcl.load(RUN) means what the CLI means by a run folder."""

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

import compactcl
from compactcl import CompactCLError
from compactcl.cli.main import main
from compactcl.cli.run import summary_table
from compactcl.compress.prune.sensitivity import read_sensitivity
from compactcl.data import from_arrays
from compactcl.pipeline.recipe import load_recipe
from compactcl.report.html import build_report

TINY = ["--set", "data.tasks=2", "--set", "data.classes_per_task=2", "--set", "data.all_classes=false",
        "--set", "learner.epochs=1", "--set", "model.options.width=4", "--set", "learner.name=icarl",
        "--set", "compress.budget={bytes: 1000000}",
        "--set", "compress.steps=[{distill: {student: cnn, options: {width: 3}, epochs: 1}}, "
                 "{quantize: {method: linear, bits: 8, qat_epochs: 0}}]"]


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("seams2") / "run"
    rc, _, err = _cli("run", "--out", str(out), "--quiet", *TINY)
    assert rc == 0, err
    return out


@pytest.fixture(scope="module")
def sens(run, tmp_path_factory):
    """sensitivity of the run's working model with recommended ratios (--target), its --json saved to a file."""
    folder = tmp_path_factory.mktemp("sens")
    rc, out, err = _cli("sensitivity", str(run), "--model", "working", "--ratios", "0,0.3,0.6,0.9", "--target", "0.5",
                        "--out", str(folder), "--json")
    assert rc == 0, err
    (folder / "printed.json").write_text(out)
    return folder, json.loads(out)


def test_every_verb_prints_one_baseline_for_one_model(run, sens, tmp_path):
    working = compactcl.load(run, model="working")
    want = 4 * sum(p.numel() for p in working.parameters())
    doc = json.loads((run / "metrics.json").read_text())
    assert doc["tasks"][-1]["bytes"]["fp32"] == want  # what the run recorded is the same count
    figures = {"sensitivity": sens[1]}
    for verb, extra in (("quantize", ["--out", str(tmp_path / "q.ccl")]),
                        ("export", ["--no-latency", "--out", str(tmp_path / "e.onnx")]),
                        ("prune", ["--ratio", "0.5", "--finetune-epochs", "0", "--out", str(tmp_path / "p.ccl")])):
        rc, out, err = _cli(verb, str(run), "--model", "working", *extra, "--json")
        assert rc == 0, err
        figures[verb] = json.loads(out)
    rc, out, err = _cli("report", str(run), "--json")
    assert rc == 0, err
    figures["report"] = json.loads(out)
    assert {v: f["baseline_bytes"] for v, f in figures.items()} == {v: want for v in figures}
    assert len({f["baseline_bytes_kind"] for f in figures.values()}) == 1
    # the tables say it too, labelled; the deployed model (the default) has its own, counted the same way
    line = f"baseline: {want:,} B (fp32 weights: 4 bytes per parameter, buffers not counted)"
    assert line in _cli("quantize", str(run), "--model", "working", "--out", str(tmp_path / "q2.ccl"))[1]
    assert line in _cli("report", str(run))[1]
    deployed = compactcl.load(run)
    rc, out, _ = _cli("quantize", str(run), "--out", str(tmp_path / "q3.ccl"), "--json")
    assert json.loads(out)["baseline_bytes"] == 4 * sum(p.numel() for p in deployed.parameters()) != want


def test_prune_takes_the_ratios_sensitivity_recommends(run, sens, tmp_path):
    folder, printed = sens
    recommended = printed["extra"]["layer_ratios"]
    for source in (folder / "sensitivity.json", folder / "printed.json", folder):  # the file, --json's output, --out
        out = tmp_path / f"p-{source.name}.safetensors"
        rc, text, err = _cli("prune", str(run), "--model", "working", "--ratios", str(source), "--finetune-epochs", "0",
                             "--out", str(out), "--json")
        assert rc == 0, err
        fig = json.loads(text)
        assert fig["method"] == "sensitivity" and fig["ratio"] == pytest.approx(0.5)
        assert fig["layer_ratios"] == pytest.approx(recommended, abs=1e-9)
    pruned = dict(compactcl.load(out).named_modules())
    for name, ratio in recommended.items():  # the saved weights carry those ratios, layer by layer
        w = pruned[name].weight
        assert int((w == 0).sum()) == round(ratio * w.numel()), name


def test_prune_max_drop_keeps_each_layer_within_its_curve(run, sens, tmp_path):
    folder, printed = sens
    rc, text, err = _cli("prune", str(run), "--model", "working", "--ratios", str(folder), "--max-drop", "0.05",
                         "--finetune-epochs", "0", "--out", str(tmp_path / "d.ccl"), "--json")
    assert rc == 0, err
    chosen = json.loads(text)["layer_ratios"]
    assert set(chosen) == set(printed["curves"])
    for name, curve in printed["curves"].items():
        worst = max(printed["baseline"] - a for r, a in zip(printed["ratios"], curve) if r <= chosen[name] + 1e-12)
        assert worst <= 0.05 + 1e-9, name
        beyond = [r for r in printed["ratios"] if r > chosen[name]]
        if beyond:  # it stopped because the next measured ratio dropped more (or it is interpolated short of it)
            assert chosen[name] < beyond[0]


def _bad(tmp_path, name: str, doc) -> str:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(path)


def test_a_bad_ratios_file_is_named_and_exits_2(run, sens, tmp_path):
    good = json.loads((sens[0] / "sensitivity.json").read_text())
    other = {**good, "params": {n: v + 1 for n, v in good["params"].items()}}
    short = {**good, "curves": {n: c[:-1] for n, c in good["curves"].items()}}
    untargeted = {k: v for k, v in good.items() if k != "extra"}
    cases = [(str(tmp_path / "missing.json"), "no such file"),
             (_bad(tmp_path, "text.json", "not json {"), "is not JSON"),
             (_bad(tmp_path, "list.json", [1, 2]), "lacks baseline, ratios, curves or params"),
             (_bad(tmp_path, "short.json", short), "not one accuracy per ratio"),
             (_bad(tmp_path, "other.json", other), "measured on another model"),
             (_bad(tmp_path, "untargeted.json", untargeted), "no recommended ratios")]
    for path, message in cases:
        out = tmp_path / "never.safetensors"
        rc, _, err = _cli("prune", str(run), "--model", "working", "--ratios", path, "--finetune-epochs", "0",
                          "--out", str(out))
        assert rc == 2 and message in err and "Traceback" not in err, (path, err)
        assert not out.exists()
    rc, _, err = _cli("prune", str(run), "--ratios", str(sens[0]), "--method", "structured", "--out", str(out))
    assert rc == 2 and "--method sensitivity" in err
    assert read_sensitivity(sens[0]).extra["target"] == 0.5


def test_pruning_never_makes_the_saved_file_larger(run, tmp_path):
    src = run / "final" / "working.safetensors"
    for method, out in (("magnitude", tmp_path / "m.safetensors"), ("structured", tmp_path / "s.safetensors"),
                        ("magnitude", tmp_path / "m.ccl")):
        rc, text, err = _cli("prune", str(run), "--model", "working", "--method", method, "--ratio", "0.5",
                             "--finetune-epochs", "0", "--out", str(out), "--json")
        assert rc == 0, err
        fig = json.loads(text)
        assert fig["bytes"] == out.stat().st_size and fig["bytes"] <= fig["baseline_file_bytes"]
        if out.suffix == ".safetensors":  # the dense file compared with is the source file itself, header and all
            assert fig["baseline_file_bytes"] == src.stat().st_size
            with safe_open(str(out), "pt") as f, safe_open(str(src), "pt") as g:
                assert set(f.keys()) == set(g.keys())  # no masks saved beside the weights
        if method == "magnitude" and out.suffix == ".safetensors":
            assert fig["bytes"] == src.stat().st_size  # zeros in a dense tensor take the same bytes
        else:
            assert fig["bytes"] < fig["baseline_file_bytes"]  # sparse storage / fewer channels


def test_load_of_a_run_folder_means_the_deployed_model_as_the_cli_does(run, tmp_path):
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(compactcl.load(run)(x), compactcl.load(run / "final" / "deployed.ccl")(x))
        assert torch.equal(compactcl.load(run, model="working")(x),
                           compactcl.load(run / "final" / "working.safetensors")(x))
    with pytest.raises(CompactCLError, match="choose 'deployed'"):
        compactcl.load(run, model="student")
    assert compactcl.checkpoint_data(run)["meta"]["task"] == 1
    rc, _, err = _cli("quantize", str(run), "--out", str(tmp_path / "q.ccl"))
    assert rc == 0 and f"using {run / 'final' / 'deployed.ccl'}" in err


def test_tables_and_step_lines_name_the_classes(tmp_path):
    g = np.random.default_rng(0)
    y = np.arange(160) % 4
    x = (g.random((160, 1, 6, 6)) * 0.25 + y[:, None, None, None] * 0.25).astype(np.float32)
    data = from_arrays(x[:120], y[:120], x[120:], y[120:], class_names=["ant", "bee", "cat", "dog"])
    recipe = load_recipe(None, ["data.tasks=2", "data.all_classes=false", "data.class_order=[3, 2, 0, 1]",
                                "learner={name: icarl, epochs: 1}", "model.backbone=mlp",
                                "model.options={hidden: [8]}", "export.onnx=false"]).set("compress", None)
    lines: list[str] = []
    doc = compactcl.run(recipe, data=data, out=tmp_path / "run", log=lines.append)
    assert any("learns classes [dog, cat]" in s for s in lines), lines
    table = summary_table(doc)
    assert "dog, cat" in table and "ant, bee" in table and "3,2" not in table
    assert "<td>dog, cat</td>" in build_report(doc)
