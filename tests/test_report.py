import json
import re

import pytest

from compactcl import CompactCLError
from compactcl.cli.main import main
from compactcl.report.html import build_report


def _doc():
    rows = [{"index": 0, "classes": [3, 1], "accuracy": {"working": [0.9], "deployed": [0.8]},
             "bytes": {"fp32": 4000, "deployed": 400}, "params": 1000, "flops": 5000, "seconds": 1.0,
             "deploy": {"budget_bytes": 500}},
            {"index": 1, "classes": [0, 2], "accuracy": {"working": [0.7, 0.9], "deployed": [0.6, 0.8]},
             "bytes": {"fp32": 4400, "deployed": 450}, "params": 1100, "flops": 5100, "seconds": 1.5,
             "deploy": {"budget_bytes": 500}}]
    summ = {"average_incremental_accuracy": 0.85, "final_accuracy": 0.8, "forgetting": 0.2, "bwt": -0.2}
    return {"schema": "compactcl.metrics/1", "status": "complete", "recipe": {"name": "t"}, "deployed_note": "x",
            "tasks": rows, "summary": {"working": summ, "deployed": {**summ, "final_accuracy": 0.7}}}


def test_report_is_self_contained_with_plots_and_table():
    text = build_report(_doc(), {"finetune": [0.9, 0.45]})
    assert text.count("data:image/png;base64,") == 2
    assert not re.search(r"(src|href)=\"https?://", text)  # nothing fetched: opens offline
    assert "<td>450</td>" in text and "<td>500</td>" in text  # deployed bytes and budget in the table
    assert "0.7000" in text  # deployed final accuracy


def test_report_command_rebuilds_from_metrics(tmp_path, capsys):
    doc = _doc()  # figures found nowhere else, so the report can only have read them from metrics.json
    doc["recipe"]["name"] = "from-the-file"
    doc["summary"]["working"] = {"average_incremental_accuracy": 0.8123, "final_accuracy": 0.7891,
                                 "forgetting": 0.1357, "bwt": -0.0246}
    doc["tasks"][1]["bytes"]["deployed"] = 4321
    doc["tasks"][1]["flops"] = 98765
    (tmp_path / "metrics.json").write_text(json.dumps(doc))
    assert main(["report", str(tmp_path)]) == 0
    text = (tmp_path / "report.html").read_text()
    assert "<title>compactcl run: from-the-file</title>" in text
    assert text.count("data:image/png;base64,") == 2  # both figures drawn
    assert ("<tr><td>working</td><td>0.8123</td><td>0.7891</td><td>0.1357</td><td>-0.0246</td></tr>"
            "<tr><td>deployed</td><td>0.8500</td><td>0.7000</td><td>0.2000</td><td>-0.2000</td></tr>") in text
    # per task: mean working / deployed accuracy over the tasks seen, params, FLOPs, bytes, budget, then
    # bits, update bytes, ONNX bytes / agreement / ms (none recorded here), seconds, deploy seconds, warnings
    assert ("<tr><td>0</td><td>3, 1</td><td>0.9000</td><td>0.8000</td><td>1,000</td><td>5,000</td><td>4,000</td>"
            "<td>400</td><td>500</td><td>-</td><td>0</td><td>-</td><td>-</td><td>-</td><td>1.0</td><td>0.0</td>"
            "<td>0</td></tr>") in text
    assert ("<tr><td>1</td><td>0, 2</td><td>0.8000</td><td>0.7000</td><td>1,100</td><td>98,765</td><td>4,400</td>"
            "<td>4,321</td><td>500</td><td>-</td><td>0</td><td>-</td><td>-</td><td>-</td><td>1.5</td><td>0.0</td>"
            "<td>0</td></tr>") in text
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_empty_run_has_nothing_to_report():
    doc = _doc()
    doc["tasks"] = []
    with pytest.raises(CompactCLError, match="no finished task"):
        build_report(doc)


def test_report_shows_the_deploy_warnings_first():
    from compactcl.report.html import build_report

    row = {"index": 0, "classes": [0, 1], "accuracy": {"working": [0.9], "deployed": [0.5]},
           "bytes": {"fp32": 100, "deployed": 10}, "params": 25, "flops": 50, "seconds": 1.0,
           "deploy": {"warnings": ["the deployed model is near chance <check>"]}}
    summary = {m: {"average_incremental_accuracy": 0.5, "final_accuracy": 0.5, "forgetting": 0.0, "bwt": 0.0}
               for m in ("working", "deployed")}
    page = build_report({"recipe": {"name": "r"}, "tasks": [row], "summary": summary})
    assert page.index("Warnings") < page.index("At a glance")
    assert "task 0: the deployed model is near chance &lt;check&gt;" in page


def test_report_has_the_final_confusion_matrix_with_class_names():
    from compactcl.report.html import build_report

    row = {"index": 0, "classes": [3, 1], "accuracy": {"working": [0.9], "deployed": [0.75]},
           "bytes": {"fp32": 100, "deployed": 10}, "params": 25, "flops": 50, "seconds": 1.0,
           "confusion_deployed": {"classes": [3, 1], "matrix": [[3, 1], [1, 3]]}}
    summary = {m: {"average_incremental_accuracy": 0.75, "final_accuracy": 0.75, "forgetting": 0.0, "bwt": 0.0}
               for m in ("working", "deployed")}
    page = build_report({"recipe": {"name": "r"}, "tasks": [row], "summary": summary,
                         "class_names": ["zero", "one", "two", "three"]})
    assert "Final deployed model, per class" in page
    assert "<td>three</td><td>0.7500</td><td>4</td>" in page and "<td>one</td><td>0.7500</td><td>4</td>" in page
    assert "<details><summary>Recipe</summary>" in page and "name: r" in page


def test_run_records_the_deployed_confusion_matrix(tmp_path):
    from pathlib import Path

    import numpy as np

    recipe = Path(__file__).parent / "data" / "tiny.yaml"
    assert main(["run", str(recipe), "--no-progress", "--out", str(tmp_path / "run"), "--set", "data.tasks=2", "--set", "data.all_classes=false"]) == 0
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())["tasks"]
    conf = rows[-1]["confusion_deployed"]
    m = np.asarray(conf["matrix"])
    assert conf["classes"] == rows[0]["classes"] + rows[1]["classes"] and m.shape == (4, 4)
    # the diagonal over task 0's rows gives the accuracy recorded for task 0 (stream labels 0, 1)
    assert abs(np.trace(m[:2, :2]) / m[:2].sum() - rows[-1]["accuracy"]["deployed"][0]) < 1e-6
