"""One training step of CMITM on a fixed global batch, as rank r of W processes (torchrun) or alone.

    torchrun --nproc_per_node 2 tests/ddp_worker.py WORKDIR     # each rank takes its half
    python tests/ddp_worker.py WORKDIR                          # one process, the whole batch

WORKDIR holds preset.json, state.pt (model weights), batch.pt (the global batch) and job.json
({"stage", "mask_ratio", "seed"}). Every rank writes result_w{W}_r{rank}.pt: its loss, the loss
averaged over ranks, the number of logit columns each InfoNCE call saw, the (DDP-averaged)
gradients and its DistributedSampler shard of range(10).

Masking is made identical to the one-process run: the image masking noise of the global batch is
drawn from one generator (seed ``seed``) row after row, so rank r skips the noise of the r * B rows
before its own and then draws its B rows from the same stream (checked in the test).
Dropout (BERT) is random and the projection heads' BatchNorm uses per-rank statistics on CPU
(SyncBatchNorm is GPU-only), so the model runs in eval mode: both are then per-sample functions and
the only coupling between samples is the contrastive loss, which is what is being compared.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def run(workdir: Path) -> dict:
    from cmitm_lib import distributed as D
    from cmitm_lib import losses
    from cmitm_lib.config import preset_from_dict
    from cmitm_lib.models import CMITM, set_trainable

    workdir = Path(workdir)
    rank, world, _ = D.init_distributed()
    try:
        job = json.loads((workdir / "job.json").read_text())
        preset = preset_from_dict(json.loads((workdir / "preset.json").read_text()))
        model = CMITM(preset.model)
        model.load_state_dict(torch.load(workdir / "state.pt"))
        set_trainable(model, job["stage"])
        model.eval()
        net = D.wrap_ddp(model, torch.device("cpu"))

        batch = torch.load(workdir / "batch.pt")
        b = batch["image"].shape[0] // world
        local = {k: v[rank * b:(rank + 1) * b] for k, v in batch.items()}
        n_patches = (preset.model.img_size // preset.model.patch_size) ** 2
        gen = torch.Generator().manual_seed(job["seed"])
        if rank:
            torch.rand(rank * b, n_patches, generator=gen)  # the rows of the ranks before this one

        columns, original = [], losses.gather_with_grad

        def recording_gather(z):
            out = original(z)
            columns.append((z.shape[0], out.shape[0]))  # (rows = local pairs, columns = candidates)
            return out

        losses.gather_with_grad = recording_gather
        try:
            out = net(local, job["stage"], job["mask_ratio"], generator=gen)
            out["loss"].backward()
        finally:
            losses.gather_with_grad = original
        result = {
            "rank": rank, "world_size": world, "is_main": D.is_main(),
            "loss": out["loss"].item(), "loss_mean": D.all_reduce_mean(out["loss"].item()),
            "columns": columns, "wrapped": type(net).__name__,
            "grads": {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None},
        }
        torch.save(result, workdir / f"result_w{world}_r{rank}.pt")
        D.barrier()
        return result
    finally:
        D.cleanup()


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(Path(sys.argv[1]))
