"""Multi-process training with PyTorch's own DistributedDataParallel, launched by ``torchrun``.

``torchrun --nproc_per_node=N -m compactcl run RECIPE`` starts N copies of the command with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set.
:func:`maybe_init` turns those into a process group (``nccl`` when the run uses CUDA, ``gloo``
on CPU); without them everything here answers as a single process (rank 0 of 1) and does
nothing, so the single-process path never pays for this module.

Every rank runs the same program on the same data (the stream, the class order and the
exemplar selection are all seeded); :func:`compactcl.engine.loop.train` splits each global
batch across the ranks and DDP averages the gradients. Rank 0 alone writes the run folder.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import CompactCLError

__all__ = ["is_distributed", "rank", "world_size", "local_rank", "is_main", "maybe_init", "barrier",
           "launched_by_torchrun", "broadcast_module", "resolve_device"]

_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    """True when the torchrun environment variables are present (WORLD_SIZE may still be 1)."""
    return all(k in os.environ for k in _ENV)


def is_distributed() -> bool:
    """True once a process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes files and prints."""
    return rank() == 0


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when PyTorch sees a GPU, else ``cpu``; a CUDA device without CUDA is an error.

    Under torchrun with CUDA, plain ``cuda`` means this process's GPU, ``cuda:LOCAL_RANK``.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise CompactCLError(f"unknown device {name!r}: {e}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CompactCLError(f"device {name!r} asked for, but PyTorch sees no CUDA device "
                                 f"(torch {torch.__version__}, cuda build: {torch.version.cuda}); use --device cpu")
        if dev.index is None and world_size() > 1:
            return f"cuda:{local_rank()}"
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CompactCLError(f"device {name!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) "
                                 "are visible")
    return name


def maybe_init(device: str = "auto", timeout_s: float = 1800.0) -> bool:
    """Initialise the default process group from torchrun's variables; return :func:`is_distributed`.

    Idempotent, and a no-op without the variables (plain ``compactcl run``). The backend is
    ``nccl`` when ``device`` resolves to CUDA, ``gloo`` otherwise (CPU, or no NCCL build).
    ``COMPACTCL_DIST_BACKEND`` overrides the choice.
    """
    if not dist.is_available():
        if launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
            raise CompactCLError("launched by torchrun, but this PyTorch build has no torch.distributed")
        return False
    if dist.is_initialized():
        return is_distributed()
    if not launched_by_torchrun():
        return False
    cuda = device != "cpu" and not device.startswith("cpu") and torch.cuda.is_available() and (
        device == "auto" or device.startswith("cuda"))
    backend = os.environ.get("COMPACTCL_DIST_BACKEND") or ("nccl" if cuda and dist.is_nccl_available() else "gloo")
    if cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, init_method="env://", timeout=timedelta(seconds=timeout_s))
    return is_distributed()


def barrier() -> None:
    """Wait for every rank (no-op on one process)."""
    if is_distributed():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (after training, batch-norm
    statistics differ per rank; this makes every rank hold exactly the same model)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op on one process); returns ``t``."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t
