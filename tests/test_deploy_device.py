"""The deploy step trains where the run trains: distillation, prune fine-tuning and QAT all run on
the run's device (on a GPU run the deploy step must not fall back to the CPU)."""

import importlib
from pathlib import Path

import pytest
import torch

from compactcl.compress.quantize import qat as qat_module
from compactcl.engine import loop
from compactcl.pipeline import compress as compress_module
from compactcl.pipeline.recipe import load_recipe
from compactcl.pipeline.run import run_recipe

RECIPE = Path(__file__).parent / "data" / "tiny-compressed.yaml"


def _spy_on_training(monkeypatch) -> list[tuple[str, str, str]]:
    """(desc, TrainConfig.device, device of the model's parameters) of every train() call."""
    calls = []

    def spy(model, data, loss_fn, cfg, desc="train", hooks=None):
        calls.append((desc, str(torch.device(cfg.device)), str(next(model.parameters()).device)))
        return loop.train(model, data, loss_fn, cfg, desc, hooks)

    distill_module = importlib.import_module("compactcl.compress.distill.distill")  # the package re-exports a function
    for module in (distill_module, qat_module, compress_module):
        monkeypatch.setattr(module, "train", spy)
    return calls


def _run_on(device: str, tmp_path, monkeypatch) -> list[tuple[str, str, str]]:
    calls = _spy_on_training(monkeypatch)
    recipe = load_recipe(str(RECIPE), [f"device={device}", "data.tasks=2", "data.all_classes=false", "export.int8=false"])
    run_recipe(recipe, tmp_path / "run", progress=False, log=lambda _m: None)
    return calls


def test_every_deploy_training_step_runs_on_the_run_device(tmp_path, monkeypatch):
    calls = _run_on("cpu", tmp_path, monkeypatch)
    assert {desc for desc, _, _ in calls} == {"distill", "prune finetune", "qat"}
    assert all(cfg == "cpu" and params == "cpu" for _, cfg, params in calls), calls


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_deploy_step_on_a_gpu_run_stays_on_the_gpu(tmp_path, monkeypatch):
    calls = _run_on("cuda", tmp_path, monkeypatch)
    assert {desc for desc, _, _ in calls} == {"distill", "prune finetune", "qat"}
    assert all(cfg.startswith("cuda") and params.startswith("cuda") for _, cfg, params in calls), calls
