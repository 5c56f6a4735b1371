"""Load chest X-rays as float32 grayscale arrays in [0, 1], from jpg / png / dcm or from the cache.

Intensity rules (the same for every dataset, so a model never sees two scales):

* 8-bit jpg / png: value / 255.
* 16-bit png: min-max stretched per image (12-bit data stored in 16-bit containers is common,
  so dividing by 65535 would give near-black images).
* DICOM: RescaleSlope / RescaleIntercept applied, then the first WindowCenter / WindowWidth
  (min-max when the file has no window), then MONOCHROME1 is inverted so bone is always bright.

The preprocessing cache (built by `python -m cmitm_lib.data.cache`) mirrors a dataset's tree as
uint8 PNGs: ``<root>/a/b/x.dcm`` is cached as ``<cache_dir>/a/b/x.png``. A manifest file in the
cache folder records which root it mirrors, so `load_image(path, cache_dir=...)` can find the
cached copy of an original path and falls back to the original when it is not cached.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")
CACHE_MANIFEST = "cmitm_cache.json"


class ImageReadError(OSError):
    """An image file exists but cannot be decoded; the message names the file."""


def load_image(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """Read one image as a float32 HxW array in [0, 1]; use its cached copy when there is one."""
    path = Path(path)
    if cache_dir is not None:
        manifest = read_manifest(cache_dir)
        cached = mirror_path(path, manifest["root"], cache_dir) if manifest else None
        if cached is not None and cached.is_file():
            path = cached
    if not path.is_file():
        raise FileNotFoundError(f"image missing: {path}")
    try:
        if path.suffix.lower() == ".dcm":
            return _load_dicom(path)
        return _load_raster(path)
    except Exception as err:  # any decoder failure becomes one error type naming the file
        raise ImageReadError(f"cannot read image {path}: {type(err).__name__}: {err}") from err


def _minmax(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.float32)
    return ((arr - lo) / (hi - lo)).astype(np.float32)


def _load_raster(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        if im.mode.startswith("I") or im.mode == "F":  # 16-bit / 32-bit grayscale
            return _minmax(np.asarray(im, dtype=np.float32))
        if im.mode != "L":
            im = im.convert("L")
        return np.asarray(im, dtype=np.float32) / 255.0


def _first(value) -> float | None:
    """First number of a DICOM value that may be multi-valued or missing."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except TypeError:  # multi-valued, e.g. two windows: keep the first
        return float(value[0])


def _load_dicom(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array.astype(np.float32)
    if getattr(ds, "SamplesPerPixel", 1) == 3:
        arr = arr.mean(axis=-1)
    elif arr.ndim == 3:  # multi-frame: keep the first frame
        arr = arr[0]
    slope = _first(ds.get("RescaleSlope")) or 1.0
    intercept = _first(ds.get("RescaleIntercept")) or 0.0
    arr = arr * slope + intercept
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width:
        lo = center - width / 2.0
        arr = np.clip((arr - lo) / width, 0.0, 1.0).astype(np.float32)
    else:
        arr = _minmax(arr)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = 1.0 - arr
    return arr


# --- preprocessing cache -------------------------------------------------------------------------

def mirror_path(path: str | os.PathLike, root: str | os.PathLike, cache_dir: str | os.PathLike) -> Path | None:
    """Where the cache keeps `path` (a file under `root`); None when `path` is not under `root`."""
    path, prefix = os.path.abspath(path), os.path.join(os.path.abspath(root), "")
    if not path.startswith(prefix):
        return None
    return Path(cache_dir, os.path.splitext(path[len(prefix):])[0] + ".png")


_MANIFESTS: dict[str, dict] = {}  # cache folder -> its manifest, read once per process


def read_manifest(cache_dir: str | os.PathLike) -> dict | None:
    """The manifest of a cache folder (its "root" is the dataset root it mirrors), or None."""
    key = os.path.abspath(cache_dir)
    if key not in _MANIFESTS:
        file = Path(key) / CACHE_MANIFEST
        if not file.is_file():
            return None
        _MANIFESTS[key] = json.loads(file.read_text())
    return _MANIFESTS[key]


def write_manifest(cache_dir: str | os.PathLike, **fields) -> None:
    """Record what a cache folder holds (root, dataset, size); read back by `read_manifest`."""
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    (Path(cache_dir) / CACHE_MANIFEST).write_text(json.dumps(fields, indent=2) + "\n")
    _MANIFESTS.pop(os.path.abspath(cache_dir), None)


def resize_shorter_side(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 copy of a [0, 1] image whose shorter side is `size` (aspect kept; never upscaled)."""
    pixels = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    h, w = pixels.shape
    if min(h, w) <= size:
        return pixels
    scale = size / min(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    return np.asarray(Image.fromarray(pixels).resize((new_w, new_h), Image.Resampling.LANCZOS))


def save_png(pixels: np.ndarray, path: str | os.PathLike) -> None:
    """Write a uint8 HxW array as a grayscale PNG atomically (temp file + rename), so an
    interrupted run never leaves a half-written file that a resumed run would skip."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    Image.fromarray(pixels).save(tmp, format="PNG")
    os.replace(tmp, path)
