"""Can the tiny ViT learn SynthCXR's findings at CPU budgets at all? Three checks, tiny preset.

    python benchmarks/learnability.py                      # all three, ~15 min on 2 CPU cores
    python benchmarks/learnability.py --only supervised --sup-epochs 4 --sup-lr 1e-4

1. supervised: fine-tune E_v + head from random init on 100% of the `synth` task's labels
   (`train.finetune`); per epoch the training BCE against the base-rate BCE (the loss of predicting
   each finding's prevalence, i.e. of learning nothing from the image) and validation macro AUC.
2. probe: a linear probe (`experiment.linear_probe`) on the same random-init encoder's frozen
   features, 100% of the labels -- what the benchmark's random-init row rests on.
3. contrastive: CLIP-like pre-training from scratch (`train.pretrain` stage 2, no image masking, no
   D_r) on the 4000 pre-training pairs; per epoch L_c against its chance level 2 ln B, and held-out
   Recall@1 against chance 1 / N.

If (1) stays near the base-rate loss, the encoder cannot pick up the findings from gradient
training within that budget, with labels or without, and no pre-training method can be expected
to beat random init in it (see docs/results.md, "Why nothing beats random init here").
"""
from __future__ import annotations

import argparse
import math
import platform
import time

import numpy as np
import torch

from cmitm_lib import experiment as ex
from cmitm_lib.config import get_preset
from cmitm_lib.data import load_finetune, load_pretrain
from cmitm_lib.text import train_tokenizer
from cmitm_lib.train import build_model, finetune, pretrain, retrieval, seed_everything


def base_rate_bce(labels: np.ndarray) -> float:
    """Mean BCE of predicting each column's prevalence for every image."""
    p = labels.mean(0).clip(1e-6, 1 - 1e-6)
    return float(np.mean(-(p * np.log(p) + (1 - p) * np.log(1 - p))))


def supervised(preset, epochs: int, lr: float) -> None:
    d = load_finetune("synth", "", preset, 0)
    t0 = time.perf_counter()
    r = finetune(d, preset, None, 1.0, epochs=epochs, lr=lr, progress=False)
    print(f"[supervised] random init, 100% of {len(d.train)} labels, AdamW lr {lr:g}, {epochs} epochs "
          f"({time.perf_counter() - t0:.0f} s); base-rate BCE {base_rate_bce(d.train.labels):.4f}")
    for h in r["history"]:
        print(f"  epoch {h['epoch']:>2}  train BCE {h['loss']:.4f}  val AUC {h['val_auc']:.3f}")
    print(f"  test AUC of the best-val epoch ({r['best_epoch']}): {r['test_auc']:.3f}")


def probe(preset) -> None:
    d = load_finetune("synth", "", preset, 0)
    feats = [ex.encoder_features(None, s.images, preset, 0) for s in (d.train, d.val, d.test)]
    r = ex.linear_probe(feats[0], d.train.labels, feats[1], d.val.labels, feats[2], d.test.labels, d.task, d.metric)
    print(f"[probe] random-init frozen features, 100% labels: val AUC {r['val']:.3f}, test AUC {r['test']:.3f} "
          f"(C={r['C']:g})")


def contrastive(preset, epochs: int, lr: float) -> None:
    pairs, held = load_pretrain("synth", "", preset, 0)
    tokenizer = train_tokenizer(pairs.reports, preset.model.vocab_size)
    preset.model.use_rep_decoder = False  # CLIP-like: image_proj on E_v's mean-pooled tokens
    seed_everything(0)
    model = build_model(preset, tokenizer)
    t0 = time.perf_counter()
    history = pretrain(model, tokenizer, pairs, preset, "stage2", epochs=epochs, lr=lr, mask_ratio=0.0,
                       progress=False)
    b = preset.stage2.batch_size
    print(f"[contrastive] CLIP-like from scratch, {len(pairs)} pairs, batch {b}, lr {lr:g}, {epochs} epochs "
          f"({time.perf_counter() - t0:.0f} s); chance L_c = 2 ln {b} = {2 * math.log(b):.3f}")
    for h in history:
        print(f"  epoch {h['epoch']:>2}  L_c {h['loss_c']:.3f}")
    r = retrieval(model, tokenizer, held, preset)
    print(f"  held-out ({len(held)} pairs) i2t R@1 {r['i2t_R@1']:.3f}, t2i R@1 {r['t2i_R@1']:.3f} "
          f"(chance {1 / len(held):.3f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=("supervised", "probe", "contrastive"), default=None)
    ap.add_argument("--sup-epochs", type=int, default=8)
    ap.add_argument("--sup-lr", type=float, default=5e-4)
    ap.add_argument("--clip-epochs", type=int, default=12)
    ap.add_argument("--clip-lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"{platform.machine()}, {a.threads} threads, torch {torch.__version__}")
    if a.only in (None, "supervised"):
        supervised(get_preset("tiny"), a.sup_epochs, a.sup_lr)
    if a.only in (None, "probe"):
        probe(get_preset("tiny"))
    if a.only in (None, "contrastive"):
        contrastive(get_preset("tiny"), a.clip_epochs, a.clip_lr)


if __name__ == "__main__":
    main()
