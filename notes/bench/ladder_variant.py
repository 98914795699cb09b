# Variant of rung 5 on the saved Fashion-MNIST teacher/student: no final pruning, 4-bit k-means + 1 QAT epoch.
import copy, torch
torch.set_num_threads(1)
from compactcl.pipeline.recipe import load_recipe
from compactcl.pipeline.run import build_stream
from compactcl.pipeline.ladder import _kd, _subset
from compactcl.models.checkpoint import load_checkpoint
from compactcl.compress.quantize import KMeansQuantConfig, QATConfig, qat_
from compactcl.export.artifact import save_artifact, load_artifact
from compactcl.engine.loop import accuracy
r = load_recipe("ladder", ["data.dataset=fashion-mnist"])
task = build_stream(r).tasks[0]
train = _subset(task.train, 20000, 0)
t = load_checkpoint("/tmp/ladder-fmnist/teacher.safetensors").eval().requires_grad_(False)
s = load_checkpoint("/tmp/ladder-fmnist/student.safetensors")
print("student fp32 test", accuracy(s, task.test))
qat_(s, KMeansQuantConfig(bits=4), train, QATConfig(epochs=1, lr=1e-3, seed=4), loss_fn=_kd(t, 1.0, 0.5))
n = save_artifact(s, "/tmp/ladder-variant.ccl")
print("variant: student 4-bit kmeans, no prune: bytes", n, "test", accuracy(load_artifact("/tmp/ladder-variant.ccl"), task.test))
