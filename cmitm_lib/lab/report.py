"""Reading a grid: summaries over seeds (Student t intervals), paired comparisons, tables, plots,
the markdown section of each experiment and the docs page of a scale's folder."""
from __future__ import annotations

import json
import math
import os
import platform
import shutil
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from scipy.stats import t as student_t

from ..data import SYNTH_TASKS
from ..paths import repo_root, resolve
from .recipes import EXPERIMENTS, FIG3_RATIOS, RECIPES


def t_quantile(n: int) -> float:
    """Two-sided 95% Student-t quantile for n samples (n - 1 degrees of freedom)."""
    return float(student_t.ppf(0.975, n - 1)) if n > 1 else math.nan


def summarize(rows: list[dict]) -> list[dict]:
    """Mean, standard deviation and 95% CI half-width (Student t) over seeds, per method/task/fraction."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["task"], r["fraction"], r["metric"]), []).append(100 * r["test"])
    order = {m: i for i, m in enumerate(RECIPES)}
    out = []
    for (method, task, fraction, metric), values in sorted(groups.items(), key=lambda kv: (
            SYNTH_TASKS.index(kv[0][1]), kv[0][2], order[kv[0][0]])):
        v = np.array(values)
        sd = float(v.std(ddof=1)) if len(v) > 1 else math.nan
        out.append({"method": method, "label": RECIPES[method][0], "task": task, "fraction": fraction,
                    "metric": metric, "n": len(v), "mean": float(v.mean()), "sd": sd,
                    "ci95": t_quantile(len(v)) * sd / math.sqrt(len(v)) if len(v) > 1 else math.nan})
    return out


def compare(rows: list[dict], a: str, b: str) -> list[dict]:
    """Method ``a`` minus method ``b`` per task and fraction, paired by seed (metric x 100).

    ``verdict`` is "a > b" / "a < b" when the 95% CI of the paired differences excludes 0,
    "no clear difference" when it does not, and "one seed: no CI" with a single seed.
    """
    by = {(r["method"], r["task"], r["fraction"], r["seed"]): 100 * r["test"] for r in rows}
    out = []
    for task in SYNTH_TASKS:
        for fraction in sorted({r["fraction"] for r in rows}):
            seeds = sorted(s for (m, t, f, s) in by if m == a and t == task and f == fraction
                           and (b, task, fraction, s) in by)
            if not seeds:
                continue
            diff = np.array([by[(a, task, fraction, s)] - by[(b, task, fraction, s)] for s in seeds])
            ci = t_quantile(len(diff)) * diff.std(ddof=1) / math.sqrt(len(diff)) if len(diff) > 1 else math.nan
            if len(diff) < 2:
                verdict = "one seed: no CI"
            elif abs(diff.mean()) > ci:
                verdict = f"{a} > {b}" if diff.mean() > 0 else f"{a} < {b}"
            else:
                verdict = "no clear difference"
            out.append({"task": task, "fraction": fraction, "a": a, "b": b, "n": len(diff),
                        "diff": float(diff.mean()), "ci95": float(ci), "verdict": verdict})
    return out


def comparison_table(comparisons: list[dict]) -> str:
    """Comparisons as rows, (task, fraction) as columns; a cell is the paired difference x 100 ± its
    95% CI, marked ">" / "<" where the CI excludes 0 and "=" where it does not (blank mark: one seed)."""
    marks = {"no clear difference": " =", "one seed: no CI": ""}
    cols = sorted({(c["task"], c["fraction"]) for c in comparisons}, key=lambda c: (SYNTH_TASKS.index(c[0]), c[1]))
    pairs = list(dict.fromkeys((c["a"], c["b"]) for c in comparisons))
    cell = {(c["a"], c["b"], c["task"], c["fraction"]): c for c in comparisons}

    def fmt(c):
        ci = "" if math.isnan(c["ci95"]) else f" ± {c['ci95']:.1f}"
        mark = marks.get(c["verdict"], " >" if c["diff"] > 0 else " <")
        return f"{c['diff']:+.1f}{ci}{mark}"

    lines = ["| comparison | " + " | ".join(f"{t} {f:.0%}" for t, f in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for a, b in pairs:
        lines.append(f"| {a} - {b} | " + " | ".join(
            fmt(cell[(a, b, t, f)]) if (a, b, t, f) in cell else "" for t, f in cols) + " |")
    return "\n".join(lines)


def _cell(s: dict) -> str:
    return f"{s['mean']:.1f}" if s["n"] < 2 else f"{s['mean']:.1f} ± {s['ci95']:.1f}"


def markdown_table(summary: list[dict]) -> str:
    """Methods as rows, (task, fraction) as columns; metric x 100, mean ± 95% CI half-width."""
    cols = sorted({(s["task"], s["fraction"]) for s in summary}, key=lambda c: (SYNTH_TASKS.index(c[0]), c[1]))
    methods = [m for m in RECIPES if any(s["method"] == m for s in summary)]
    cell = {(s["method"], s["task"], s["fraction"]): s for s in summary}
    metric = {s["task"]: s["metric"] for s in summary}
    head = "| method | " + " | ".join(f"{t} {metric[t]} {f:.0%}" for t, f in cols) + " |"
    lines = [head, "|---" * (len(cols) + 1) + "|"]
    for m in methods:
        lines.append(f"| {RECIPES[m][0]} | " + " | ".join(
            _cell(cell[(m, t, f)]) if (m, t, f) in cell else "" for t, f in cols) + " |")
    return "\n".join(lines)


def plot(summary: list[dict], rows: list[dict], title: str = ""):
    """One panel per task: test metric against label fraction, one line per method; points are means over
    seeds, bars the 95% Student-t interval of the tables (mean ± t * SE; none for one seed)."""
    df = pd.DataFrame(rows)
    df["test x100"] = 100 * df["test"]
    df["labels"] = df["fraction"].map(lambda f: f"{f:.0%}")
    tasks = [t for t in SYNTH_TASKS if t in set(df["task"])]
    n = df["seed"].nunique()
    errorbar = ("se", t_quantile(n)) if n > 1 else None  # seaborn's ("ci", 95) would bootstrap 3 values
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        sub = df[df["task"] == task]
        dodge = 0.3 if sub["method"].nunique() > 1 else False  # seaborn divides by (methods - 1)
        sns.pointplot(data=sub, x="labels", y="test x100", hue="method", ax=ax, errorbar=errorbar,
                      dodge=dodge, markersize=4, linewidth=1.2, legend=ax is axes[0][-1])
        ax.set_title(f"{task} ({sub['metric'].iloc[0]})", fontsize=9)
        ax.set_xlabel("labelled training images")
    if axes[0][-1].get_legend() is not None:
        sns.move_legend(axes[0][-1], "upper left", bbox_to_anchor=(1, 1), fontsize=7, title=None)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def examples_figure(data, per_class: int = 4):
    """A few training images of each class of a task (multi-label: images with that finding)."""
    k = len(data.classes)
    fig, axes = plt.subplots(k, per_class, figsize=(1.3 * per_class, 1.35 * k), squeeze=False)
    for row, name in enumerate(data.classes):
        idx = np.flatnonzero(data.train.labels[:, row] == 1)[:per_class]
        for col in range(per_class):
            ax = axes[row][col]
            ax.axis("off")
            if col < len(idx):
                ax.imshow(data.train.images[idx[col]], cmap="gray", vmin=0, vmax=255)
        axes[row][0].set_title(name, fontsize=8, loc="left")
    fig.suptitle(f"{data.name}: training images per class", fontsize=9)
    fig.tight_layout()
    return fig


def write_report(experiment: str, rows: list[dict], out: str | Path, command: str) -> dict:
    """results_<experiment>.csv, summary JSON, plot PNG and a markdown section; returns their paths."""
    out = resolve(out)
    summary = summarize(rows)
    protocols = sorted({r["protocol"] for r in rows})
    name = experiment if protocols == ["linear"] else f"{experiment}_{'_'.join(protocols)}"
    fractions = sorted({r["fraction"] for r in rows})
    if fractions != sorted(EXPERIMENTS[experiment][2]):  # --fractions: a section of its own, beside the default one
        name += "_f" + "-".join(f"{f:g}" for f in fractions)
    seeds = sorted({r["seed"] for r in rows})
    if seeds and seeds[0] != 0:  # fresh seeds (run's first_seed): a section of its own, beside seeds 0..n-1
        name += f"_seeds{seeds[0]}-{seeds[-1]}"
    paths = {"csv": out / f"{name}_results.csv", "summary": out / f"{name}_summary.json",
             "plot": out / f"{name}.png", "markdown": out / f"{name}.md"}
    pd.DataFrame(rows).to_csv(paths["csv"], index=False)
    paths["summary"].write_text(json.dumps(summary, indent=2))
    fig = plot(summary, rows, f"{name}: test metric x 100 (mean, 95% CI over seeds)")
    fig.savefig(paths["plot"], dpi=110, bbox_inches="tight")
    plt.close(fig)
    paths["markdown"].write_text(
        f"### {name}\n\nCommand: `{command}`  \nSeeds: {len(seeds)} ({', '.join(map(str, seeds))}); protocol: "
        f"{', '.join(sorted({r['protocol'] for r in rows}))}; results: `{paths['csv'].name}` "
        f"({len(rows)} rows). Metric x 100, mean ± 95% CI half-width (Student t) over seeds.\n\n"
        + markdown_table(summary) + "\n" + _claims_markdown(experiment, rows))
    return {k: str(v) for k, v in paths.items()}


CLAIMS = {  # experiment -> (a, b) pairs the paper claims a > b for
    "table1": (("cmitm", "random"), ("cmitm", "mae"), ("cmitm", "mrm"), ("cmitm", "clip"), ("mae", "random")),
    "table2": (("cmitm", "joint"), ("cmitm", "no_mask"), ("cmitm", "no_rep")),
    "fig2": (("cmitm", "mrm"), ("cmitm", "ccl")),
    "fig3": tuple(("cmitm_m0.75", f"cmitm_m{r:g}") for r in FIG3_RATIOS if r != 0.75),
    "calibration": (),
    "claim": (("cmitm", "random"), ("cmitm", "mrm")),
    "ratios": tuple((m, "random") for m in EXPERIMENTS["ratios"][0] if m != "random"),
    "reference": (("supervised", "random"),),  # not a claim of the paper
}


def _claims_markdown(experiment: str, rows: list[dict]) -> str:
    comparisons = [c for a, b in CLAIMS[experiment] for c in compare(rows, a, b)]
    if not comparisons:
        return ""
    what = "Paired differences (a reference, not a claim of the paper; " if experiment == "reference" else \
        "The paper's claims as paired differences ("
    return (f"\n{what}metric x 100, mean over seeds ± 95% CI; `>` or `<`: "
            "the CI excludes 0, `=`: it does not, no mark: one seed):\n\n" + comparison_table(comparisons) + "\n")


def pretrain_seconds(out: str | Path) -> dict[str, float]:
    """Seconds each cached pre-training link took, summed over seeds (from the checkpoints' meta)."""
    totals: dict[str, float] = {}
    for cfg in sorted(resolve(out).glob("pretrain/seed*/*/config.json")):
        meta = json.loads(cfg.read_text())["meta"]
        totals[meta["method_link"]] = totals.get(meta["method_link"], 0.0) + meta["seconds"]
    return totals


def _shown(path: Path) -> str:
    """A path as the reader of a docs page can use it: relative to the repository root when inside it."""
    try:
        return str(path.relative_to(repo_root()))
    except ValueError:
        return str(path)


def write_docs(out: str | Path, docs: str | Path, command: str) -> Path:
    """A markdown page from every experiment section found in ``out`` (one scale's folder), with
    the plots copied next to it (``<docs stem>_<experiment>.png``) and the pre-training times; every
    number comes from ``out``."""
    out, docs = resolve(out), resolve(docs)
    docs.parent.mkdir(parents=True, exist_ok=True)
    preset = json.loads((out / "preset.json").read_text())
    d, s1, s2 = preset["data"], preset["stage1"], preset["stage2"]
    encoder = ("the paper's ViT" if preset["model"]["encoder"] == "vit"
               else "convolutional (`models.ConvEncoder`, opt-in; not the paper's ViT)")
    version_file = out / "benchmark.json"
    version = (json.loads(version_file.read_text())["benchmark_version"] if version_file.is_file()
               else "not recorded")
    parts = [
        "# Results on the embedded benchmark (SynthCXR)\n",
        f"Assembled by `{command}` on {time.strftime('%Y-%m-%d')} ({platform.machine()}, {os.cpu_count()} "
        f"CPU cores, torch "
        f"{torch.__version__}) from the sections that the runs in `{_shown(out)}/` wrote; each "
        "section names the command that made it, and every number is in the CSV it names. Benchmark "
        f"version {version} (`data.benchmark_version()`: the hash of SynthCXR's generator and tasks source; "
        "a checkout whose hash differs makes other numbers).\n",
        f"Image encoder E_v: {encoder}. SynthCXR level: {d['synth_level']}. "
        f"Pre-training: {d['n_pretrain']} SynthCXR pairs (pre-training acquisition domain), stage 1 "
        f"{s1['epochs']} epochs (lr {s1['lr']:g}), stage 2 {s2['epochs']} epochs (lr {s2['lr']:g}, image mask ratio "
        f"{s2['mask_ratio']:g}), batch "
        f"{s1['batch_size']}. Downstream: train / val / test = {tuple(d['n_finetune'])} studies per task, from the "
        "downstream acquisition domain (see `cmitm_lib/data/tasks.py`).\n",
    ]
    order = list(EXPERIMENTS)  # sections in this order, each experiment's default section first:
    sections = sorted((md for md in out.glob("*.md") if md.stem.split("_")[0] in EXPERIMENTS),
                      key=lambda md: (order.index(md.stem.split("_")[0]), md.stem))  # table1, table1_f0.05, ...
    for md in sections:
        parts.append(md.read_text())
        png = out / f"{md.stem}.png"
        if png.is_file():
            target = docs.parent / f"{docs.stem}_{md.stem}.png"  # results.md -> results_table1.png
            shutil.copyfile(png, target)
            parts.append(f"![{md.stem}]({target.name})\n")
    seconds = pretrain_seconds(out)
    if seconds:
        parts.append("### Pre-training time (seconds, summed over seeds)\n\n| link | seconds |\n|---|---|\n"
                     + "\n".join(f"| {k} | {v:.0f} |" for k, v in seconds.items()) + "\n")
    docs.write_text("\n".join(parts))
    return docs
