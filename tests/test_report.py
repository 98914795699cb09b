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
    (tmp_path / "metrics.json").write_text(json.dumps(_doc()))
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "report.html").stat().st_size > 10_000
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_empty_run_has_nothing_to_report():
    doc = _doc()
    doc["tasks"] = []
    with pytest.raises(CompactCLError, match="no finished task"):
        build_report(doc)
