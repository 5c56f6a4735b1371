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
import platform
import time

import numpy as np
import torch

from cmitm_lib import experiment as ex
from cmitm_lib.data import load_finetune
from cmitm_lib.data.fractions import fraction_indices
from cmitm_lib.models import build_classifier
from cmitm_lib.paths import resolve
from cmitm_lib.train import seed_everything

POOLS = ("mean", "max", "mean+max")


def mean_and_max(net, tokens: torch.Tensor) -> torch.Tensor:
    """The runner's features (the mean of the patch tokens, `experiment.network_features`) beside the
    per-channel maximum over the patch tokens (the class-token slot left out)."""
    return torch.cat([net.forward_head(tokens, pre_logits=True), tokens[:, 1:].amax(1)], 1)


def pooled_features(net, images, preset) -> dict[str, np.ndarray]:
    """Patch tokens of every image (eval transform), pooled three ways, from one forward pass."""
    both = ex.network_features(net, images, preset, "cpu", pool=mean_and_max)
    d = both.shape[1] // 2
    return {"mean": both[:, :d], "max": both[:, d:], "mean+max": both}


def summary(values: list[float]) -> str:
    """Mean ± 95% CI half-width (Student t, as `experiment.summarize`) of test metrics, x 100."""
    v = 100 * np.asarray(values)
    if len(v) < 2:
        return f"{v.mean():.1f}"
    return f"{v.mean():.1f} ± {ex.t_quantile(len(v)) * v.std(ddof=1) / np.sqrt(len(v)):.1f}"


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
    ex.prepare_output(out, preset)  # as the runner does
    print(f"{platform.machine()}, {args.threads} threads, torch {torch.__version__}; scale {args.scale}, "
          f"{args.seeds} seeds, encoders from {out}")
    data = {t: load_finetune(t, "", preset, 0) for t in args.tasks}
    # one runner-style row per evaluation, the pooling in the method name ("supervised max"), so that
    # the paired differences are `experiment.compare`'s
    rows: list[dict] = []
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
                        rows.append({"method": f"{method} {pool}", "task": task, "fraction": f, "seed": seed,
                                     "test": r["test"]})
        print(f"seed {seed} done, {time.perf_counter() - t0:.0f} s")
    fr = "".join(f" | {f:g}" for f in args.fractions)
    for task, d in data.items():
        print(f"\n{task}: test {d.metric} x 100, mean ± 95% CI over {args.seeds} seeds\n")
        print(f"| encoder, pooling{fr} |\n|---|" + "---|" * len(args.fractions))
        for pool in POOLS:
            for method in ("random", "supervised"):
                cells = " | ".join(summary([r["test"] for r in rows if r["method"] == f"{method} {pool}"
                                            and r["task"] == task and r["fraction"] == f]) for f in args.fractions)
                print(f"| {method} {pool} | {cells} |")
    print("\nPaired by seed (`>` / `<`: the 95% CI excludes 0, `=`: it does not):\n")
    print(ex.comparison_table([c for pool in POOLS
                               for c in ex.compare(rows, f"supervised {pool}", f"random {pool}")]))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
