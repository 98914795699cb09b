"""`compactcl compare --budgets`: learners at equal total bytes (MEMO's rule), the AUC of the curve."""

import json
from pathlib import Path

import pytest

from compactcl.cli.compare import parse_budgets
from compactcl.cli.main import main
from compactcl.pipeline.budget import choose_split, compact_split, curve_auc, final_model_bytes, split_budget

DATA = Path(__file__).parent / "data"


def test_auc_is_the_trapezoid_area_over_the_budget_range():
    # hand: (200-100)*(0.5+0.7)/2 + (400-200)*(0.7+0.8)/2 = 60 + 150 = 210, over 300 -> 0.7
    assert curve_auc([400, 100, 200], [0.8, 0.5, 0.7]) == pytest.approx(0.7, abs=1e-12)
    assert curve_auc([100, 300], [0.4, 0.4]) == pytest.approx(0.4, abs=1e-12)  # flat curve: its accuracy
    assert curve_auc([500], [0.3]) == 0.3
    with pytest.raises(ValueError):
        curve_auc([100, 200], [0.5])


def test_the_budget_buys_the_model_first_and_the_rest_in_exemplars():
    assert split_budget("der", 10_000, 9_008) == type(split_budget("der", 1, 1))("der", 10_000, 9_008, 992, True)
    s = split_budget("der", 9_000, 9_008)
    assert not s.fits and s.exemplar_bytes == 0
    assert parse_budgets("60000, 90k,1.5M") == [60_000, 90_000, 1_500_000]


def test_a_growing_learner_pays_for_every_branch_it_will_have():
    from compactcl.models import create_backbone

    tiny, sets = str(DATA / "tiny.yaml"), ["data.tasks=3"]  # 3 tasks x 2 digits, 8x8, cnn width 4
    b = create_backbone("cnn", 1, 8, width=4)
    p, d = sum(t.numel() for t in b.parameters()), b.out_dim
    assert final_model_bytes(tiny, sets, "icarl") == 4 * (p + d * 6 + 6)  # one backbone + a 6-class head
    assert final_model_bytes(tiny, sets, "der") == 4 * (3 * p + 3 * d * 6 + 6)  # 3 branches, head over all
    # MEMO shares the shallow blocks: more than one backbone, less than DER
    assert 4 * (p + d * 6 + 6) < final_model_bytes(tiny, sets, "memo") < 4 * (3 * p + 3 * d * 6 + 6)


def test_compare_budgets_runs_each_learner_that_fits_and_keeps_within_the_budget(tmp_path, capsys, monkeypatch):
    from compactcl.report import html

    monkeypatch.setattr(html, "write_report", lambda out: None)  # the report is tested on its own; it is slow
    out = tmp_path / "curve"
    args = ["compare", str(DATA / "tiny.yaml"), "--learners", "icarl,der", "--budgets", "7000,20k", "--seeds", "0",
            "--out", str(out), "--set", "data.tasks=2", "--json"]
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == json.loads((out / "compare.json").read_text())
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pts = {(p["learner"], p["budget"]): p for p in doc["points"]}
    assert not pts["der", 7000]["fits"] and "average_accuracy" not in pts["der", 7000]  # DER's 2 branches > 7000 B
    assert not (out / "der-7000B-seed0").exists()
    for key in (("icarl", 7000), ("icarl", 20000), ("der", 20000)):
        p = pts[key]
        run = json.loads((out / f"{key[0]}-{key[1]}B-seed0" / "metrics.json").read_text())
        assert run["recipe"]["memory"]["bytes"] == key[1] - p["model_bytes"]
        # the model bytes predicted before the run are the ones the run measured; the total stays in budget
        assert run["tasks"][-1]["bytes"]["fp32"] == p["model_bytes"] == p["measured_model_bytes"]
        assert p["measured_total_bytes"] <= key[1]
        assert p["last_accuracy"]["mean"] == run["summary"]["working"]["final_accuracy"]
        assert p["last_accuracy"]["std"] == 0.0  # one seed
        assert p["last_accuracy"]["per_seed"] == [run["summary"]["working"]["final_accuracy"]]
    # more bytes, more exemplars for the same model
    assert pts["icarl", 20000]["exemplars"] > pts["icarl", 7000]["exemplars"]
    assert doc["auc"]["der"]["budgets"] == [20000] and not doc["auc"]["der"]["all_budgets"]
    assert doc["auc"]["der"]["average_accuracy"] == pts["der", 20000]["average_accuracy"]["mean"]
    ia = [pts["icarl", b]["average_accuracy"]["mean"] for b in (7000, 20000)]
    assert doc["auc"]["icarl"]["average_accuracy"] == pytest.approx(sum(ia) / 2, abs=1e-12)


@pytest.mark.parametrize("bad", ["0", "-5", "abc", ",", "1e99"])
def test_bad_budgets_are_refused_with_the_fix(tmp_path, capsys, bad):
    assert main(["compare", str(DATA / "tiny.yaml"), "--budgets", bad, "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "--budgets" in err and "Traceback" not in err


def test_the_model_fraction_is_chosen_by_validation_among_those_that_fit():
    tried = [{"fits": False}, {"fits": True, "val_score": 0.8}, {"fits": True, "val_score": 0.9},
             {"fits": True, "val_score": 0.9}]
    assert choose_split(tried) == 2  # the best; on a tie the first (smaller model share)
    assert choose_split([{"fits": False}]) is None
    assert compact_split(36_000, 0.3) == (10_800, 25_200)


def test_the_new_learners_and_compactcls_point_keep_within_one_budget(tmp_path, capsys, monkeypatch):
    """One total budget, every learner built for the curve (WA, FOSTER, MEMO, BiC) and compactcl's own,
    compressed point, 2 tasks x 2 digits, cnn width 4, 4 epochs."""
    from compactcl.report import html

    monkeypatch.setattr(html, "write_report", lambda out: None)
    out, budget = tmp_path / "curve", 12_000
    args = ["compare", str(DATA / "tiny-budget.yaml"), "--learners", "wa,foster,memo,bic,compactcl",
            "--budgets", str(budget), "--seeds", "0", "--model-fractions", "0.03,0.4", "--out", str(out),
            "--set", "data.tasks=2", "--set", "learner.epochs=4", "--json"]
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    pts = {p["learner"]: p for p in doc["points"]}
    # average incremental accuracy of guessing: 2 classes, then 4. Measured (seed 0): wa .857, foster .891,
    # memo .747, bic .864, compactcl (deployed) .719; a learner that learns nothing stays near .375
    chance = (1 / 2 + 1 / 4) / 2
    for name in ("wa", "foster", "memo", "bic"):
        p = pts[name]
        run = json.loads((out / f"{name}-{budget}B-seed0" / "metrics.json").read_text())
        last = run["tasks"][-1]
        assert p["fits"] and p["scored"] == "working" and run["recipe"]["compress"] is None  # peers: fp32, uncompressed
        assert run["recipe"]["memory"]["bytes"] == budget - p["model_bytes"]
        assert last["bytes"]["learner_total"] == last["bytes"]["fp32"] + last["bytes"]["exemplars"] <= budget
        assert last["bytes"]["exemplars"] == 64 * last["exemplars"]  # uint8 8x8 digits
        assert p["average_accuracy"]["mean"] > chance + 0.1, (name, p["average_accuracy"])
    # compactcl: 3% of 12 kB (360 B) cannot hold the .ccl (its frame alone is ~0.5 kB): that share does not fit
    p = pts["compactcl"]
    tried = {t["model_fraction"]: t for t in p["split_selection"]["tried"]}
    assert not tried[0.03]["fits"] and "over the budget of 360 bytes" in tried[0.03]["reason"]
    assert p["fits"] and p["scored"] == "deployed" and p["model_fraction"] == 0.4
    run_dir = out / f"compactcl-{budget}B-m0.4-seed0"
    run = json.loads((run_dir / "metrics.json").read_text())
    assert run["recipe"]["compress"]["budget"]["bytes"] == 4_800 and run["recipe"]["memory"]["bytes"] == 7_200
    ccl = [(run_dir / "tasks" / f"{t:02d}" / "deployed.ccl").stat().st_size for t in range(2)]
    assert [t["bytes"]["deployed"] for t in run["tasks"]] == ccl  # real file bytes
    assert p["measured_model_bytes"] == max(ccl) <= 4_800
    assert p["measured_total_bytes"] == max(ccl) + run["tasks"][-1]["bytes"]["exemplars"] <= budget
    assert tried[0.4]["val_score"] == pytest.approx(sum(t["deploy"]["val_accuracy"] for t in run["tasks"]) / 2)
    assert p["average_accuracy"]["mean"] == run["summary"]["deployed"]["average_incremental_accuracy"] > chance + 0.1
    assert p["working_fp32_bytes"] == run["tasks"][-1]["bytes"]["fp32"]  # reported, not counted


def test_compactcls_point_needs_a_compress_section(tmp_path, capsys):
    assert main(["compare", str(DATA / "tiny.yaml"), "--learners", "icarl,compactcl", "--budgets", "20k",
                 "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "compress:" in err and "Traceback" not in err
    assert main(["compare", str(DATA / "tiny-budget.yaml"), "--learners", "compactcl:ewc", "--budgets", "20k",
                 "--out", str(tmp_path / "d")]) == 2
    assert "unknown learner 'ewc'" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["0", "1", "abc", "0.5,2", ","])
def test_bad_model_fractions_are_refused_with_the_fix(tmp_path, capsys, bad):
    assert main(["compare", str(DATA / "tiny-budget.yaml"), "--learners", "compactcl", "--budgets", "20k",
                 "--model-fractions", bad, "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "--model-fractions" in err and "Traceback" not in err
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())  # refused before any run


def _fake_doc(val: float, deployed: int) -> dict:
    task = {"deploy": {"val_accuracy": val}, "bytes": {"deployed": deployed, "exemplars": 640, "fp32": 9000},
            "exemplars": 10, "accuracy": {"working": [val], "deployed": [val]}}
    return {"tasks": [task], "summary": {"deployed": {"average_incremental_accuracy": val, "final_accuracy": val}}}


def test_a_split_that_misses_the_budget_on_another_seed_falls_back_to_the_next_best(tmp_path, monkeypatch):
    """The bit search fills a budget to the byte, so the chosen fraction can miss it on a later seed: that
    fraction then does not fit, and the next best by validation is run instead (compare goes on)."""
    from compactcl.errors import BudgetNotMet
    from compactcl.pipeline import budget as bm
    from compactcl.pipeline import run as run_mod

    calls = []

    def fake_run(recipe, out, **kw):
        fraction, seed = float(str(out).split("-m")[1].split("-")[0]), recipe.seed
        calls.append((fraction, seed))
        if (fraction, seed) == (0.5, 1):
            raise BudgetNotMet("deployed.ccl is 5,001 bytes, over the budget of 5,000")
        return _fake_doc({0.2: 0.8, 0.5: 0.9}[fraction], int(fraction * 9000))

    monkeypatch.setattr(run_mod, "run_recipe", fake_run)
    point = bm._compact_point(None, [], "compactcl", "icarl", 10_000, [0.2, 0.5], [0, 1], tmp_path, False,
                              lambda s: None)
    tried = {t["model_fraction"]: t for t in point["split_selection"]["tried"]}
    assert not tried[0.5]["fits"] and tried[0.5]["reason"].startswith("seed 1:")
    assert point["fits"] and point["model_fraction"] == 0.2
    assert calls == [(0.2, 0), (0.5, 0), (0.5, 1), (0.2, 1)]


def test_compactcls_point_without_validation_data_is_refused(tmp_path, monkeypatch):
    from compactcl.errors import CompactCLError
    from compactcl.pipeline import budget as bm
    from compactcl.pipeline import run as run_mod

    monkeypatch.setattr(run_mod, "run_recipe", lambda recipe, out, **kw: _fake_doc(float("nan"), 1000))
    with pytest.raises(CompactCLError, match="data.val_fraction"):
        bm._compact_point(None, [], "compactcl", "icarl", 10_000, [0.2], [0], tmp_path, False, lambda s: None)
