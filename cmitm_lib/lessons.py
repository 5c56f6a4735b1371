"""Train-or-load for the lessons: the stage-1 and stage-2 checkpoints the lessons share.

`make demo` and lessons 2 and 3 write ``runs/lessons/stage1`` and ``runs/lessons/stage2``; lessons 3 and 4
read them. `load_or_pretrain` loads a checkpoint folder when it holds one and otherwise trains it at the
preset's defaults on the embedded SynthCXR pairs (stage 2 first loads or trains stage 1), so every lesson
runs on its own in a fresh clone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .checkpoint import load_checkpoint, save_checkpoint
from .config import (ENCODERS, HEAD_INITS, PRESETS, Preset, check_choice, check_fraction, check_positive, check_positive_int,
                     check_ratio, get_preset)
from .data import FINETUNE_DATASETS, PRETRAIN_DATASETS, load_pretrain
from .device import resolve_device
from .paths import resolve
from .text import train_tokenizer
from .evaluate import retrieval
from .train import build_model, pretrain

STAGES = ("stage1", "stage2")


def train_stage(stage: str, model, tokenizer, preset: Preset, out: str | Path, *, dataset: str = "synth",
                data_root: str = "", reader_options: dict | None = None, seed: int = 0, device: str = "auto",
                progress: bool = True, **train_options) -> dict:
    """Train ``model`` with ``stage``'s objective at the preset's defaults (``train_options``, e.g. epochs or
    lr, override them; None = the preset's), measure held-out retrieval, save the checkpoint to ``out``;
    returns its meta (what it was trained on, the loss history, held-out retrieval)."""
    pairs, heldout = load_pretrain(dataset, data_root, preset, seed, **(reader_options or {}))
    train_options = {k: v for k, v in train_options.items() if v is not None}
    history = pretrain(model, tokenizer, pairs, preset, stage, seed=seed, device=device, progress=progress,
                       **train_options)
    stage_cfg = preset.stage2 if stage == "stage2" else preset.stage1
    meta = {"stage": stage, "dataset": dataset, "synth_level": preset.data.synth_level if dataset == "synth" else None,
            "n_train_pairs": len(pairs), "epochs": len(history), "lr": train_options.get("lr", stage_cfg.lr),
            "seed": seed, "history": history, "retrieval": retrieval(model, tokenizer, heldout, preset, device)}
    save_checkpoint(out, model, preset, tokenizer, meta)
    return meta


def load_or_pretrain(path: str | Path, stage: str, preset: str = "tiny", *, stage1_path: str | Path | None = None,
                     seed: int = 0, device: str = "auto", log=print):
    """(model, tokenizer, preset, meta) of the checkpoint folder ``path``: loaded when it holds a checkpoint,
    else ``stage`` is trained at the preset's defaults on the embedded SynthCXR pairs and saved there (``log``
    says which). Stage 2 starts from ``stage1_path`` (default: the ``stage1`` folder beside ``path``), itself
    loaded or trained the same way."""
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r} is not valid; choose one of: {', '.join(STAGES)}")
    path = resolve(path)
    if (path / "config.json").is_file():
        model, tokenizer, p, meta = load_checkpoint(path, expect_preset=preset, device="cpu")
        log(f"loaded {path}: {meta.get('stage')}, {meta.get('epochs')} epochs on {meta.get('n_train_pairs')} "
            f"{meta.get('dataset')} pairs")
        return model, tokenizer, p, meta
    if stage == "stage2":
        stage1_path = path.parent / "stage1" if stage1_path is None else stage1_path
        model, tokenizer, p, _ = load_or_pretrain(stage1_path, "stage1", preset, seed=seed, device=device, log=log)
    else:
        p = get_preset(preset)
        pairs, _ = load_pretrain("synth", "", p, seed)
        tokenizer = train_tokenizer(pairs.reports, p.model.vocab_size)
        model = build_model(p, tokenizer, seed=seed)
    cfg = p.stage2 if stage == "stage2" else p.stage1
    log(f"no checkpoint at {path}: training {stage} now at the {preset} preset's defaults ({cfg.epochs} epochs, "
        f"lr {cfg.lr:g}, mask ratio {cfg.mask_ratio}) on the embedded SynthCXR pairs")
    meta = train_stage(stage, model, tokenizer, p, path, seed=seed, device=device)
    log(f"saved {path}")
    return model.cpu(), tokenizer, p, meta


def format_table(rows: list[dict], timings: dict | None = None) -> str:
    """The fine-tuning table the demo and lesson 4 print: one row per initialisation."""
    metric = rows[0]["metric"]
    lines = [f"Fine-tuning on {rows[0]['dataset']}, test {metric.upper()} of the model chosen on validation:",
             f"{'initialisation':<26}{'labels':>8}{'images':>8}{'val ' + metric:>10}{'test ' + metric:>10}"]
    for r in rows:
        lines.append(f"{r['init']:<26}{r['fraction']:>8.0%}{r['n_train']:>8}"
                     f"{r[f'val_{metric}']:>10.3f}{r[f'test_{metric}']:>10.3f}")
    if timings:
        lines.append("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    return "\n".join(lines)


def closing_line(rows: list[dict]) -> str:
    """One sentence on what the demo's table shows: CMITM against random init and against stage 1 only."""
    metric = rows[0]["metric"]
    test = {r["init"]: r[f"test_{metric}"] for r in rows}
    cmitm, random_init = test["CMITM"], test["random"]
    stage1 = next(v for k, v in test.items() if k.startswith("stage 1"))
    diff = f"{cmitm - random_init:+.3f} test {metric.upper()}"
    line = f"CMITM init beats random init by {diff}" if cmitm > random_init else \
        (f"CMITM init does not beat random init ({diff}) on this seed: at 64 px stage 2's masked image path "
         f"learns little of what the reports state (measured in docs/RESULTS.md, 'What held stage 2 back at 64 px')")
    if cmitm > stage1:
        return line + f" and stage 1 only by {cmitm - stage1:+.3f}."
    return line + (f"; stage 1 only scores {stage1 - cmitm:+.3f} above CMITM on this seed, i.e. stage 2's alignment "
                   f"did not add to what reconstruction taught E_v here.")


def check_parameters(**params: Any) -> None:
    """Check a notebook's or command's parameters up front, before any data is made or read.

    Knows: preset, encoder, head_init, dataset (pre-training names), finetune_dataset, epochs, finetune_epochs, batch_size,
    lr, mask_ratio, fractions, device, checkpoint_every, resume, accum_steps. Unknown names are an error too, so a
    typo cannot pass unnoticed.
    """
    for name, value in params.items():
        if name == "preset":
            check_choice(name, value, PRESETS)
        elif name == "encoder":
            check_choice(name, value, ENCODERS)
        elif name == "head_init":
            check_choice(name, value, HEAD_INITS)
        elif name == "dataset":
            check_choice(name, value, PRETRAIN_DATASETS)
        elif name == "finetune_dataset":
            check_choice(name, value, FINETUNE_DATASETS)
        elif name in ("epochs", "batch_size", "finetune_epochs", "accum_steps"):
            check_positive_int(name, value)
        elif name in ("lr",):
            check_positive(name, value)
        elif name == "checkpoint_every":
            if not (isinstance(value, int) and value >= 0):
                raise ValueError(f"checkpoint_every={value!r} must be an integer >= 0 (steps between resume "
                                 f"checkpoints; 0: none between epoch ends)")
        elif name == "resume":
            if not isinstance(value, bool):
                raise ValueError(f"resume={value!r} must be True or False")
        elif name == "mask_ratio":
            check_ratio(name, value)
        elif name == "fractions":
            for f in value:
                check_fraction(name, f)
        elif name == "device":
            resolve_device(value)
        else:
            raise TypeError(f"check_parameters got an unknown parameter {name!r}")
