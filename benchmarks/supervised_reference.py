"""The supervised reference of the lessons' task: how far random-init E_v gets on labels alone.

    python benchmarks/supervised_reference.py                 # tiny preset, lesson level, seed 0
    python benchmarks/supervised_reference.py --level subtle  # the harder drawing

Fine-tunes the tiny preset's E_v (the paper's ViT, shrunk) from random init on the embedded NIH-like
task (`train.finetune`, the preset's fine-tuning recipe) with 100% of the training labels for
``--epochs`` epochs, then with 1% at the preset's own epochs, and prints test macro AUC of each: the
ceiling the task allows this encoder in a CPU budget, and the room left for pre-training at 1%.
"""
from __future__ import annotations

import argparse
import time

import torch

from cmitm_lib.config import get_preset
from cmitm_lib.data import load_finetune
from cmitm_lib.train import finetune


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--level", default="lesson", choices=("lesson", "subtle"))
    ap.add_argument("--epochs", type=int, default=10, help="epochs at 100%% of the labels")
    ap.add_argument("--lr", type=float, default=5e-4, help="peak AdamW lr at 100%% (the preset's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    preset = get_preset("tiny")
    preset.data.synth_level = a.level
    data = load_finetune("synth", "", preset, a.seed)
    rows = []
    for fraction, epochs, lr in ((1.0, a.epochs, a.lr), (0.01, None, None)):
        t0 = time.perf_counter()
        r = finetune(data, preset, None, fraction, epochs=epochs, lr=lr, seed=a.seed, progress=False)
        rows.append((fraction, r["n_train"], r["epochs"], r["lr"], r["val_auc"], r["test_auc"], time.perf_counter() - t0))
    print(f"supervised reference: tiny preset, random-init ViT E_v ({preset.model.global_pool} pool), SynthCXR "
          f"{a.level} level, task {data.name} ({len(data.classes)} findings), seed {a.seed}")
    print("labels  n_train  epochs  lr      val AUC  test AUC  seconds")
    for fraction, n, epochs, lr, val, test, secs in rows:
        print(f"{fraction:>5.0%}  {n:>7}  {epochs:>6}  {lr:<7g} {val:>7.3f}  {test:>8.3f}  {secs:>7.0f}")


if __name__ == "__main__":
    main()
