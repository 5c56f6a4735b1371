"""Training loops: pre-training (stage 1, stage 2, or joint) and fine-tuning.

One process on a CPU or one GPU; pre-training also under torchrun (DDP, see `distributed`).
AdamW with linear warmup then per-step cosine decay to 0 (MRM), no weight decay on 1-D parameters,
bf16 autocast on CUDA.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, RandomSampler
from tqdm.auto import tqdm

from . import distributed
from . import resume as resume_lib
from .config import HEAD_INITS, Preset, check_choice, check_positive, check_positive_int, check_ratio
from .data.datasets import FinetuneData, LabelDataset, PairCollate, PairData, PairDataset, collate_labels
from .data.fractions import fraction_indices
from .device import autocast, resolve_device, seed_everything, to_device
from .evaluate import classifier_features, fit_probe, predict, score
from .models import CMITM, build_classifier, copy_decoder_embedding, set_trainable

STAGES = ("stage1", "stage2", "joint", "mae")


def build_optimizer(model: nn.Module, kind: str, lr: float, weight_decay: float, betas=(0.9, 0.95)):
    """AdamW (or SGD momentum 0.9) over the trainable parameters; no weight decay on biases, norms,
    tokens and other 1-D parameters."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or p.shape[:2] == (1, 1) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    fused = all(p.is_cuda for p in decay + no_decay) or None
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fused)


def warmup_cosine(optimizer, total_steps: int, warmup_steps: int):
    """Linear warmup to the peak lr, then half-cosine to 0, stepped every iteration."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_model(preset: Preset, tokenizer, seed: int | None = None) -> CMITM:
    """A fresh CMITM for the preset, its text vocabulary sized to the tokenizer. With ``seed`` the initial
    weights are a function of it (torch's generator is seeded first); without, they follow torch's
    current random state, which differs from process to process unless something seeded it."""
    if seed is not None:
        torch.manual_seed(seed)
    preset.model.vocab_size = tokenizer.get_vocab_size()
    return CMITM(preset.model)


def pretrain(model: CMITM, tokenizer, data: PairData, preset: Preset, stage: str, *, epochs: int | None = None,
             batch_size: int | None = None, lr: float | None = None, mask_ratio: float | None = None,
             device: str = "auto", seed: int = 0, num_workers: int = 0, progress: bool = True,
             checkpoint_dir: str | Path | None = None, checkpoint_every: int = 0,
             resume: bool | str | Path = False, accum_steps: int = 1, on_unreadable: str = "skip") -> list[dict]:
    """Train ``model`` in place with the objective of ``stage``; returns one dict of means per epoch.

    stage1: L_r = L_vr + L_tr (E_v, D_v, E_t, D_t train); stage2: L_c (E_v, E_t, D_r, h_v, h_t train;
    D_v and D_t are frozen); joint: L_r + L_c at once (the paper's "- cascaded training" ablation);
    mae: L_vr alone (E_v, D_v; the image-only baseline).
    Arguments left as None take the preset's value for the stage.
    Under torchrun ``batch_size`` is the global batch: each of the W processes loads batch_size / W
    pairs and the contrastive loss sees all batch_size; the returned means are averaged over processes.

    Gradient accumulation: with ``accum_steps`` k > 1 one optimizer step sums the gradients of k
    micro-batches of batch_size / k pairs (batch_size / (k W) per process), each loss divided by k.
    That changes the objective: each micro-batch's InfoNCE sees only the batch_size / k pairs of its
    own micro-batch as negatives (uniform loss 2 ln(batch_size / k), not 2 ln(batch_size)), and the
    projection heads' BatchNorm normalises over micro-batches. The reconstruction losses average the
    same as one big batch (up to L_tr's token-count weighting). Loss means are over micro-batches.

    Resume (see `resume`): with ``checkpoint_dir`` a checkpoint (``resume.safetensors``) is written
    after every ``checkpoint_every``-th step (0: none mid-epoch) and at the end of each epoch;
    ``resume=True`` continues from ``checkpoint_dir``'s checkpoint (``resume=path``: from that one),
    mid-epoch included, to the weights an uninterrupted run reaches. Only ``lr`` may differ on
    resume (e.g. lower after a non-finite loss). A non-finite loss raises FloatingPointError naming
    the last good checkpoint, which is never overwritten by a non-finite state.

    An image file that cannot be read is skipped (``on_unreadable="skip"``): another pair takes its place
    in the batch, and the epoch's unreadable files are printed at its end and listed in its history entry
    (``"unreadable_images"``). ``on_unreadable="stop"`` raises `UnreadableImageError` naming the first one.
    """
    check_choice("stage", stage, STAGES)
    cfg = stage_config(preset, stage, epochs, batch_size, lr, mask_ratio)
    check_run_options(len(data), cfg.batch_size, accum_steps, checkpoint_dir, checkpoint_every, resume)
    rank, world, local_rank = distributed.init_distributed()
    dev = distributed.local_device(local_rank, device)
    distributed.per_rank_batch(cfg.batch_size // accum_steps, world)  # checks that the micro-batch splits evenly
    seed_everything(seed + rank)
    per_epoch = len(data) // cfg.batch_size  # optimizer steps per epoch
    loader, sampler = pair_loader(data, tokenizer, preset, cfg, seed, accum_steps, per_epoch, num_workers,
                                  on_unreadable, dev)
    model.to(dev).train()
    set_trainable(model, stage)  # before wrap_ddp: DDP registers the trainable parameters
    net = distributed.wrap_ddp(model, dev)
    opt = build_optimizer(model, "adamw", cfg.lr, cfg.weight_decay, cfg.betas)
    total = cfg.epochs * per_epoch
    sched = warmup_cosine(opt, total, int(cfg.warmup * total))
    meta = json.loads(json.dumps({"stage": stage, "seed": seed, "world_size": world, "pairs": len(data),
                                  "accum_steps": accum_steps, "config": dataclasses.asdict(cfg)}))
    ckpt = resume_lib.Checkpointer(checkpoint_dir, checkpoint_every, meta, model, opt, sched, per_epoch, total)
    history, epoch0, batch0, sums, seconds, bad = ckpt.start(resume, cfg.lr)
    run = PretrainRun(net, opt, sched, loader, sampler, ckpt, stage, cfg, seed, rank, world, accum_steps, per_epoch, dev)
    step = epoch0 * per_epoch + batch0
    bar = tqdm(total=total, initial=step, desc=f"{stage}", disable=not (progress and distributed.is_main()))
    for epoch in range(epoch0, cfg.epochs):
        if epoch > epoch0:
            batch0, sums, seconds, bad = 0, {}, 0.0, []
        entry, step = train_one_epoch(run, epoch, batch0, step, sums, seconds, bad, history, bar)
        history.append(entry)
        report_unreadable(f"{stage} epoch {epoch + 1}", entry["unreadable_images"])
        ckpt.write(epoch, per_epoch, {}, 0.0, step, [], history)
    bar.close()
    if stage == "stage1":
        copy_decoder_embedding(model)
    return history


def stage_config(preset: Preset, stage: str, epochs=None, batch_size=None, lr=None, mask_ratio=None):
    """The preset's config of ``stage`` (mae and joint: stage 1's) with the given values in place of its own."""
    cfg = copy.deepcopy(preset.stage2 if stage == "stage2" else preset.stage1)
    cfg.epochs = cfg.epochs if epochs is None else epochs
    cfg.batch_size = cfg.batch_size if batch_size is None else batch_size
    cfg.lr = cfg.lr if lr is None else lr
    cfg.mask_ratio = cfg.mask_ratio if mask_ratio is None else mask_ratio
    check_positive_int("epochs", cfg.epochs)
    check_positive_int("batch_size", cfg.batch_size)
    check_positive("lr", cfg.lr)
    check_ratio("mask_ratio", cfg.mask_ratio, allow_zero=(stage != "stage1"))
    return cfg


def check_run_options(n_pairs: int, batch_size: int, accum_steps: int, checkpoint_dir, checkpoint_every: int,
                      resume) -> None:
    """Refuse a batch larger than the data, accumulation that does not divide it, and checkpoint options
    that cannot work together, each with the fix."""
    if n_pairs < batch_size:
        raise ValueError(f"batch_size={batch_size} is larger than the {n_pairs} training pairs")
    check_positive_int("accum_steps", accum_steps)
    if batch_size % accum_steps:
        raise ValueError(f"batch_size={batch_size} is not divisible by accum_steps={accum_steps}; "
                         f"choose a multiple of {accum_steps}")
    if not (isinstance(checkpoint_every, int) and checkpoint_every >= 0):
        raise ValueError(f"checkpoint_every={checkpoint_every!r} must be an integer >= 0 "
                         f"(steps between checkpoints; 0: at epoch ends only)")
    if checkpoint_every and checkpoint_dir is None:
        raise ValueError(f"checkpoint_every={checkpoint_every} needs checkpoint_dir, the folder to write "
                         f"resume.safetensors to")
    if resume is True and checkpoint_dir is None:
        raise ValueError("resume=True continues the checkpoint in checkpoint_dir; pass checkpoint_dir "
                         "(or resume=<path of a resume.safetensors>)")


def pair_loader(data: PairData, tokenizer, preset: Preset, cfg, seed: int, accum_steps: int, per_epoch: int,
                num_workers: int, on_unreadable: str, dev: torch.device):
    """(loader, sampler) of micro-batches: the data order from (seed, epoch); crops and word masks seeded
    per micro-batch (`resume.SeededBatches`), so a resumed run sees the same batches."""
    k, rank, world = accum_steps, distributed.get_rank(), distributed.get_world_size()
    sampler = resume_lib.EpochBatches(len(data), cfg.batch_size // k, seed, rank, world, batches=per_epoch * k)
    dataset = resume_lib.SeededBatches(PairDataset(data, preset.data, preset.model, on_unreadable=on_unreadable,
                                                   seed=seed),
                                       PairCollate(tokenizer, preset.model.max_len, cfg.text_mask_ratio))
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=resume_lib.as_is, num_workers=num_workers,
                        pin_memory=dev.type == "cuda", persistent_workers=num_workers > 0)
    return loader, sampler


@dataclasses.dataclass
class PretrainRun:
    """What every epoch of one pre-training run shares."""
    net: nn.Module  # the model, DDP-wrapped under torchrun
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    loader: DataLoader
    sampler: resume_lib.EpochBatches
    ckpt: resume_lib.Checkpointer
    stage: str
    cfg: object  # the stage's config (`stage_config`)
    seed: int
    rank: int
    world: int
    k: int  # micro-batches per optimizer step (gradient accumulation)
    per_epoch: int  # optimizer steps per epoch
    dev: torch.device


def train_one_epoch(run: PretrainRun, epoch: int, b: int, step: int, sums: dict, seconds: float, bad: list[str],
                    history: list[dict], bar) -> tuple[dict, int]:
    """One epoch from its batch ``b`` (a resumed run starts mid-epoch with the epoch's running ``sums``,
    ``seconds`` and unreadable images ``bad``); returns (the epoch's history entry, the global step)."""
    k = run.k
    run.sampler.set_epoch(epoch, start=b * k)
    t0 = time.perf_counter()
    for i, batch in enumerate(run.loader, start=b * k):  # i: micro-batch of the epoch, b * k + i % k
        torch.manual_seed(resume_lib.derive_seed(run.seed, epoch, i, run.rank, 1))  # image masks, dropout
        last = i % k == k - 1  # the step's last micro-batch: DDP averages the gradients, AdamW steps
        if i % k == 0:
            run.opt.zero_grad(set_to_none=True)
        bad += batch.pop("unreadable", [])
        out = forward_backward(run, to_device(batch, run.dev), last, (epoch + 1, b + 1, step + 1, i % k + 1))
        for key, v in out.items():
            sums[key] = sums.get(key, 0.0) + v.item()
        if not last:
            continue
        run.opt.step()
        run.sched.step()
        b, step = b + 1, step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{out['loss'].item():.3f}")
        if run.ckpt.due(step, b):
            run.ckpt.write(epoch, b, sums, seconds + time.perf_counter() - t0, step, bad, history)
    seconds += time.perf_counter() - t0
    bad = sorted({path for paths in distributed.all_gather_objects(bad) for path in paths})
    return {"epoch": epoch + 1,
            **{key: distributed.all_reduce_mean(v / (run.per_epoch * k)) for key, v in sums.items()},
            "lr": run.sched.get_last_lr()[0], "seconds": seconds,
            "samples_per_s": run.per_epoch * run.cfg.batch_size / seconds, "unreadable_images": bad}, step


def forward_backward(run: PretrainRun, batch: dict, last: bool, where: tuple[int, int, int, int]) -> dict:
    """One micro-batch: the stage's losses (bf16 on CUDA) and their gradients, divided by k; DDP syncs
    gradients on the step's last micro-batch only. A non-finite loss raises FloatingPointError naming
    ``where`` (epoch, batch, step, micro-batch, from 1) and the last good checkpoint."""
    with contextlib.nullcontext() if last or run.world == 1 else run.net.no_sync():
        with autocast(run.dev):
            out = run.net(batch, run.stage, run.cfg.mask_ratio, run.cfg.temperature)
        if not torch.isfinite(out["loss"]):
            epoch, b, step, micro = where
            micro = f", micro-batch {micro} of {run.k}" if run.k > 1 else ""
            raise FloatingPointError(run.ckpt.nonfinite(f"the loss ({out['loss'].item()}{micro})", epoch, b, step))
        (out["loss"] / run.k).backward()
    return out


def report_unreadable(where: str, paths: list[str]) -> None:
    """Print the unreadable images an epoch skipped (nothing when there were none)."""
    if paths and distributed.is_main():
        tqdm.write(f"{where}: skipped {len(paths)} unreadable image(s), another sample took each one's place "
                   f"(on_unreadable='stop' / --stop-on-unreadable stops at the first): " + ", ".join(paths))


def finetune(data: FinetuneData, preset: Preset, encoder_state: dict | None = None, fraction: float = 0.01, *,
             epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
             device: str = "auto", seed: int = 0, num_workers: int = 0, progress: bool = True,
             keep_model: bool = False, on_unreadable: str = "skip") -> dict:
    """Fine-tune E_v + linear head on a fraction of the training labels; every weight is trained.

    The model with the best validation metric is kept and scored once on the test split (and
    returned under "model", on the CPU, with ``keep_model``).
    BCE for multi-label (macro AUC), cross entropy for multi-class (accuracy).
    An unreadable image is skipped (another sample takes its place), printed at the end of the epoch
    and listed under "unreadable_images" (all splits) and in the epoch's history entry;
    ``on_unreadable="stop"`` raises `UnreadableImageError` naming the first one instead.
    """
    cfg = copy.deepcopy(preset.finetune)
    epochs = cfg.epochs if epochs is None else epochs
    batch_size = cfg.batch_size if batch_size is None else batch_size
    lr = cfg.lr_for(fraction) if lr is None else lr
    check_positive_int("epochs", epochs)
    check_positive_int("batch_size", batch_size)
    check_positive("lr", lr)
    dev = resolve_device(device)
    seed_everything(seed)
    idx = fraction_indices(len(data.train), fraction, seed, data.train.labels)
    train_loader, eval_loaders = _finetune_loaders(data, preset, idx, batch_size, num_workers, on_unreadable, seed)
    net = build_classifier(preset.model, len(data.classes), encoder_state).to(dev)
    check_choice("head_init", cfg.head_init, HEAD_INITS)
    if cfg.head_init == "probe":
        probe_head(net, data, idx, preset, dev)
    opt = build_optimizer(net, cfg.optimizer, lr, cfg.weight_decay)
    total = epochs * len(train_loader)
    sched = warmup_cosine(opt, total, int(cfg.warmup * total))
    best = {"val": -1.0, "epoch": 0, "state": None}
    history, unreadable = [], set()
    for epoch in tqdm(range(epochs), desc=f"finetune {fraction:g}", disable=not progress):
        net.train()
        losses, bad = [], []
        for x, y, skipped in train_loader:
            bad += skipped
            x, y = x.to(dev), y.to(dev)
            with autocast(dev):
                logits = net(x).float()
            loss = (F.binary_cross_entropy_with_logits(logits, y) if data.task == "multilabel"
                    else F.cross_entropy(logits, y.argmax(1)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            losses.append(loss.item())
        val = score(data.metric, *predict(net, eval_loaders["val"], dev, data.task, bad))
        bad = sorted(set(bad))
        report_unreadable(f"finetune {fraction:g} epoch {epoch + 1}", bad)
        unreadable.update(bad)
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), f"val_{data.metric}": val,
                        "unreadable_images": bad})
        if val > best["val"]:
            best = {"val": val, "epoch": epoch + 1, "state": copy.deepcopy(net.state_dict())}
    net.load_state_dict(best["state"])
    bad = []
    test = score(data.metric, *predict(net, eval_loaders["test"], dev, data.task, bad))
    report_unreadable(f"finetune {fraction:g} test", sorted(set(bad)))
    result = {"dataset": data.name, "metric": data.metric, "fraction": fraction, "n_train": len(idx),
              "init": "pretrained" if encoder_state is not None else "random", "best_epoch": best["epoch"],
              f"val_{data.metric}": best["val"], f"test_{data.metric}": test, "lr": lr, "epochs": epochs,
              "unreadable_images": sorted(unreadable | set(bad)), "history": history}
    if keep_model:
        result["model"] = net.cpu().eval()
    return result


def probe_head(net: nn.Module, data: FinetuneData, idx: np.ndarray, preset: Preset, dev: torch.device) -> dict:
    """LP-FT's first step: set ``net``'s linear head to the logistic-regression probe of its frozen features on
    the labelled images ``idx`` (C picked on the validation split; eval transform). Returns the probe's fit."""
    train_x = classifier_features(net, _take(data.train.images, idx), preset, dev)
    val_x = classifier_features(net, data.val.images, preset, dev)
    fit = fit_probe(train_x, data.train.labels[idx], val_x, data.val.labels, data.task, data.metric)
    with torch.no_grad():
        net.head.weight.copy_(torch.as_tensor(fit["weight"], dtype=net.head.weight.dtype))
        net.head.bias.copy_(torch.as_tensor(fit["bias"], dtype=net.head.bias.dtype))
    return fit


def _finetune_loaders(data: FinetuneData, preset: Preset, idx: np.ndarray, batch_size: int, num_workers: int,
                      on_unreadable: str, seed: int) -> tuple[DataLoader, dict[str, DataLoader]]:
    """The training loader over the label fraction ``idx`` and the val / test loaders."""
    train_data = type(data.train)(_take(data.train.images, idx), data.train.labels[idx])
    options = {"on_unreadable": on_unreadable, "seed": seed}
    train_set = LabelDataset(train_data, preset.data, preset.model, preset.finetune.crop_scale, train=True, **options)
    per_epoch = max(len(train_set), preset.finetune.min_images_per_epoch)  # enough steps at 1% of the labels
    sampler = RandomSampler(train_set, replacement=len(train_set) < per_epoch, num_samples=per_epoch)
    train_loader = DataLoader(train_set, batch_size=batch_size, sampler=sampler, drop_last=False,
                              num_workers=num_workers, collate_fn=collate_labels)
    eval_loaders = {s: DataLoader(LabelDataset(getattr(data, s), preset.data, preset.model, train=False, **options),
                                  batch_size=256, num_workers=num_workers, collate_fn=collate_labels)
                    for s in ("val", "test")}
    return train_loader, eval_loaders


def _take(images, idx: np.ndarray):
    return images[idx] if isinstance(images, np.ndarray) else [images[i] for i in idx]


def encoder_state(model: CMITM) -> dict:
    """E_v's weights, as the fine-tuning classifier loads them."""
    return {k: v.detach().clone() for k, v in model.image_encoder.state_dict().items()}
