"""`cmitm data summary`: what a dataset folder holds, read from its label files alone.

    cmitm data summary --dataset nih --root /data/nih [--json] [--check-images]

Images are not required: the readers run with ``check_images=False`` and the images missing on
disk are reported as a count (``missing_images``). ``--check-images`` also opens every image that is
on disk and reports those that cannot be read (``unreadable_images``, with their paths).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import warnings

from ..paths import resolve
from .catalog import DATASET_INFO, DatasetLayoutError
from .csvdata import csv_kinds, image_rows
from .images import ImageReadError, load_image
from .real import DATASET_NAMES, get_reader
from .records import LabeledSplits


def _count(records, classes) -> dict:
    positives = [sum(r.labels[i] > 0.5 for r in records) for i in range(len(classes))]
    return {"images": len(records), "patients": len({r.patient_id for r in records}),
            "positives": dict(zip(classes, map(int, positives)))}


def unreadable_images(paths) -> list[str]:
    """The images among `paths` that are on disk but cannot be decoded (each one opened)."""
    bad = []
    for path in sorted(set(paths)):
        if os.path.isfile(path):
            try:
                load_image(path)
            except ImageReadError:
                bad.append(path)
    return bad


def summarize(dataset: str, root, check_images: bool = False, kind: str | None = None, **options) -> dict:
    """Counts of a dataset folder: per split images / patients / positives per class for fine-tuning
    sets; pairs / patients / studies / report length for pre-training sets. `options` go to the reader.
    ``check_images``: open every image on disk and list the unreadable ones (``unreadable_images``).
    ``kind``: "pairs" or "labels", which file of a csv dataset (default: labels.csv when present)."""
    reader = get_reader(dataset, kind)
    with warnings.catch_warnings():  # the missing images are reported below as a count
        warnings.simplefilter("ignore", UserWarning)
        result = reader(root, check_images=False, **options)
    summary = _summary(dataset, root, result)
    if dataset == "csv":
        summary["file"] = "labels.csv" if isinstance(result, LabeledSplits) else "pairs.csv"
    if check_images:
        records = result.train + result.val + result.test if isinstance(result, LabeledSplits) else result[0]
        summary["unreadable_images"] = unreadable_images(r.image for r in records)
        if dataset == "csv":  # name the rows too
            rows = image_rows(root, "labels" if isinstance(result, LabeledSplits) else "pairs")
            summary["unreadable_rows"] = [rows.get(path) for path in summary["unreadable_images"]]
    return summary


def _summary(dataset: str, root, result) -> dict:
    if isinstance(result, LabeledSplits):
        splits = {"train": result.train, "val": result.val, "test": result.test}
        return {
            "dataset": dataset, "title": DATASET_INFO[dataset]["title"], "kind": "labels", "root": str(root),
            "task": result.task, "metric": result.metric, "classes": result.classes,
            "splits": {name: _count(records, result.classes) for name, records in splits.items()},
            "total": _count(result.train + result.val + result.test, result.classes),
            "missing_images": result.skipped.get("image missing (kept)", 0),
            "skipped": result.skipped,
        }
    pairs, skipped = result
    words = [len(p.report.split()) for p in pairs] or [0]
    return {
        "dataset": dataset, "title": DATASET_INFO[dataset]["title"], "kind": "pairs", "root": str(root),
        "pairs": len(pairs), "patients": len({p.patient_id for p in pairs}),
        "studies": len({(p.patient_id, p.study_id) for p in pairs}),
        "report_words": {"mean": round(statistics.fmean(words), 1), "median": statistics.median(words),
                         "max": max(words)},
        "missing_images": skipped.get("image missing (kept)", 0),
        "skipped": skipped,
    }


def format_summary(summary: dict) -> str:
    """A short human-readable table of a `summarize` result."""
    lines = [f"{summary['title']} ({summary['dataset']}{', ' + summary['file'] if 'file' in summary else ''}) "
             f"at {summary['root']}"]
    if summary["kind"] == "labels":
        lines.append(f"task: {summary['task']}, metric: {summary['metric']}, {len(summary['classes'])} classes")
        names = ["train", "val", "test", "total"]
        counts = {**summary["splits"], "total": summary["total"]}
        width = max(len(c) for c in summary["classes"]) + 2
        lines.append(f"{'':{width}}" + "".join(f"{n:>10}" for n in names))
        for key in ("images", "patients"):
            lines.append(f"{key:{width}}" + "".join(f"{counts[n][key]:>10}" for n in names))
        for c in summary["classes"]:
            lines.append(f"{c:{width}}" + "".join(f"{counts[n]['positives'][c]:>10}" for n in names))
    else:
        words = summary["report_words"]
        lines.append(f"pairs: {summary['pairs']}, patients: {summary['patients']}, studies: {summary['studies']}")
        lines.append(f"report words: mean {words['mean']}, median {words['median']}, max {words['max']}")
    lines.append(f"images missing on disk: {summary['missing_images']}")
    if "unreadable_images" in summary:
        bad = summary["unreadable_images"]
        lines.append(f"images unreadable: {len(bad)}" + (" (training skips them; fix or remove them)" if bad else ""))
        rows = summary.get("unreadable_rows") or [None] * len(bad)
        lines += [f"  {f'row {n}: ' if n else ''}{path}" for path, n in zip(bad[:20], rows)]
        if len(bad) > 20:
            lines.append(f"  ... and {len(bad) - 20} more (--json lists all)")
    else:
        lines.append("images unreadable: not checked (--check-images opens every image)")
    for reason, n in summary["skipped"].items():
        if reason != "image missing (kept)":  # already shown as images missing on disk
            lines.append(f"skipped: {reason}: {n}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `cmitm data summary`; returns the exit code."""
    parser = argparse.ArgumentParser(prog="cmitm data summary", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=DATASET_NAMES)
    parser.add_argument("--root", required=True, help="folder holding the official files")
    parser.add_argument("--reports-root", help="mimic only: folder of the extracted mimic-cxr-reports.zip")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--check-images", action="store_true",
                        help="open every image on disk and report the unreadable ones (slow on a large dataset)")
    args = parser.parse_args(argv)
    options = {"reports_root": args.reports_root} if args.reports_root else {}
    root = resolve(args.root)
    kinds = (csv_kinds(root) or [None]) if args.dataset == "csv" else [None]  # csv: each file it holds
    try:
        summaries = {kind: summarize(args.dataset, root, check_images=args.check_images, kind=kind, **options)
                     for kind in kinds}
    except (DatasetLayoutError, ValueError) as err:
        print(f"cmitm data summary: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summaries if args.dataset == "csv" else summaries[None], indent=2))
    else:
        print("\n\n".join(format_summary(s) for s in summaries.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
