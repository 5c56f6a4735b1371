"""Can each SynthCXR finding be read off random-init features? Per-finding linear probes.

    python benchmarks/findings_probe.py                       # this checkout's generator, ~2 min on 2 CPU cores
    python benchmarks/findings_probe.py --encoder runs/experiments/conv/pretrain/seed0/supervised/encoder.safetensors \
        --domain pretrain                                      # a trained E_v, on pre-training-domain studies

For every finding: how much it changes the image (the brightest pixel of render(with) - render(without)
at the encoder's 64 px, median over the positives; the image noise is ~0.015 there), and the test AUC
of `evaluate.linear_probe` on frozen random-init E_v features (the `conv` scale's conv encoder, as the
`reference` and `claim` runs at that scale use; or the E_v weights of ``--encoder``) with 100% and 1% of
the training labels. The studies are the downstream stream's first 5000 / 500 / 1000 (seed 0), i.e. the
synth task's splits (``--domain pretrain``: the same number of pre-training-domain studies, from index
10000 on, past the 4000 pre-training pairs and 500 held-out ones), rendered by the chosen generator; the 1% figure is the mean over 5 label subsets (`fraction_indices`, seeds 0-4). This
is the check that calibrated benchmark version 2 (benchmarks/README.md, "Benchmark version 2"): a
finding that random features cannot see at 100% gives a label-efficiency claim nothing to measure.
"""
from __future__ import annotations

import argparse
import copy
import platform
import time

import numpy as np
import torch
from safetensors.torch import load_file

from cmitm_lib.data import synth
from cmitm_lib.data.fractions import fraction_indices
from cmitm_lib.evaluate import encoder_features, linear_probe
from cmitm_lib.lab.recipes import scaled_preset


def visibility(synth, seed: int, indices, name: str, domain: str, size: int = 128, out: int = 64) -> float:
    """Median over positives of the largest brightness change the finding makes at ``out`` px."""
    jumps = []
    for i in indices:
        p = synth.case_params(seed, int(i), domain)
        if name not in p["findings"]:
            continue
        q = copy.deepcopy(p)
        del q["findings"][name]
        k = size // out
        diff = (synth.render(p, size) - synth.render(q, size)).reshape(out, k, out, k).mean((1, 3))
        jumps.append(np.abs(diff).max())
    return float(np.median(jumps))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--encoder", default=None, help="E_v weights (encoder.safetensors) instead of random init")
    ap.add_argument("--domain", default="downstream", choices=("downstream", "pretrain"))
    ap.add_argument("--init-seeds", type=int, default=2, help="random-init encoders (seeds 0 ..)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    preset = scaled_preset("conv")
    state = None if args.encoder is None else load_file(args.encoder)
    print(f"{platform.machine()}, {args.threads} threads, torch {torch.__version__}; generator "
          f"of this checkout, {args.domain} studies, conv E_v "
          + (f"from {args.encoder}" if state else f"at random init, seeds 0-{args.init_seeds - 1}"))
    n_train, n_val, n_test = preset.data.n_finetune
    start = 0 if args.domain == "downstream" else 10_000
    batch = synth.generate_cases(n_train + n_val + n_test, seed=0, size=preset.data.synth_size, domain=args.domain,
                                 start=start)
    parts = np.split(np.arange(len(batch.labels)), [n_train, n_train + n_val])
    feats = [encoder_features(state, batch.images, preset, s) for s in range(1 if state else args.init_seeds)]
    print("\n| finding | positives in train | max brightness change (median) | AUC 100% | AUC 1% (5 subsets) |")
    print("|---|---|---|---|---|")
    for k, name in enumerate(synth.FINDINGS):
        y = batch.labels[:, [k]]
        tr, va, te = (y[p] for p in parts)
        full, one = [], []
        for f in feats:
            ftr, fva, fte = (f[p] for p in parts)
            full.append(linear_probe(ftr, tr, fva, va, fte, te, "multilabel", "auc")["test"])
            for s in range(5):
                idx = fraction_indices(n_train, 0.01, s, tr)
                one.append(linear_probe(ftr[idx], tr[idx], fva, va, fte, te, "multilabel", "auc")["test"])
        jump = visibility(synth, 0, start + parts[0][:1000], name, args.domain)
        print(f"| {name} | {int(tr.sum())} | {jump:.3f} | {100 * np.mean(full):.1f} | {100 * np.mean(one):.1f} |")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
