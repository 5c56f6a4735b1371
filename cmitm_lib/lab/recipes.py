"""What the lab runs: pre-training recipes, experiments (grids), scales, and the cached pre-training.

Every pre-training recipe is a chain of `train.pretrain` stages started from a fresh model. Each
finished link of a chain is a checkpoint folder under ``out/pretrain/seed<S>/``, shared by every
recipe that starts with it (stage 1 is trained once per seed for CMITM, its ablations and the
MRM-like baseline). One recipe is not a `train.pretrain` stage: the ``supervised`` reference
(`_supervised_link`), a classifier trained on the pre-training images' findings.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import NamedTuple

from safetensors.torch import load_file, save_file

from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import Preset, check_choice, get_preset
from ..data import SYNTH_TASKS, load_pretrain, load_pretrain_labels
from ..device import seed_everything
from ..text import load_tokenizer, save_tokenizer, train_tokenizer
from ..train import build_model, encoder_state, finetune, pretrain

# name -> (label, chain). A chain is a tuple of (stage, options); options: mask_ratio,
# rep_decoder (False = the "- representation decoder" ablation), epochs ("sum" = stage 1 + stage 2
# epochs, for recipes that replace the whole cascade), lr ("stage1" = stage 1's peak lr).
RECIPES: dict[str, tuple[str, tuple]] = {
    "random": ("random init", ()),
    "mae": ("MAE (image reconstruction only)", (("mae", {}),)),
    "mrm": ("MRM-like (stage 1 only: L_vr + L_tr)", (("stage1", {}),)),
    "clip": ("CLIP-like (contrastive only, no masking, no decoders)",
             (("stage2", {"mask_ratio": 0.0, "rep_decoder": False, "epochs": "sum", "lr": "stage1"}),)),
    "ccl": ("CCL only (masked contrastive + D_r, no stage 1)", (("stage2", {"epochs": "sum", "lr": "stage1"}),)),
    "cmitm": ("CMITM (stage 1 -> stage 2)", (("stage1", {}), ("stage2", {}))),
    "joint": ("- cascaded training (joint L_r + L_c)", (("joint", {"epochs": "sum"}),)),
    "no_mask": ("- image masking in stage 2", (("stage1", {}), ("stage2", {"mask_ratio": 0.0}))),
    "no_rep": ("- representation decoder", (("stage1", {}), ("stage2", {"rep_decoder": False}))),
}
# Not a method of the paper: E_v trained with labels instead of reports (the pre-training images' 7
# image-truth findings, BCE, every weight; `_supervised_link`), for as many epochs as the cascade.
RECIPES["supervised"] = ("supervised on the pre-training images' findings (reference, not the paper's)",
                         (("supervised", {}),))
# With run(imagenet_weights=...), Table 1 gains this row: E_v from a local timm checkpoint, no pre-training.
RECIPES["imagenet"] = ("ImageNet init (local timm weights)", ())
FIG3_RATIOS = (0.0, 0.25, 0.5, 0.75, 0.9)
for _r in FIG3_RATIOS:
    RECIPES[f"cmitm_m{_r:g}"] = (f"CMITM, stage-2 mask ratio {_r:g}", (("stage1", {}), ("stage2", {"mask_ratio": _r})))

EXPERIMENTS = {  # name -> recipes, tasks, fractions (the paper's choices for each table / figure)
    "table1": (("random", "mae", "mrm", "clip", "cmitm"), SYNTH_TASKS, (0.01, 0.1, 1.0)),
    "table2": (("cmitm", "joint", "no_mask", "no_rep"), ("synth-rsna", "synth-covidx"), (0.01,)),
    "fig2": (("mrm", "ccl", "cmitm"), ("synth-rsna", "synth-covidx"), (0.01,)),
    "fig3": (tuple(f"cmitm_m{r:g}" for r in FIG3_RATIOS), ("synth-rsna", "synth-covidx"), (0.01,)),
    # the benchmark's difficulty: random init at every fraction (run it with protocol="finetune")
    "calibration": (("random",), SYNTH_TASKS, (0.01, 0.1, 1.0)),
    # the core claim alone (CMITM and its stage 1 against random init)
    "claim": (("random", "mrm", "cmitm"), SYNTH_TASKS, (0.01, 0.1, 1.0)),
    # Fig. 3's ratios below 0.9 on every task and fraction against random init (the core claim per ratio)
    "ratios": (("random",) + tuple(f"cmitm_m{r:g}" for r in FIG3_RATIOS if r < 0.9), SYNTH_TASKS, (0.01, 0.1, 1.0)),
    # what a label-supervised encoder gets from the same images: is a task learnable at 1% at all?
    "reference": (("random", "supervised"), SYNTH_TASKS, (0.01, 0.1, 1.0)),
}
EXTRA_EXPERIMENTS = ("calibration", "claim", "ratios", "reference")  # not part of `cmitm experiment all`


class Scale(NamedTuple):
    seeds: int  # the default number of seeds
    changes: dict  # preset changes (`scaled_preset`)
    about: str  # one line for --help


SCALES = {
    "smoke": Scale(1, {"n_pretrain": 256, "n_heldout": 64, "n_finetune": (400, 100, 200), "stage1": 1, "stage2": 1,
                       "finetune": 1}, "1 seed, a few minutes, numbers meaningless"),
    "quick": Scale(1, {"n_pretrain": 2000, "stage1": 3, "stage2": 2, "finetune": 5},
                   "1 seed, 2000 pairs, stage 1 3 + stage 2 2 epochs, fine-tuning 5"),
    "full": Scale(3, {}, "3 seeds, the tiny preset as it is (the lesson recipe)"),
    "long": Scale(3, {"stage1": 40, "stage2": 12}, "3 seeds, full with stage 1 40 + stage 2 12 epochs"),
    "conv": Scale(3, {"encoder": "cnn", "stage2": 24, "stage2_lr": 3e-4, "stage2_mask_ratio": 0.25},
                  "3 seeds, full with the opt-in convolutional E_v (not the paper's ViT), stage 2 24 epochs "
                  "at lr 3e-4 and image mask ratio 0.25"),
}
PROTOCOLS = ("linear", "finetune")


def scaled_preset(scale: str, base: Preset | None = None) -> Preset:
    """The tiny preset (or ``base``) with the data sizes, epochs, learning rates and image encoder of ``scale``."""
    check_choice("scale", scale, SCALES)
    p = copy.deepcopy(base) if base is not None else get_preset("tiny")
    changes = SCALES[scale].changes
    if "encoder" in changes:
        p.model.encoder = changes["encoder"]
    for key in ("n_pretrain", "n_heldout", "n_finetune"):
        if key in changes:
            setattr(p.data, key, changes[key])
    for stage in ("stage1", "stage2", "finetune"):
        if stage in changes:
            getattr(p, stage).epochs = changes[stage]
        if f"{stage}_lr" in changes:
            getattr(p, stage).lr = changes[f"{stage}_lr"]
        if f"{stage}_mask_ratio" in changes:
            getattr(p, stage).mask_ratio = changes[f"{stage}_mask_ratio"]
    return p


# ------------------------------------------------------------------ pre-training with a cache


def _is_default(stage: str, key: str, value, preset: Preset | None) -> bool:
    """An option that only restates the preset (e.g. stage 2's own mask ratio) changes no training."""
    if key in ("epochs", "lr"):
        return True  # resolved from the preset by _step_arguments, not part of the name
    if preset is None:
        return False
    if key == "mask_ratio" and stage in ("stage1", "stage2"):
        return value == getattr(preset, stage).mask_ratio
    return key == "rep_decoder" and value is True and preset.model.use_rep_decoder


def chain_keys(chain: tuple, preset: Preset | None = None) -> list[str]:
    """Folder names of the links of a recipe's chain, e.g. ["stage1", "stage1__stage2-m0"]. With
    ``preset``, options equal to the preset's own values are left out, so the same training shares one
    folder (Fig. 3's ratio equal to the preset's stage-2 ratio is the CMITM link)."""
    keys, prefix = [], ""
    for stage, opts in chain:
        tag = stage + "".join(f"-{k[0]}{v}" for k, v in sorted(opts.items()) if not _is_default(stage, k, v, preset))
        prefix = f"{prefix}__{tag}" if prefix else tag
        keys.append(prefix)
    return keys


def _step_arguments(stage: str, opts: dict, preset: Preset) -> dict:
    s1, s2 = preset.stage1, preset.stage2
    epochs = s1.epochs + s2.epochs if opts.get("epochs") == "sum" else None
    lr = s1.lr if opts.get("lr") == "stage1" else None
    return {"epochs": epochs, "lr": lr, "mask_ratio": opts.get("mask_ratio")}


def _model_for_step(model, preset: Preset, tokenizer, opts: dict, seed: int):
    """Swap in a model without D_r (image_proj on E_v's width) when the step asks for it; the
    weights E_v, E_t, D_v, D_t carry over."""
    if opts.get("rep_decoder", True) or not model.cfg.use_rep_decoder:
        return model, preset
    preset = copy.deepcopy(preset)
    preset.model.use_rep_decoder = False
    fresh = build_model(preset, tokenizer, seed=seed)  # a new image_proj, seeded like every other init
    keep = {k: v for k, v in model.state_dict().items() if not k.startswith("image_proj.")}
    fresh.load_state_dict(keep, strict=False)
    return fresh, preset


def _tokenizer(root: Path, reports: list[str], preset: Preset):
    """The seed folder's tokenizer, trained on the pre-training reports the first time."""
    path = root / "tokenizer.json"
    if path.is_file():
        return load_tokenizer(path)
    tokenizer = train_tokenizer(reports, preset.model.vocab_size)
    root.mkdir(parents=True, exist_ok=True)
    save_tokenizer(tokenizer, path)
    return tokenizer


def pretrained_encoder(recipe: str, seed: int, preset: Preset, out: Path, log=print,
                       device: str = "auto") -> dict | None:
    """E_v's weights after ``recipe`` (None for random init), training missing links."""
    if recipe == "imagenet":
        raise ValueError("the imagenet row has no pre-training; get its weights with models.imagenet_encoder_state")
    chain = RECIPES[recipe][1]
    if not chain:
        return None
    root = out / "pretrain" / f"seed{seed}"
    keys = chain_keys(chain, preset)
    if chain[0][0] == "supervised":
        return _supervised_link(seed, preset, root / keys[0], log, device)
    done = [i for i, k in enumerate(keys) if (root / k / "config.json").is_file()]
    start = done[-1] + 1 if done else 0
    if start == len(keys):
        model, _, _, _ = load_checkpoint(root / keys[-1])
        return encoder_state(model)
    pairs, _ = load_pretrain("synth", "", preset, 0)  # the benchmark's data are fixed; seeds vary training
    tokenizer = _tokenizer(root, pairs.reports, preset)
    step_preset = copy.deepcopy(preset)
    if start == 0:
        seed_everything(seed)
        model = build_model(step_preset, tokenizer)
    else:
        model, tokenizer, step_preset, _ = load_checkpoint(root / keys[start - 1])
    for i in range(start, len(keys)):
        stage, opts = chain[i]
        model, step_preset = _model_for_step(model, step_preset, tokenizer, opts, seed)
        t0 = time.perf_counter()
        history = pretrain(model, tokenizer, pairs, step_preset, stage, seed=seed, device=device, progress=False,
                           **_step_arguments(stage, opts, step_preset))
        seconds = time.perf_counter() - t0
        last = {k: round(v, 4) for k, v in history[-1].items() if k.startswith("loss")}
        log(f"  pre-trained {keys[i]} (seed {seed}) in {seconds:.0f} s, last epoch {last}")
        save_checkpoint(root / keys[i], model, step_preset, tokenizer,
                        {"method_link": keys[i], "seed": seed, "history": history, "seconds": seconds})
    return encoder_state(model)


def _supervised_link(seed: int, preset: Preset, path: Path, log=print, device: str = "auto") -> dict:
    """E_v of a classifier trained on the pre-training images' findings (`data.load_pretrain_labels`;
    `train.finetune` with every label, best held-out epoch), cached in ``path`` as
    ``encoder.safetensors`` + ``config.json`` (what made it; written last, so it marks the link done)."""
    if (path / "config.json").is_file():
        return load_file(str(path / "encoder.safetensors"))
    epochs = preset.stage1.epochs + preset.stage2.epochs  # the cascade's epoch budget
    t0 = time.perf_counter()
    r = finetune(load_pretrain_labels(preset), preset, None, 1.0, epochs=epochs, device=device, seed=seed,
                 progress=False, keep_model=True)
    seconds = time.perf_counter() - t0
    state = {k: v.contiguous() for k, v in r.pop("model").state_dict().items() if not k.startswith("head.")}
    path.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path / "encoder.safetensors"))
    meta = {"method_link": path.name, "seed": seed, "seconds": seconds, "epochs": epochs,
            "best_epoch": r["best_epoch"], "heldout_auc": r["val_auc"], "history": r["history"]}
    (path / "config.json").write_text(json.dumps({"preset": preset.to_dict(), "meta": meta}, indent=2))
    log(f"  trained {path.name} (seed {seed}) in {seconds:.0f} s, best epoch {r['best_epoch']} of {epochs}, "
        f"held-out macro AUC {r['val_auc']:.3f}")
    return state
