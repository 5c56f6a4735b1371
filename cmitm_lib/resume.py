"""Exact resume of a pre-training run: a seeded data order, per-step seeds, and atomic checkpoints.

A run killed at any moment and resumed from its last checkpoint reaches bit for bit the weights of
the uninterrupted run (tested in tests/test_resume.py on the CPU in deterministic mode). Three
pieces make that so:

- `EpochBatches`, the data order: epoch e visits a permutation drawn from (seed, e) alone, cut into
  global batches; rank r of W loads slice r of each. It can start at batch k of an epoch, so a
  resumed run skips exactly the batches already done.
- Per-batch seeds, the randomness: each batch's crops, flips and word masks are drawn with torch's
  RNG seeded from (seed, epoch, batch, rank, 0) (`SeededBatches`, in whichever process loads the
  batch, worker or main), and before each step the loop seeds torch (CPU and CUDA) from
  (seed, epoch, batch, rank, 1) for the image masks and dropout. So the same batch gets the same
  randomness with any ``num_workers``, with or without a restart, on every rank.
- `save`: one file, ``resume.safetensors``, written to a temporary name and renamed
  (``os.replace``), so a kill leaves the previous checkpoint or the new one, never half of one.
  Tensors (weights, AdamW moments and steps, RNG states) are safetensors entries; everything else
  (sampler position, the epoch's running sums, history, stage config, optimizer skeleton, scheduler
  state, Python RNG state) is plain JSON in the file's header metadata (`describe` prints it).
  Nothing is pickled. Only states whose loss and weights are finite are written.

The RNG states (Python ``random``, numpy, torch CPU and CUDA) are saved and restored too: the loop
does not depend on them (it re-seeds per step), but any other code drawing random numbers in the
resumed process continues the stream of the saved one (rank 0's streams under torchrun).
Not covered: a different world size or batch size on resume (refused with a message), and
nondeterministic kernels (on GPUs bit-exactness also needs deterministic algorithms).
"""
from __future__ import annotations

import json
import os
import random
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset, Sampler

from . import distributed
from .config import flat_diff
from .paths import resolve

FILE = "resume.safetensors"
FORMAT = "cmitm-resume-1"


def derive_seed(*keys: int) -> int:
    """A 32-bit seed that is a fixed function of non-negative integer keys (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


class EpochBatches(Sampler):
    """Batch sampler: this rank's batches of one epoch, optionally from batch ``start`` on.

    The order is ``torch.randperm`` seeded from (seed, epoch); global batch b is the slice
    [b * batch_size, (b + 1) * batch_size) of it (the last partial batch is dropped) and rank r
    takes the r-th of its ``world`` equal parts. So global batch b holds the same pairs whatever the
    number of processes. ``batches`` caps the batches per epoch (gradient accumulation keeps whole
    optimizer steps). Yields (seed of the batch, indices) for `SeededBatches`.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1,
                 batches: int | None = None):
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.per_rank = batch_size // world
        self.batches = n // batch_size if batches is None else min(batches, n // batch_size)  # per epoch
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.batches - self.start

    def __iter__(self):
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(derive_seed(self.seed, self.epoch)))
        for b in range(self.start, self.batches):
            lo = b * self.batch_size + self.rank * self.per_rank
            yield derive_seed(self.seed, self.epoch, b, self.rank, 0), order[lo:lo + self.per_rank].tolist()


class SeededBatches(Dataset):
    """Loads and collates a batch (seed, indices) from `EpochBatches` with torch's CPU RNG seeded to
    ``seed`` inside ``fork_rng``, so the caller's RNG stream is untouched. Use with
    ``DataLoader(..., batch_sampler=EpochBatches(...), collate_fn=as_is)``."""

    def __init__(self, dataset: Dataset, collate):
        self.dataset, self.collate = dataset, collate

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, batch):
        seed, indices = batch
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # CPU only: a worker or the main process
            return self.collate([self.dataset[i] for i in indices])


def as_is(batch):
    """The collate_fn for `SeededBatches`, which returns batches already collated."""
    return batch


# ---------------------------------------------------------------------------------------------
# The checkpoint file
# ---------------------------------------------------------------------------------------------
def checkpoint_path(where: str | Path) -> Path:
    """The checkpoint file: ``where`` itself if it is a file, else ``where/resume.safetensors``."""
    where = resolve(where)
    return where if where.suffix == ".safetensors" else where / FILE


def find(where: str | Path) -> Path:
    """The checkpoint to resume from, or a FileNotFoundError naming the file that was expected."""
    path = checkpoint_path(where)
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint to resume from: {path} does not exist. It is written every checkpoint_every "
            f"steps (--checkpoint-every N) into checkpoint_dir (the CLI: --checkpoint-out); start the "
            f"run without resume first")
    return path


def _rng_state() -> tuple[dict, dict]:
    version, keys, gauss = random.getstate()
    _, np_keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {"rng/torch": torch.get_rng_state(), "rng/numpy": torch.from_numpy(np_keys.astype(np.int64))}
    if torch.cuda.is_available():
        tensors.update({f"rng/cuda/{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return tensors, {"python": [version, list(keys), gauss], "numpy": [int(pos), int(has_gauss), float(cached)]}


def _set_rng_state(tensors: dict, state: dict) -> None:
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", tensors["rng/numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng/torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng/cuda/")), key=lambda k: int(k[9:]))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _flatten_optimizer(state_dict: dict) -> tuple[dict, dict]:
    """An optimizer state_dict as named tensors ``optim/<param id>/<name>`` plus a JSON skeleton."""
    tensors, skeleton = {}, {"state": {}, "param_groups": state_dict["param_groups"]}
    for pid, entries in state_dict["state"].items():
        skeleton["state"][str(pid)] = {}
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optim/{pid}/{name}"] = value
            else:
                skeleton["state"][str(pid)][name] = value
    return tensors, skeleton


def _unflatten_optimizer(tensors: dict, skeleton: dict) -> dict:
    state = {int(pid): dict(entries) for pid, entries in skeleton["state"].items()}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, pid, name = key.split("/", 2)
            state[int(pid)][name] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in skeleton["param_groups"]]
    return {"state": state, "param_groups": groups}


def save(path: str | Path, model: torch.nn.Module, optimizer, scheduler, meta: dict) -> Path:
    """Write the checkpoint atomically: ``<path>.tmp`` first, then ``os.replace`` onto ``path``.

    ``meta`` (JSON-able) holds the position, the running sums, the history and the config.
    """
    path = checkpoint_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opt_tensors, opt_skeleton = _flatten_optimizer(optimizer.state_dict())
    rng_tensors, rng_json = _rng_state()
    tensors = {**{f"model/{k}": v for k, v in model.state_dict().items()}, **opt_tensors, **rng_tensors}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    state = {"format": FORMAT, **meta, "optimizer": opt_skeleton, "scheduler": scheduler.state_dict(),
             "rng": rng_json}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"state": json.dumps(state)})
    with open(tmp, "rb+") as f:  # on disk before the rename, so a crash cannot leave an empty file
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def describe(path: str | Path) -> dict:
    """The JSON part of a checkpoint (position, history, config, ...), read without the tensors."""
    with safe_open(str(checkpoint_path(path)), "pt") as f:
        metadata = f.metadata() or {}
    if "state" not in metadata or json.loads(metadata["state"]).get("format") != FORMAT:
        raise ValueError(f"{path} is not a cmitm resume checkpoint (written by train.pretrain with checkpoint_dir)")
    return json.loads(metadata["state"])


def load(path: str | Path, model: torch.nn.Module, optimizer, scheduler) -> dict:
    """Restore model, optimizer, scheduler and RNG states in place; return the JSON state.

    Call after the model is on its device and the optimizer and scheduler are built.
    """
    path = checkpoint_path(path)
    state = describe(path)
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    weights = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise ValueError(f"checkpoint {path} does not fit this model (another preset or vocabulary?): {e}") from None
    optimizer.load_state_dict(_unflatten_optimizer(tensors, state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(tensors, state["rng"])
    return state


# ---------------------------------------------------------------------------------------------
# One run's checkpoints: start or resume, write only finite states, name the last good one
# ---------------------------------------------------------------------------------------------
class Checkpointer:
    """The resume checkpoints of one pre-training run (``checkpoint_dir`` None: none are written).

    ``run`` is the JSON description a resumed run must match (stage, seed, processes, data size, stage
    config; only the lr may differ). ``last_good`` is the newest checkpoint with finite weights, named
    in the message of a non-finite loss.
    """

    def __init__(self, checkpoint_dir, every: int, run: dict, model, optimizer, scheduler, per_epoch: int, total: int):
        self.dir, self.every, self.run = checkpoint_dir, every, run
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.per_epoch, self.total = per_epoch, total
        self.last_good: Path | None = None

    def start(self, resume: bool | str | Path, lr: float) -> tuple[list, int, int, dict, float, list]:
        """(history, epoch, batch, the epoch's running sums, its seconds, its unreadable images) to start
        from: a resumed checkpoint's, or a fresh run's (a warning when it will overwrite a checkpoint)."""
        if resume:
            self.last_good = find(self.dir if resume is True else resume)
            state = load(self.last_good, self.model, self.optimizer, self.scheduler)
            check_same_run(state["run"], self.run, self.last_good)
            if state["run"]["config"]["lr"] != lr:
                set_peak_lr(self.optimizer, self.scheduler, lr)
            rank, world = distributed.get_rank(), distributed.get_world_size()
            return (state["history"], *state["position"], state["sums"][rank], state["seconds"],
                    state.get("unreadable", [[]] * world)[rank])
        if self.dir is not None and checkpoint_path(self.dir).exists():
            warnings.warn(f"{checkpoint_path(self.dir)} exists and will be overwritten by this new run; pass "
                          f"resume=True (--resume) to continue it instead", stacklevel=3)
        return [], 0, 0, {}, 0.0, []

    def due(self, step: int, done: int) -> bool:
        """A mid-epoch checkpoint after this step (every ``every`` steps, not at an epoch's end)."""
        return self.dir is not None and bool(self.every) and step % self.every == 0 and done < self.per_epoch

    def write(self, epoch: int, done: int, sums: dict, seconds: float, step: int, bad: list[str],
              history: list[dict]) -> Path | None:
        """Checkpoint after ``done`` batches of ``epoch`` (``step`` in all); only finite weights."""
        if self.dir is None:
            return None
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise FloatingPointError(self.nonfinite("the weights", epoch + 1, done, step))
        position = [epoch, done] if done < self.per_epoch else [epoch + 1, 0]
        keys = list(sums)  # every rank's running sums of the epoch, so that its means stay exact
        sums = [dict(zip(keys, row)) for row in distributed.all_gather_floats([sums[key] for key in keys])]
        bad = distributed.all_gather_objects(bad)  # every rank's unreadable images of the epoch so far
        path = checkpoint_path(self.dir)
        if distributed.is_main():
            save(path, self.model, self.optimizer, self.scheduler,
                 {"run": self.run, "position": position, "step": step, "sums": sums, "seconds": seconds,
                  "history": history, "unreadable": bad})
        self.last_good = path
        return path

    def nonfinite(self, what: str, epoch: int, batch: int, step: int) -> str:
        """The FloatingPointError message; epoch, batch and step count from 1."""
        lr = self.scheduler.get_last_lr()[0]
        where = (f"The last good checkpoint is {self.last_good}: resume from it with a lower lr "
                 f"(pretrain(..., resume=..., lr=...); cmitm pretrain ... --resume --lr ...)" if self.last_good else
                 "No checkpoint was written before it (pass checkpoint_dir / --checkpoint-every to keep one)")
        return (f"{self.run['stage']}: {what} became non-finite at epoch {epoch}, step {step} of {self.total} "
                f"(batch {batch} of {self.per_epoch} in the epoch), lr {lr:.4g}. Lower lr or check the data. {where}.")


def check_same_run(saved: dict, now: dict, path) -> None:
    """Resuming continues the same run: same stage, seed, processes, data size and stage config (lr aside)."""
    diff = flat_diff(saved, now, ignore=("config.lr",), names=("checkpoint", "now"))
    if diff:
        raise ValueError(f"checkpoint {path} was written by another run ({'; '.join(diff)}); resume with the "
                         f"same settings (only lr may change), or start a new run in another checkpoint_dir")


def set_peak_lr(optimizer, scheduler, lr: float) -> None:
    """A new peak lr for the rest of a resumed run: the same warmup-cosine curve, scaled."""
    scheduler.base_lrs = [lr] * len(scheduler.base_lrs)
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["initial_lr"], group["lr"] = lr, lr * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
