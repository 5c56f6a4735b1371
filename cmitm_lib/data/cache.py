"""One-off preprocessing: every image of a dataset decoded and resized once, kept as a uint8 PNG.

    cmitm data cache --dataset nih --root /data/nih --out /data/cache/nih --size 512

* Mirror tree: ``<root>/images_001/images/x.png`` -> ``<out>/images_001/images/x.png``,
  ``<root>/stage_2_train_images/y.dcm`` -> ``<out>/stage_2_train_images/y.png``.
* Size: the shorter side becomes ``--size`` with the aspect ratio kept (never upscaled), so later
  crops and resizes to the model's input still see the whole image at more than enough resolution.
* Intensities: exactly what `load_image` returns (DICOM rescaled, windowed, MONOCHROME1 inverted),
  stored as 8 bits.
* Resumable: images already in the cache are skipped; each file is written atomically.
* Report: counts of written / already cached / missing / corrupt images; the missing and corrupt
  ones are listed in ``<out>/missing_images.txt`` and ``<out>/corrupt_images.txt``.
* Use: pass ``cache_dir=<out>`` to a reader (records then point at the cached PNGs), or to
  `load_image(path, cache_dir=<out>)`.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from ..paths import resolve
from .catalog import DatasetLayoutError
from .csvdata import csv_kinds
from .images import (
    ImageReadError, load_image, mirror_path, read_manifest, resize_shorter_side, save_png, write_manifest,
)
from .real import DATASET_NAMES, get_reader


def _cache_one(task: tuple[str, str, int]) -> tuple[str, str, str]:
    """(status, source, error) for one image: written, cached (already there), missing or corrupt."""
    source, target, size = task
    if os.path.isfile(target):
        return "cached", source, ""
    if not os.path.isfile(source):
        return "missing", source, ""
    try:
        pixels = resize_shorter_side(load_image(source), size)
    except ImageReadError as err:
        return "corrupt", source, str(err)
    save_png(pixels, target)
    return "written", source, ""


def _records(dataset: str, root, reader_options: dict) -> list:
    """Every record of a dataset (all splits; a csv dataset's pairs.csv and labels.csv both)."""
    kinds = (csv_kinds(root) or [None]) if dataset == "csv" else [None]
    records = []
    with warnings.catch_warnings():  # missing images are reported below, by name
        warnings.simplefilter("ignore", UserWarning)
        for kind in kinds:
            result = get_reader(dataset, kind)(root, check_images=False, **reader_options)
            records += result[0] if isinstance(result, tuple) else result.train + result.val + result.test
    return records


def build_cache(dataset: str, root, out, size: int = 512, workers: int = 1, progress: bool = True,
                **reader_options) -> dict:
    """Cache every image the dataset's reader lists (all splits); returns the counts per status."""
    manifest = read_manifest(out)
    if manifest and (manifest.get("dataset"), manifest.get("size")) != (dataset, size):
        raise ValueError(f"{out} already caches {manifest.get('dataset')} at size {manifest.get('size')}; "
                         f"use another --out for {dataset} at size {size}")
    if dataset == "mimic":
        reader_options.setdefault("split", "all")
    records = _records(dataset, root, reader_options)
    write_manifest(out, dataset=dataset, root=os.path.abspath(root), size=size)
    images = sorted({r.image for r in records})
    tasks = [(image, str(mirror_path(image, root, out)), size) for image in images
             if mirror_path(image, root, out) is not None]
    counts = {"written": 0, "cached": 0, "missing": 0, "corrupt": 0}
    if len(tasks) < len(images):  # absolute paths elsewhere (csv): read from there, never cached
        counts["outside root"] = len(images) - len(tasks)
    missing, corrupt = [], []
    with ProcessPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool:
        results = pool.map(_cache_one, tasks, chunksize=64) if pool else map(_cache_one, tasks)
        for status, source, error in tqdm(results, total=len(tasks), desc=f"caching {dataset}",
                                          disable=not progress):
            counts[status] += 1
            if status == "missing":
                missing.append(os.path.relpath(source, root))
            elif status == "corrupt":
                corrupt.append(f"{os.path.relpath(source, root)}\t{error}")
    Path(out, "missing_images.txt").write_text("".join(f"{m}\n" for m in missing))
    Path(out, "corrupt_images.txt").write_text("".join(f"{c}\n" for c in corrupt))
    return counts


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m cmitm_lib.data.cache`; returns the exit code."""
    parser = argparse.ArgumentParser(prog="cmitm data cache", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=DATASET_NAMES)
    parser.add_argument("--root", required=True, help="folder holding the official files")
    parser.add_argument("--out", required=True, help="cache folder (one per dataset and size)")
    parser.add_argument("--size", type=int, default=512, help="shorter side in pixels (default 512)")
    parser.add_argument("--workers", type=int, default=1, help="processes decoding images (default 1)")
    parser.add_argument("--reports-root", help="mimic only: folder of the extracted mimic-cxr-reports.zip")
    args = parser.parse_args(argv)
    options = {"reports_root": args.reports_root} if args.reports_root else {}
    try:
        counts = build_cache(args.dataset, resolve(args.root), resolve(args.out), args.size, args.workers, **options)
    except DatasetLayoutError as err:
        print(err, file=sys.stderr)
        return 2
    print(f"{args.out}: {counts['written']} written, {counts['cached']} already cached, "
          f"{counts['missing']} missing (listed in missing_images.txt), "
          f"{counts['corrupt']} corrupt (listed in corrupt_images.txt)"
          + (f", {counts['outside root']} outside --root (absolute paths elsewhere: read from there, not cached)"
             if "outside root" in counts else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
