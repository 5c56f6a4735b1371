"""Checkpoints are folders: ``model.safetensors`` (weights), ``config.json`` (preset + what made it),
``tokenizer.json`` (the report vocabulary). Nothing is ever unpickled."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import Preset, preset_from_dict
from .models import CMITM
from .paths import resolve
from .text import load_tokenizer, save_tokenizer

FILES = ("model.safetensors", "config.json", "tokenizer.json")


def save_checkpoint(path: str | Path, model: CMITM, preset: Preset, tokenizer, meta: dict | None = None) -> Path:
    """Write the three files (each written to a temporary name, then renamed)."""
    path = resolve(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path / "model.safetensors.tmp"
    save_file(state, str(tmp))
    tmp.replace(path / "model.safetensors")
    config = {"preset": preset.to_dict(), "meta": meta or {}}
    (path / "config.json.tmp").write_text(json.dumps(config, indent=2))
    (path / "config.json.tmp").replace(path / "config.json")
    save_tokenizer(tokenizer, path / "tokenizer.json")
    return path


def read_config(path: str | Path) -> dict:
    path = resolve(path)
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"checkpoint {path} is missing {', '.join(missing)}; a checkpoint folder holds "
            f"{', '.join(FILES)} (written by the stage-1 / stage-2 training, e.g. notebooks 02 and 03)")
    return json.loads((path / "config.json").read_text())


def load_checkpoint(path: str | Path, expect_preset: str | None = None, device: str | torch.device = "cpu"):
    """(model, tokenizer, preset, meta). Fails clearly when the folder is incomplete or was made
    with another preset than ``expect_preset``."""
    config = read_config(path)
    preset = preset_from_dict(config["preset"])
    if expect_preset is not None and preset.name != expect_preset:
        raise ValueError(f"checkpoint {resolve(path)} was trained with preset={preset.name!r}, but "
                         f"preset={expect_preset!r} was requested; pass preset={preset.name!r} or another checkpoint")
    model = CMITM(preset.model)
    state = load_file(str(resolve(path) / "model.safetensors"), device=str(device))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"checkpoint {resolve(path)} does not match its config.json: {e}") from None
    return model.to(device), load_tokenizer(resolve(path) / "tokenizer.json"), preset, config["meta"]
