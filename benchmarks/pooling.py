"""Does mean-pooling hide the RSNA-like consolidation? Linear probes on mean-, max- and mean+max-pooled E_v tokens.

    python benchmarks/pooling.py --scale cnn --seeds 5 --out runs/reference     # ~10 min on 2 CPU cores

The benchmark probes E_v through the mean of its patch tokens, as the fine-tuning classifier pools
them. A consolidation covers a few percent of the image, so its tokens are a few percent of that
mean. This script probes the same frozen encoders -- random init and the `reference` experiment's
label-supervised E_v (`experiment.METHODS["supervised"]`, trained here when missing from
``--out/<scale>``) -- through three poolings of the same tokens, with the runner's own label
fractions and `experiment.linear_probe`, and prints mean ± 95% CI over seeds and the paired
difference supervised - random per pooling. A diagnostic for choosing the benchmark's next
calibration; the benchmark itself keeps mean-pooling.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from cmitm_lib import experiment as ex
from cmitm_lib.data import load_finetune
from cmitm_lib.data.datasets import LabelData, LabelDataset
from cmitm_lib.data.fractions import fraction_indices
from cmitm_lib.models import build_classifier
from cmitm_lib.paths import resolve
from cmitm_lib.train import seed_everything

POOLS = ("mean", "max", "mean+max")


@torch.no_grad()
def pooled_features(net, images, preset, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Patch tokens of every image (eval transform), pooled three ways."""
    net.eval()
    dummy = np.zeros((len(images), 1), dtype=np.float32)
    loader = DataLoader(LabelDataset(LabelData(images, dummy), preset.data, preset.model, train=False),
                        batch_size=batch_size)
    out = {p: [] for p in POOLS}
    for x, _ in loader:
        full = net.forward_features(x)
        mean = net.forward_head(full, pre_logits=True)  # exactly the runner's features (`network_features`)
        peak = full[:, 1:].amax(1)  # per channel, the largest patch token (the class-token slot left out)
        out["mean"].append(mean)
        out["max"].append(peak)
        out["mean+max"].append(torch.cat([mean, peak], 1))
    return {p: torch.cat(v).numpy() for p, v in out.items()}


def summary(values: list[float]) -> str:
    v = 100 * np.asarray(values)
    if len(v) < 2:
        return f"{v.mean():.1f}"
    return f"{v.mean():+.1f} ± {ex.t_quantile(len(v)) * v.std(ddof=1) / np.sqrt(len(v)):.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", default="cnn", choices=tuple(ex.SCALES))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", default="runs/reference", help="the reference experiment's output folder (its cache)")
    ap.add_argument("--tasks", nargs="+", default=["synth-rsna", "synth"], choices=ex.ALL_TASKS)
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.1, 1.0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    preset = ex.scaled_preset(args.scale)
    out = resolve(args.out) / args.scale
    out.mkdir(parents=True, exist_ok=True)
    ex.check_same_preset(out, preset)
    (out / "preset.json").write_text(json.dumps(preset.to_dict(), indent=2))  # as the runner does
    print(f"{platform.machine()}, {args.threads} threads, torch {torch.__version__}; scale {args.scale}, "
          f"{args.seeds} seeds, encoders from {out}")
    data = {t: load_finetune(t, "", preset, 0) for t in args.tasks}
    # results[(task, pool, method, fraction)] = [test metric per seed]
    results: dict[tuple, list[float]] = {}
    for seed in range(args.seeds):
        for method in ("random", "supervised"):
            state = ex.pretrained_encoder(method, seed, preset, out)
            seed_everything(seed)  # the random-init encoder depends on the seed, as in the runner
            net = build_classifier(preset.model, 1, state)
            for task, d in data.items():
                feats = {s: pooled_features(net, getattr(d, s).images, preset) for s in ("train", "val", "test")}
                for pool in POOLS:
                    for f in args.fractions:
                        idx = fraction_indices(len(d.train), f, seed, d.train.labels)
                        r = ex.linear_probe(feats["train"][pool][idx], d.train.labels[idx], feats["val"][pool],
                                            d.val.labels, feats["test"][pool], d.test.labels, d.task, d.metric)
                        results.setdefault((task, pool, method, f), []).append(r["test"])
        print(f"seed {seed} done, {time.perf_counter() - t0:.0f} s")
    fr = "".join(f" | {f:g}" for f in args.fractions)
    for task, d in data.items():
        print(f"\n{task}: test {d.metric} x 100, mean ± 95% CI over {args.seeds} seeds\n")
        print(f"| pooling | encoder{fr} |\n|---|---|" + "---|" * len(args.fractions))
        for pool in POOLS:
            for method in ("random", "supervised"):
                cells = " | ".join(summary(results[(task, pool, method, f)]).lstrip("+") for f in args.fractions)
                print(f"| {pool} | {method} | {cells} |")
            diffs = " | ".join(summary(np.subtract(results[(task, pool, "supervised", f)],
                                                   results[(task, pool, "random", f)])) for f in args.fractions)
            print(f"| {pool} | supervised - random | {diffs} |")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
