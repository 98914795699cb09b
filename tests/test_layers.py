"""The architecture holds: the layer contracts in pyproject.toml, no import cycles, a light import."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_import_linter_contracts_are_kept():
    # layers (cli > api > pipeline > report > export > learners|compress > engine|metrics >
    # models|data > utils > errors) and no cycle among the modules of any package
    from importlinter.cli import lint_imports

    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


def test_reading_recipes_and_metrics_does_not_import_torch():
    code = ("import sys, compactcl, compactcl.pipeline.recipe as r, compactcl.report.html; "
            "assert r.list_recipes(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
