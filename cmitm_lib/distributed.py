"""Several GPUs (or CPU processes) under ``torchrun``: process group, DDP wrapper, sampler, reductions.

    torchrun --nproc_per_node 4 -m cmitm_lib.cli ...    # 4 processes, one GPU each

Without torchrun every function here is a no-op (one process, world size 1), so the training loop
calls them unconditionally.

How the global batch is split, and what the contrastive loss sees
-----------------------------------------------------------------
- ``batch_size`` is the *global* batch (the paper's 256 = 4 GPUs x 64). Each rank loads
  ``per_rank_batch(batch_size)`` pairs: `train.pretrain` uses `resume.EpochBatches` (global batch b
  of a seeded per-epoch order, split into equal slices by rank, restartable mid-epoch); the
  `distributed_sampler` shard below is the plain PyTorch alternative.
- `losses.info_nce` all-gathers the image and text embeddings of every rank with
  ``torch.distributed.nn.functional.all_gather`` (which keeps the gradient path), so each rank's
  logits are (local B) x (global B): every pair of the global batch is a negative for every other.
  Each rank's loss is the mean over its own rows; DDP averages the gradients over ranks, which is
  exactly the gradient of the global-batch loss (tested in ``tests/test_distributed.py``).
- BatchNorm in the projection heads h_v / h_t normalises over the batch, so it is a second place
  where samples interact. `wrap_ddp` converts it to ``SyncBatchNorm`` on CUDA so the statistics are
  those of the global batch. ``SyncBatchNorm`` only runs on GPUs: on CPU (gloo, used by the tests)
  the statistics stay per rank and a warning says so.
- Gradient accumulation (``pretrain(accum_steps=k)``, ``--accum-steps k``) is there for fewer
  GPUs, but it changes the objective: one optimizer step sums k micro-batches (DDP syncs only the
  last, ``no_sync`` before), and each micro-batch's InfoNCE sees only its own global micro-batch
  (``batch_size / k`` pairs) as negatives: an easier objective with uniform loss 2 ln(B/k), not
  the paper's batch-256 loss. So prefer reaching 256 with more GPUs or a smaller per-GPU footprint
  (bf16, masking already removes 75% of the image tokens); accumulate only when that is not enough.
  (Reconstruction losses are unaffected by accumulation, up to the token-count weighting below.)
- The masked-token loss L_tr averages over the masked tokens of each rank's batch; DDP then averages
  the per-rank means. Ranks with more masked tokens get slightly less weight per token than in a
  one-process run on the same global batch (the usual DDP behaviour for MLM losses); L_vr has the
  same number of masked patches on every rank, so it is exact.
- Freeze modules (`models.set_trainable`) *before* `wrap_ddp`: DDP registers the parameters that
  require gradients when it is built, so re-wrap for each stage. Every trainable parameter gets a
  gradient in every stage, hence no ``find_unused_parameters``.
- Call ``sampler.set_epoch(epoch)`` at the start of each epoch, or every epoch sees the same order.
- Resume checkpoints (`resume`) are written by rank 0 and read by every rank; each rank's running
  loss sums are gathered into them (`all_gather_floats`), so a resumed run's history is exact too.
"""
from __future__ import annotations

import json
import os
import warnings

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from .device import resolve_device


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if _active() else 0


def get_world_size() -> int:
    return dist.get_world_size() if _active() else 1


def init_distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; starts the process group if > 1.

    nccl when CUDA is available (and the process's GPU is set to ``cuda:local_rank``), gloo on CPU.
    Not launched by torchrun (no WORLD_SIZE): (0, 1, 0) and nothing is initialised.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size > 1 and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    if world_size > 1 and not _active():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return rank, world_size, local_rank


def local_device(local_rank: int, device: str = "auto") -> torch.device:
    """The device this process trains on: ``cuda:local_rank`` under torchrun on GPUs, else ``device``."""
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None and get_world_size() > 1:
        dev = torch.device("cuda", local_rank)
    return dev


def is_main() -> bool:
    """True on rank 0 (and in a plain one-process run): the process that prints and saves."""
    return get_rank() == 0


def barrier() -> None:
    if _active():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def cleanup() -> None:
    if _active():
        dist.destroy_process_group()


def all_reduce_mean(value: float) -> float:
    """The mean of a Python number over ranks (e.g. an epoch's loss for logging)."""
    if not _active() or dist.get_world_size() == 1:
        return float(value)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.item() / dist.get_world_size()


def all_gather_floats(values: list[float]) -> list[list[float]]:
    """Every rank's list of Python numbers (same length on all ranks), indexed by rank."""
    if not _active() or dist.get_world_size() == 1:
        return [[float(v) for v in values]]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [o.tolist() for o in out]


def all_gather_objects(value) -> list:
    """Every rank's JSON-able ``value`` (e.g. a list of file names), indexed by rank; sent as JSON bytes
    (nothing is pickled)."""
    if not _active() or dist.get_world_size() == 1:
        return [value]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    data = torch.tensor(list(json.dumps(value).encode()), dtype=torch.uint8, device=device)
    sizes = [int(n[0]) for n in all_gather_floats([len(data)])]
    padded = torch.zeros(max(sizes), dtype=torch.uint8, device=device)
    padded[:len(data)] = data
    out = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(out, padded)
    return [json.loads(bytes(o[:n].tolist()).decode()) for o, n in zip(out, sizes)]


def per_rank_batch(global_batch: int, world_size: int | None = None) -> int:
    """Pairs each rank loads per step; the global batch must split evenly."""
    world_size = get_world_size() if world_size is None else world_size
    if global_batch % world_size:
        raise ValueError(f"batch_size={global_batch} (the global batch) is not divisible by the "
                         f"{world_size} processes; choose a multiple of {world_size}")
    return global_batch // world_size


def wrap_ddp(model: nn.Module, device: torch.device, sync_bn: bool = True) -> nn.Module:
    """DistributedDataParallel over ``model`` when world size > 1, else ``model`` itself.

    Call after `models.set_trainable` and after ``model.to(device)``. With ``sync_bn`` the
    BatchNorm layers become SyncBatchNorm on CUDA (global-batch statistics; the model is modified
    in place, state-dict keys unchanged). On CPU SyncBatchNorm is not supported by PyTorch, so BN
    statistics stay per rank (warning).
    """
    if get_world_size() == 1:
        return model
    device = torch.device(device)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if sync_bn and has_bn:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            warnings.warn("SyncBatchNorm needs GPUs: on CPU the projection heads' BatchNorm uses "
                          "per-rank batch statistics", stacklevel=2)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return DistributedDataParallel(model, device_ids=[index], output_device=index)
    return DistributedDataParallel(model)
