"""Throughput of one training step, and of the data path, on synthetic inputs (no dataset, no download).

    cmitm bench --preset tiny                         # stage1, stage2, finetune on this machine
    cmitm bench --preset paper --stage stage1 --batch-size 256 --device cuda
    cmitm bench --preset paper --flops-only           # counted model FLOPs per sample, on the CPU

A step is what the training loop does: forward (bf16 autocast on CUDA, fp32 elsewhere), backward,
optimizer step (AdamW for pre-training; the preset's fine-tuning optimizer, with gradient clipping,
for fine-tuning). Inputs are random tensors shaped like the preset's batch: encoder images, the
2x reconstruction targets, reports of the full ``max_len`` tokens with 50% of the inner tokens
masked (an upper bound: real reports are padded to ``max_len`` too, so only the masked-token
classifier D_t depends on report length).

FLOPs per sample are counted by ``torch.utils.flop_counter.FlopCounterMode`` over one forward and
backward (matrix multiplications and attention; FLOPs = 2 x multiply-adds) on one sample (two for
stage 2: training-mode BatchNorm and InfoNCE need a pair), with PyTorch's math attention so the
attention products are visible to the counter on every device. Optimizer FLOPs are not counted. MFU = achieved FLOP/s / the GPU's dense bf16 peak.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import re
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader, RandomSampler
from torch.utils.flop_counter import FlopCounterMode

try:
    import resource
except ImportError:  # Windows: no CPU memory figure
    resource = None

from .config import Preset, check_choice, check_positive_int, get_preset
from .data import load_pretrain
from .data.datasets import PairCollate, PairData, PairDataset
from .device import autocast, resolve_device
from .models import CMITM, build_classifier, set_trainable
from .text import train_tokenizer
from .train import build_optimizer

BENCH_STAGES = ("stage1", "stage2", "finetune")
FINETUNE_CLASSES = 14  # NIH ChestX-ray14 head

# Dense bf16 tensor-core peaks in TFLOP/s (V100: fp16), matched in order against the CUDA device name.
PEAK_TFLOPS = (
    (r"H100.*PCIe", 756.0),
    (r"H100.*NVL", 835.0),
    (r"H100", 989.0),  # SXM
    (r"H200", 989.0),
    (r"A100", 312.0),
    (r"V100", 125.0),
    (r"\bL4\b", 121.0),
    (r"RTX 4090", 165.0),
)


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak for a CUDA device name, or None when it is not in the table."""
    for pattern, peak in PEAK_TFLOPS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return peak
    return None


def _preset(preset) -> Preset:
    return copy.deepcopy(preset) if isinstance(preset, Preset) else get_preset(preset)


def synthetic_batch(preset: Preset, batch_size: int, device, seed: int = 0) -> dict:
    """Random tensors with the shapes, dtypes and token layout of a pre-training batch."""
    m, d = preset.model, preset.data
    g = torch.Generator().manual_seed(seed)
    cls_id, sep_id, mask_id, first_word = 2, 3, 4, 5  # ids in text.SPECIAL_TOKENS order
    ids = torch.randint(first_word, m.vocab_size, (batch_size, m.max_len), generator=g)
    ids[:, 0], ids[:, -1] = cls_id, sep_id
    inner = m.max_len - 2
    order = torch.rand(batch_size, inner, generator=g).argsort(dim=1)
    masked = torch.zeros(batch_size, m.max_len, dtype=torch.bool)
    masked[:, 1:-1] = order < max(1, round(0.5 * inner))
    batch = {
        "image": torch.randn(batch_size, m.in_chans, m.img_size, m.img_size, generator=g),
        "target": torch.randn(batch_size, m.in_chans, d.hi_size, d.hi_size, generator=g),
        "input_ids": ids, "attention_mask": torch.ones_like(ids),
        "masked_ids": ids.masked_fill(masked, mask_id), "mlm_labels": ids.masked_fill(~masked, -100),
    }
    return {k: v.to(device) for k, v in batch.items()}


def _build(make, device: torch.device, zero_init: bool) -> nn.Module:
    """``make()`` on ``device`` in train mode; with zero_init the weights are allocated without the
    (slow, for the paper preset) random initialisation and set to 0, which is enough to count FLOPs."""
    if not zero_init:
        return make().to(device).train()
    with torch.device("meta"):
        model = make()
    model = model.to_empty(device=device)
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            t.zero_()
    return model.train()


class _Step:
    """The model, its optimizer and one training step for a stage, on a fixed synthetic batch."""

    def __init__(self, preset: Preset, stage: str, batch_size: int, device: torch.device, zero_init: bool = False):
        self.stage, self.device, self.autocast = stage, device, autocast
        if stage == "finetune":
            cfg = preset.finetune
            self.model = _build(lambda: build_classifier(preset.model, FINETUNE_CLASSES), device, zero_init)
            g = torch.Generator().manual_seed(1)
            self.x = torch.randn(batch_size, preset.model.in_chans, preset.model.img_size, preset.model.img_size,
                                 generator=g).to(device)
            self.y = (torch.rand(batch_size, FINETUNE_CLASSES, generator=g) < 0.3).float().to(device)
            self.opt = build_optimizer(self.model, cfg.optimizer, 1e-3, cfg.weight_decay)
            self.optimizer, self.grad_clip = cfg.optimizer, cfg.grad_clip
        else:
            cfg = preset.stage1 if stage == "stage1" else preset.stage2
            self.model = _build(lambda: CMITM(preset.model), device, zero_init)
            set_trainable(self.model, stage)
            self.batch = synthetic_batch(preset, batch_size, device)
            self.mask_ratio, self.temperature = cfg.mask_ratio, cfg.temperature
            self.opt = build_optimizer(self.model, "adamw", cfg.lr, cfg.weight_decay, cfg.betas)
            self.optimizer, self.grad_clip = "adamw", None
        self.net = self.model  # replaced by the compiled module with compile=True
        self.params_trained = sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def loss(self, net: nn.Module, n: int | None = None) -> torch.Tensor:
        if self.stage == "finetune":
            return F.binary_cross_entropy_with_logits(net(self.x[:n]).float(), self.y[:n])
        batch = self.batch if n is None else {k: v[:n] for k, v in self.batch.items()}
        return net(batch, self.stage, self.mask_ratio, self.temperature)["loss"]

    def __call__(self) -> None:
        with self.autocast(self.device):
            loss = self.loss(self.net)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.opt.step()

    def count_flops(self) -> float:
        """Model FLOPs per sample of one forward + backward (uncompiled model, fp32, math attention),
        counted on 1 sample (2 for stage 2, whose BatchNorm and InfoNCE need a pair; its B^2 logits
        term is negligible)."""
        n = 2 if self.stage == "stage2" else 1
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            self.loss(self.model, n).backward()
        self.opt.zero_grad(set_to_none=True)
        return counter.get_total_flops() / n


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _maxrss_mb() -> float:
    if resource is None:
        return float("nan")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def count_flops(preset, stage: str) -> float:
    """Model FLOPs per sample of one training step's forward + backward, counted on the CPU."""
    check_choice("stage", stage, BENCH_STAGES)
    torch.manual_seed(0)
    return _Step(_preset(preset), stage, 2, torch.device("cpu"), zero_init=True).count_flops()


def bench(preset, stage: str, batch_size: int | None = None, steps: int = 10, warmup: int = 3,
          device: str = "auto", compile: bool = False) -> dict:
    """Time ``steps`` training steps after ``warmup`` untimed ones; see the module docstring.

    ``preset`` is a name or a Preset; ``batch_size`` None takes the preset's batch for the stage.
    Returns samples/s, ms/step, peak memory (CUDA: max allocated; CPU: growth of the process's peak
    resident set size, a lower bound when the process was larger before), FLOPs per sample,
    achieved TFLOP/s and MFU (None off CUDA or for a GPU not in PEAK_TFLOPS).
    """
    check_choice("stage", stage, BENCH_STAGES)
    p = _preset(preset)
    if batch_size is None:
        batch_size = {"stage1": p.stage1, "stage2": p.stage2, "finetune": p.finetune}[stage].batch_size
    check_positive_int("batch_size", batch_size)
    check_positive_int("steps", steps)
    if stage == "stage2" and batch_size < 2:
        raise ValueError("batch_size=1 is not valid for stage2: the contrastive loss and BatchNorm need >= 2 pairs")
    dev = resolve_device(device)
    torch.manual_seed(0)
    rss0 = _maxrss_mb()
    step = _Step(p, stage, batch_size, dev)
    flops = step.count_flops()
    if compile:
        step.net = torch.compile(step.model)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for _ in range(warmup):
        step()
    _sync(dev)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    total = sum(times)
    samples_per_s = batch_size * steps / total
    if dev.type == "cuda":
        peak_mb, mem_kind = torch.cuda.max_memory_allocated(dev) / 2**20, "cuda max allocated"
        name = torch.cuda.get_device_name(dev)
        peak = peak_tflops(name)
    else:
        # ru_maxrss is the process's high-water mark: the growth is a lower bound when the process
        # was larger before (run one stage per process for a clean figure)
        peak_mb, mem_kind = max(0.0, _maxrss_mb() - rss0), f"peak RSS growth (process peak {_maxrss_mb():.0f} MiB)"
        name, peak = f"{dev.type} ({torch.get_num_threads()} threads)", None
    achieved = flops * samples_per_s / 1e12
    return {
        "preset": p.name, "stage": stage, "device": name, "batch_size": batch_size, "steps": steps,
        "warmup": warmup, "compile": compile, "precision": "bf16 autocast" if dev.type == "cuda" else "fp32",
        "optimizer": step.optimizer, "params_trained": step.params_trained,
        "samples_per_s": samples_per_s, "ms_per_step": 1e3 * total / steps,
        "ms_per_step_median": 1e3 * float(np.median(times)),
        "peak_mem_mb": peak_mb, "mem_kind": mem_kind,
        "gflops_per_sample": flops / 1e9, "achieved_tflops": achieved,
        "peak_tflops": peak, "mfu": achieved / peak if peak else None,
        "torch": torch.__version__,
    }


# ---------------------------------------------------------------------------------------------
# The data path alone
# ---------------------------------------------------------------------------------------------
_WORDS = ("the heart size is normal lungs are clear there is no pleural effusion or pneumothorax "
          "mild cardiomegaly small left right basilar opacity atelectasis consolidation lower upper lobe "
          "unchanged compared with prior study stable mediastinal contours pulmonary edema nodule").split()


def _paper_like_pairs(n: int, size: int = 512, seed: int = 0):
    """In-memory uint8 images (size x size) and ~60-word reports, for a loader benchmark at full size."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    reports = [" ".join(rng.choice(_WORDS, 60)) + "." for _ in range(n)]
    return PairData(images, reports, [f"p{i}" for i in range(n)])


def bench_loader(preset, batch_size: int | None = None, steps: int = 10, num_workers: int = 0,
                 data=None) -> dict:
    """Samples/s of PairDataset + PairCollate (crops, resizes, tokenisation, whole-word masking).

    Data: SynthCXR for the tiny preset (``load_pretrain("synth", "", preset)``); for the paper preset
    in-memory random 512-px uint8 images with word-salad reports, so nothing large is generated.
    ``data`` (a PairData) overrides both. The first batch (worker start-up) is not timed.
    """

    p = _preset(preset)
    batch_size = p.stage1.batch_size if batch_size is None else batch_size
    check_positive_int("batch_size", batch_size)
    check_positive_int("steps", steps)
    if data is None:
        data = (_paper_like_pairs(max(2 * batch_size, 64)) if p.name == "paper"
                else load_pretrain("synth", "", p)[0])
    tokenizer = train_tokenizer(list(data.reports), p.model.vocab_size, min_frequency=1)
    sampler = RandomSampler(range(len(data)), replacement=True, num_samples=batch_size * (steps + 1),
                            generator=torch.Generator().manual_seed(0))
    loader = DataLoader(PairDataset(data, p.data, p.model), batch_size=batch_size, sampler=sampler,
                        num_workers=num_workers, collate_fn=PairCollate(tokenizer, p.model.max_len,
                                                                       p.stage1.text_mask_ratio))
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    n = sum(b["image"].shape[0] for b in it)
    seconds = time.perf_counter() - t0
    return {"preset": p.name, "stage": "loader", "batch_size": batch_size, "steps": steps,
            "num_workers": num_workers, "samples_per_s": n / seconds, "ms_per_step": 1e3 * seconds / steps}


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def _fmt(v, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def format_table(rows: list[dict]) -> str:
    head = f"{'stage':<9}{'batch':>6}{'samples/s':>11}{'ms/step':>10}{'peak MiB':>10}{'GFLOP/sample':>14}" \
           f"{'TFLOP/s':>9}{'MFU':>7}"
    lines = [head]
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        lines.append(f"{r['stage']:<9}{_fmt(r.get('batch_size'), 'd'):>6}{_fmt(r.get('samples_per_s'), '.1f'):>11}"
                     f"{_fmt(r.get('ms_per_step'), '.1f'):>10}{_fmt(r.get('peak_mem_mb'), '.0f'):>10}"
                     f"{_fmt(r.get('gflops_per_sample'), '.2f'):>14}{_fmt(r.get('achieved_tflops'), '.3f'):>9}{mfu:>7}")
    first = rows[0]
    lines.append(f"preset {first['preset']}" + (f", {first['device']}, {first['precision']}" if "device" in first else "")
                 + (f", torch {first['torch']}" if "torch" in first else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="cmitm bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", help="tiny or paper")
    ap.add_argument("--stage", default="all", choices=BENCH_STAGES + ("all",))
    ap.add_argument("--batch-size", type=int, default=None, help="per process; default: the preset's")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--flops-only", action="store_true", help="only count FLOPs per sample (CPU, batch 2)")
    ap.add_argument("--loader", action="store_true", help="also time the data path alone")
    ap.add_argument("--num-workers", type=int, default=0, help="loader worker processes (with --loader)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    check_choice("preset", args.preset, ("tiny", "paper"))
    stages = BENCH_STAGES if args.stage == "all" else (args.stage,)
    rows = []
    for stage in stages:
        if args.flops_only:
            rows.append({"preset": args.preset, "stage": stage, "gflops_per_sample": count_flops(args.preset, stage) / 1e9})
        else:
            rows.append(bench(args.preset, stage, args.batch_size, args.steps, args.warmup, args.device, args.compile))
    if args.loader:
        rows.append(bench_loader(args.preset, args.batch_size, args.steps, args.num_workers))
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return rows


if __name__ == "__main__":
    main()
