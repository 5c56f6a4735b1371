"""Where things go. Relative paths given to the kit are resolved against the repository root, so a
notebook run by papermill from the repo root and by nbval from inside ``notebooks/`` reads and writes
the same files."""
from __future__ import annotations

from pathlib import Path


def repo_root() -> Path:
    """The checkout that holds this package (editable install), else the current directory."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "pyproject.toml").is_file() else Path.cwd()


def resolve(path: str | Path) -> Path:
    """Absolute paths stay; relative ones are taken from the repository root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else repo_root() / p


def cache_dir() -> Path:
    """Git-ignored folder for generated data (SynthCXR arrays)."""
    return repo_root() / "data" / "cache"
