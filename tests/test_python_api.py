"""compactcl.run from Python: the README's "From Python" code runs as written, in-memory data and a user
model go in, and the run folder holds what a CLI run writes."""

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import compactcl
from compactcl import CompactCLError
from compactcl.cli.main import main
from compactcl.pipeline.recipe import load_recipe

README = Path(__file__).parents[1] / "README.md"


def _python_blocks(section: str) -> list[str]:
    text = README.read_text().split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _files(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}


def test_the_readme_from_python_example_runs_and_writes_a_cli_run_folder(tmp_path, monkeypatch, capsys):
    factory_module, script = _python_blocks("From Python")
    (tmp_path / "my_models.py").write_text(factory_module)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace = {"__name__": "readme"}
    exec(compile(script, "README From Python", "exec"), namespace)
    final_accuracy, deployed_bytes = map(float, capsys.readouterr().out.split()[-2:])
    assert final_accuracy > 0.8 and deployed_bytes <= 4000  # measured 0.89 in 2,700 bytes (5 epochs a task)
    run = tmp_path / "runs" / "my-run"
    # the same recipe through the CLI (its own data and model): the same run folder layout
    doc = compactcl.load(run / "final" / "deployed.ccl")  # the deployed file loads back
    assert doc.num_classes == 10
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():  # the README's two loads are the run's two final models
        assert torch.equal(namespace["deployed"](x), doc(x))
        assert torch.equal(namespace["working"](x), compactcl.load(run / "final" / "working.safetensors")(x))
    cli = tmp_path / "cli"
    assert main(["run", "--no-progress", "--out", str(cli), "--set", "data.tasks=5", "--set", "learner={name: icarl, epochs: 1}",
                 "--set", "model.options.width=4", "--set", "export.onnx=false", "--set", "compress.budget={bytes: 8000}",
                 "--set", "compress.steps=[{quantize: {method: kmeans, bits: 4, qat_epochs: 0}}]"]) == 0
    assert _files(run) == _files(cli)


def test_a_torch_dataset_and_a_recipe_object_go_in(tmp_path):
    class Pairs(torch.utils.data.Dataset):  # (image, label) with 0..255 pixels, like torchvision's
        def __init__(self, n):
            g = np.random.default_rng(0)
            self.y = np.arange(n) % 4
            self.x = (g.random((n, 1, 6, 6)) * 60 + self.y[:, None, None, None] * 60).astype(np.uint8)

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return torch.from_numpy(self.x[i]), int(self.y[i])

    recipe = load_recipe(None, ["data.tasks=2", "data.all_classes=false", "learner={name: icarl, epochs: 10}", "model.backbone=mlp",
                                "model.options={hidden: [32]}", "export.onnx=false"])
    recipe = recipe.set("compress", None)
    doc = compactcl.run(recipe, data=Pairs(200), out=tmp_path / "run", progress=False, log=lambda _m: None)
    assert doc["recipe"]["data"]["dataset"] == "python" and len(doc["tasks"]) == 2
    assert doc["summary"]["working"]["final_accuracy"] > 0.6  # brightness separates the 4 classes
    with pytest.raises(CompactCLError, match="handed in from Python"):  # its recorded recipe cannot reload the data
        compactcl.run(str(tmp_path / "run" / "recipe.yaml"), out=tmp_path / "run2", log=lambda _m: None)


def test_bad_recipe_and_data_types_are_named():
    with pytest.raises(CompactCLError, match="recipe must be a name, a path, a dict or a Recipe"):
        compactcl.run(42)
    with pytest.raises(CompactCLError, match="a Dataset of \\(image, label\\)"):
        compactcl.run(None, data=object(), out=os.devnull)


def test_a_model_handed_in_is_copied_and_checked_before_training(tmp_path):
    from torch import nn

    from compactcl.models import from_module

    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(CompactCLError, match="wrap it with compactcl.models.from_module"):
        compactcl.run(None, model=plain, out=tmp_path / "a", log=lambda _m: None)
    wrapped = from_module(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), head="1")  # no factory: not saveable
    with pytest.raises(CompactCLError, match="no factory"):
        compactcl.run(None, model=wrapped, out=tmp_path / "b", log=lambda _m: None,
                      overrides=["learner.name=icarl"])
    assert not (tmp_path / "b" / "tasks").exists()  # refused before any training
    assert wrapped.head.out_features == 10  # the caller's model is left as it was
