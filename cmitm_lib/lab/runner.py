"""Running a grid: every (recipe, task, fraction, seed) of an experiment, cached and resumable.

Every finished evaluation is one line of ``out/results.jsonl``. Re-running the same command skips
what is done, so an interrupted grid resumes where it stopped. An output folder records the preset
(``preset.json``) and benchmark version (``benchmark.json``) it was made with and refuses a run of
another: the cache keys name recipes and seeds, not epochs or sizes.

Evaluation protocols (`protocol`):
- ``linear``: E_v frozen, pooled patch features (as the fine-tuning classifier pools them), one
  L2-regularised logistic regression per class (`evaluate.linear_probe`), C chosen on the validation
  split. Cheap on a CPU: the default for the CPU-scale grids.
- ``finetune``: `train.finetune`, every weight trained, best validation epoch scored on test (the
  paper's protocol; affordable on a CPU at 1% labels, hours at 100% -- use a GPU).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import Preset, check_choice, check_fraction, check_positive_int, flat_diff
from ..data import benchmark_version, load_finetune
from ..data.fractions import fraction_indices
from ..evaluate import encoder_features, linear_probe
from ..models import imagenet_encoder_state
from ..paths import resolve
from ..train import finetune
from .recipes import EXPERIMENTS, PROTOCOLS, RECIPES, SCALES, pretrained_encoder, scaled_preset

# ------------------------------------------------------------------ the output folder


def read_results(out: Path) -> list[dict]:
    """The rows of ``out/results.jsonl`` (none: an empty list)."""
    path = out / "results.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_result(out: Path, row: dict) -> None:
    with open(out / "results.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")


def check_same_preset(out: Path, preset: Preset) -> None:
    """Refuse an output folder whose cached checkpoints and rows were made with another preset: the
    cache keys name recipes and seeds, not epochs or sizes, so they would be reused silently."""
    saved = out / "preset.json"
    if not saved.is_file():
        return
    diff = flat_diff(json.loads(saved.read_text()), json.loads(json.dumps(preset.to_dict())))  # tuples as lists
    if diff:
        raise ValueError(f"{out} holds results made with another preset ({'; '.join(diff)}); its cached "
                         f"checkpoints and rows would be reused as if they were this preset's. Pass another "
                         f"output folder (--out DIR / out_dir) or delete {out} to start over")


def check_same_benchmark(out: Path) -> None:
    """Refuse an output folder whose rows and checkpoints were made from another version of the embedded
    benchmark (`data.benchmark_version`: the generator's and the tasks' source), or from an unrecorded
    one (results without ``benchmark.json``); write the version into a new one."""
    saved, now = out / "benchmark.json", benchmark_version()
    if saved.is_file():
        made = json.loads(saved.read_text()).get("benchmark_version")
    elif (out / "results.jsonl").is_file() or (out / "pretrain").is_dir():
        made = "unrecorded"
    else:
        made = now
    if made != now:
        raise ValueError(f"{out} holds results made from another version of the embedded benchmark ({made}; "
                         f"this checkout's SynthCXR generator and tasks are {now}); they would be reused as "
                         f"if they were made from this one. Pass another output folder (--out DIR / out_dir) "
                         f"or delete {out} to start over")
    saved.write_text(json.dumps({"benchmark_version": now}) + "\n")


def prepare_output(out: Path, preset: Preset) -> None:
    """Create ``out`` and refuse it if its cache was made with another preset or benchmark version;
    then record this run's (``preset.json``, ``benchmark.json``)."""
    out.mkdir(parents=True, exist_ok=True)
    check_same_preset(out, preset)
    check_same_benchmark(out)
    (out / "preset.json").write_text(json.dumps(preset.to_dict(), indent=2))


# ------------------------------------------------------------------ the grid


@dataclass
class _Grid:
    """What every evaluation of one `run` shares."""
    experiment: str
    scale: str
    protocol: str
    preset: Preset
    out: Path
    device: str
    log: Callable
    imagenet_weights: Path | None
    data: dict = field(default_factory=dict)  # task -> FinetuneData, loaded once

    def finetune_data(self, task: str):
        if task not in self.data:
            self.data[task] = load_finetune(task, "", self.preset, 0)
        return self.data[task]


def _image_set(task: str) -> str:
    """synth and synth-chexpert share their images; synth-covidx and synth-rsna have their own."""
    return task if task in ("synth-covidx", "synth-rsna") else "stream"


def _linear_scores(grid: _Grid, state, task: str, fraction: float, seed: int, feats: dict, todo: list) -> tuple:
    """The linear probe of frozen E_v features; ``feats`` caches each image set's features for the seed's
    recipe (only the training images some fraction of ``todo`` needs are embedded)."""
    d = grid.finetune_data(task)
    key = _image_set(task)
    if key not in feats:
        need = np.unique(np.concatenate([fraction_indices(len(d.train), f, seed, d.train.labels)
                                         for t, f in todo if _image_set(t) == key]))
        feats[key] = {"need": need, "train": encoder_features(state, d.train.images[need], grid.preset, seed,
                                                             grid.device)}
        feats[key].update({s: encoder_features(state, getattr(d, s).images, grid.preset, seed, grid.device)
                           for s in ("val", "test")})
    f = feats[key]
    idx = fraction_indices(len(d.train), fraction, seed, d.train.labels)
    r = linear_probe(f["train"][np.searchsorted(f["need"], idx)], d.train.labels[idx], f["val"],
                     d.val.labels, f["test"], d.test.labels, d.task, d.metric)
    return r, {"C": r["C"], "n_train": len(idx)}


def _finetune_scores(grid: _Grid, state, task: str, fraction: float, seed: int) -> tuple:
    """`train.finetune` from ``state``: every weight, best validation epoch scored on test."""
    d = grid.finetune_data(task)
    r = finetune(d, grid.preset, state, fraction, device=grid.device, seed=seed, progress=False)
    extra = {"n_train": len(fraction_indices(len(d.train), fraction, seed, d.train.labels))}
    return {"val": r[f"val_{d.metric}"], "test": r[f"test_{d.metric}"]}, extra


def _encoder(grid: _Grid, recipe: str, seed: int) -> dict | None:
    if recipe == "imagenet":
        return imagenet_encoder_state(grid.preset.model, grid.imagenet_weights, grid.log)
    return pretrained_encoder(recipe, seed, grid.preset, grid.out, grid.log, grid.device)


def _evaluate(grid: _Grid, recipe: str, seed: int, todo: list) -> None:
    """Score ``recipe``'s E_v on each (task, fraction) of ``todo``; one results.jsonl line each."""
    state = _encoder(grid, recipe, seed)
    feats = {}
    for task, fraction in todo:
        d = grid.finetune_data(task)
        t0 = time.perf_counter()
        if grid.protocol == "linear":
            r, extra = _linear_scores(grid, state, task, fraction, seed, feats, todo)
        else:
            r, extra = _finetune_scores(grid, state, task, fraction, seed)
        if recipe == "imagenet":
            extra["weights"] = grid.imagenet_weights.name
        row = {"experiment": grid.experiment, "method": recipe, "label": RECIPES[recipe][0], "task": task,
               "metric": d.metric, "fraction": fraction, "seed": seed, "protocol": grid.protocol,
               "scale": grid.scale, "val": r["val"], "test": r["test"], **extra,
               "seconds": round(time.perf_counter() - t0, 1)}
        append_result(grid.out, row)
        grid.log(f"  {recipe:>12} {task:>15} {fraction:>5g} seed {seed}: test {d.metric} {r['test']:.3f}")


def _row_key(row: dict) -> tuple:
    return (row["method"], row["task"], row["fraction"], row["seed"], row["protocol"], row["scale"])


def _grid_of(experiment: str, fractions, imagenet_weights) -> tuple[tuple, tuple, tuple]:
    """(recipes, tasks, fractions) of ``experiment``, with the imagenet row and ``fractions`` given."""
    recipes, tasks, default_fractions = EXPERIMENTS[experiment]
    if imagenet_weights is not None:
        if experiment != "table1":
            raise ValueError(f"imagenet_weights adds a row to table1 only, not to {experiment}")
        recipes = recipes[:1] + ("imagenet",) + recipes[1:]
    fractions = tuple(default_fractions if fractions is None else fractions)
    for f in fractions:
        check_fraction("fractions", f)
    return recipes, tasks, fractions


def run(experiment: str, scale: str = "quick", seeds: int | None = None, out: str | Path = "runs/experiments",
        protocol: str = "linear", device: str = "auto", preset: Preset | None = None, log=print,
        fractions: tuple[float, ...] | None = None, imagenet_weights: str | Path | None = None,
        first_seed: int = 0) -> list[dict]:
    """Train what is missing and evaluate every (recipe, task, fraction, seed) of ``experiment``.

    Returns the rows of this experiment (old and new). ``seeds`` defaults to the scale's; the seeds are
    ``first_seed`` .. ``first_seed + seeds - 1`` (a later ``first_seed`` gives fresh seeds, e.g. to
    confirm a result without re-using the seeds it was seen on). ``preset`` replaces the tiny preset as
    the base (tests pass a smaller one); ``fractions`` replaces the experiment's label fractions (e.g.
    (0.01,) for fine-tuning on a CPU). ``imagenet_weights`` (Table 1 only): a local timm ViT checkpoint,
    evaluated as the "imagenet" row (`models.imagenet_encoder_state`; its rows are cached like the
    others, so keep one file per ``out``).
    """
    check_choice("experiment", experiment, EXPERIMENTS)
    check_choice("protocol", protocol, PROTOCOLS)
    check_choice("scale", scale, SCALES)
    seeds = SCALES[scale].seeds if seeds is None else seeds
    check_positive_int("seeds", seeds)
    if not isinstance(first_seed, int) or first_seed < 0:
        raise ValueError(f"first_seed={first_seed!r} is not valid; use 0 (the default) or a positive integer")
    seed_range = range(first_seed, first_seed + seeds)
    preset = scaled_preset(scale, preset)
    out = resolve(out) / scale
    prepare_output(out, preset)
    recipes, tasks, fractions = _grid_of(experiment, fractions, imagenet_weights)
    weights = resolve(imagenet_weights) if imagenet_weights is not None else None
    grid = _Grid(experiment, scale, protocol, preset, out, device, log, weights)
    done = {_row_key(r) for r in read_results(out)}
    t_start = time.perf_counter()
    for seed in seed_range:
        for recipe in recipes:
            todo = [(t, f) for t in tasks for f in fractions if (recipe, t, f, seed, protocol, scale) not in done]
            if todo:
                _evaluate(grid, recipe, seed, todo)
    log(f"{experiment} ({scale}): {time.perf_counter() - t_start:.0f} s this run")
    return [r for r in read_results(out) if r["method"] in recipes and r["task"] in tasks
            and r["fraction"] in fractions and r["protocol"] == protocol and r["seed"] in seed_range]
