"""What does stage 2 learn? Image-report diagnostics of a stage-2 link, cached or trained here from stage 1.

    python benchmarks/stage2_probe.py --link stage1__stage2                 # the cached CMITM link, ~1 min
    python benchmarks/stage2_probe.py --train-ratio 0.75 --epochs 4         # stage 2 from the cached stage-1
    python benchmarks/stage2_probe.py --train-ratio 0 --epochs 4            #   link, not saved; ~30 s / epoch (cnn)
    python benchmarks/stage2_probe.py --train-ratio 0.75 --epochs 12 --rep-init decoder   # D_r from stage 1's D_v

The links are those of `cmitm experiment claim|ratios --scale cnn` (``--out``/<scale>/pretrain/seed<N>/); a
missing one names the command that makes it. Trained here: the scale's stage 2 (its lr, temperature,
batch, D_r) with ``--train-ratio`` as the image mask ratio, printing L_c per epoch (chance 2 ln B).
On the 500 held-out pre-training pairs, per evaluation mask ratio (0 and the training ratio):
- similarity AUC per finding: each image scored by its mean similarity to the reports with the finding
  minus the mean to those without, AUC against the image's truth (0.5: the embedding ignores it), and
  their mean;
- image cos: mean pairwise cosine of the image embeddings (1.0: every image gets one vector);
- mask share (ratio > 0): the part of the image embeddings' variance that comes from which patches
  are masked (the same 100 images under 8 mask draws), not from the images.
Eval mode throughout (BatchNorm running statistics), as retrieval and zero-shot use the model.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from cmitm_lib import experiment as ex
from cmitm_lib.checkpoint import load_checkpoint
from cmitm_lib.config import REP_INITS
from cmitm_lib.data import PairData, load_pretrain, load_pretrain_labels
from cmitm_lib.models import check_rep_init, copy_decoder_embedding
from cmitm_lib.train import embed_pairs, pretrain, seed_everything


def load_link(root: Path, link: str, scale: str):
    if not (root / link / "config.json").is_file():
        experiment = "claim" if link in ("stage1", "stage1__stage2") else "ratios"
        raise SystemExit(f"no pre-trained link at {root / link}; make it with "
                         f"`cmitm experiment {experiment} --scale {scale} --out {root.parents[2]}`")
    return load_checkpoint(root / link)


def embeddings(model, tok, data: PairData, preset, ratio: float, draw: int = 0):
    torch.manual_seed(draw)  # the image masks
    zi, zt = embed_pairs(model, tok, data, preset, mask_ratio=ratio)
    return F.normalize(zi, dim=-1), F.normalize(zt, dim=-1)


def report(model, tok, held: PairData, labels: np.ndarray, preset, ratio: float) -> str:
    zi, zt = embeddings(model, tok, held, preset, ratio)
    sim = zi @ zt.T
    aucs = [roc_auc_score(labels[:, j], (sim[:, labels[:, j] == 1].mean(1) - sim[:, labels[:, j] == 0].mean(1)).numpy())
            for j in range(labels.shape[1])]
    line = (f"| {ratio:g} | {' / '.join(f'{a:.2f}' for a in aucs)} | {np.mean(aucs):.3f} "
            f"| {float((zi @ zi.T).mean()):.3f} | {float((zt @ zt.T).mean()):.3f} |")
    if ratio > 0:
        sub = PairData(held.images[:100], held.reports[:100], held.patient_ids[:100])
        z = torch.stack([embeddings(model, tok, sub, preset, ratio, draw)[0] for draw in range(8)])  # (8, 100, D)
        within = z.var(0).sum(-1).mean()
        total = z.reshape(-1, z.shape[-1]).var(0).sum()
        line += f" {float(within / total):.2f} |"
    else:
        line += " - |"
    return line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/experiments")
    ap.add_argument("--scale", default="cnn", choices=list(ex.SCALES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--link", default=None, help="a cached stage-2 link, e.g. stage1__stage2 or stage1__stage2-m0")
    ap.add_argument("--train-ratio", type=float, default=None, help="train stage 2 from the stage-1 link at this mask ratio")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=None, help="stage 2's peak lr (default: the scale's)")
    ap.add_argument("--temperature", type=float, default=None, help="InfoNCE temperature (default: the paper's 0.07)")
    ap.add_argument("--rep-init", default=None, choices=REP_INITS,
                    help="what D_r takes from stage 1's D_v before stage 2 (default: the scale's; ModelConfig.rep_init)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if (args.link is None) == (args.train_ratio is None):
        raise SystemExit("give one of --link (evaluate a cached stage-2 link) or --train-ratio (train one here)")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    root = Path(args.out) / args.scale / "pretrain" / f"seed{args.seed}"
    model, tok, preset, meta = load_link(root, args.link or "stage1", args.scale)
    print(f"{platform.machine()}, {args.threads} threads, torch {torch.__version__}; {args.scale} scale, seed {args.seed}")
    if args.link is not None:
        if "loss_c" not in meta["history"][-1]:
            raise SystemExit(f"{args.link} has no contrastive head trained (no L_c in its history); pass a stage-2 "
                             f"link such as stage1__stage2, or --train-ratio to train stage 2 from stage1")
        ratio = preset.stage2.mask_ratio if "-m" not in args.link else float(args.link.split("-m")[1].split("-")[0])
        print(f"cached link {args.link} (stage-2 mask ratio {ratio:g}); L_c per epoch "
              f"{[round(h['loss_c'], 3) for h in meta['history']]}")
    else:
        ratio = args.train_ratio
        if args.lr is not None:
            preset.stage2.lr = args.lr
        if args.temperature is not None:
            preset.stage2.temperature = args.temperature
        if args.rep_init is not None:
            model.cfg.rep_init = preset.model.rep_init = args.rep_init
            check_rep_init(model.cfg)
            copy_decoder_embedding(model)  # what stage 1 ends with, now under this rep_init
        pairs, _ = load_pretrain("synth", "", preset, 0)
        seed_everything(args.seed)
        history = pretrain(model, tok, pairs, preset, "stage2", epochs=args.epochs, mask_ratio=ratio,
                           seed=args.seed, progress=False)
        print(f"stage 2 from stage1, mask ratio {ratio:g}, {args.epochs} epochs at lr {preset.stage2.lr:g}, temperature {preset.stage2.temperature:g}, D_r from D_v's "
              f"{preset.model.rep_init}: L_c per "
              f"epoch {[round(h['loss_c'], 3) for h in history]} (chance {2 * np.log(preset.stage2.batch_size):.3f})")
    _, held = load_pretrain("synth", "", preset, 0)
    labels = load_pretrain_labels(preset).val.labels  # the held-out pairs' image-truth findings
    from cmitm_lib.data.synth import FINDINGS

    print(f"\n| eval mask ratio | similarity AUC: {' / '.join(FINDINGS)} | mean "
          f"| image cos | report cos | mask share |")
    print("|---|---|---|---|---|---|")
    for r in sorted({0.0, ratio}):
        print(report(model, tok, held, labels, preset, r))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
