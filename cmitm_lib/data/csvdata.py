"""Your own collection as ``dataset="csv"``: one CSV of image-report pairs, one of labels.

``<root>/pairs.csv`` (pre-training): columns ``image`` (a path relative to ``root``, or absolute; png,
jpg or dcm) and ``report`` (free text: FINDINGS + IMPRESSION when the report has those sections, the
whole text otherwise); optional ``patient_id`` and ``split`` (``train`` / ``val``; ``val`` is the
held-out set for retrieval).

``<root>/labels.csv`` (fine-tuning): ``image``, optional ``patient_id`` and ``split`` (``train`` /
``val`` / ``test``), then either one 0/1 column per class (multi-label, macro AUC; blank = 0, -1 =
uncertain, set by the U-policy ``uncertain``) or one ``label`` column of class names (multi-class,
accuracy; classes in alphabetical order).

Without ``split``: seeded patient-disjoint splits (labels 70/10/20, pairs 95/5), rows without
``patient_id`` being their own patient. Rows are numbered as in a spreadsheet (the header is row 1).
A malformed row (unknown split, label value, empty image cell) stops with an error naming its row;
rows whose report is empty or whose image is missing are skipped, counted and named in a warning.
Unreadable image files are found by ``cmitm data summary --dataset csv --check-images`` and skipped
(counted, listed) by training.
"""
from __future__ import annotations

import csv
import os
import sys
import textwrap
import warnings
from collections import Counter
from pathlib import Path

from .catalog import DATASET_INFO, dataset_root, layout_error
from .images import mirror_path
from .ondisk import resolve_images
from .policy import chexpert_value, uncertain_policy
from .records import ImageTextPair, LabeledImage, LabeledSplits
from .report_sections import report_text
from .splits import split_by_patient

FILES = {"pairs": "pairs.csv", "labels": "labels.csv"}
PAIR_SPLITS, LABEL_SPLITS = ("train", "val"), ("train", "val", "test")
RANDOM_SPLIT = {"pairs": (0.95, 0.05), "labels": (0.7, 0.1, 0.2)}
KNOWN = ("image", "patient_id", "split")  # columns that are never classes
LABEL_VALUES = {"": "", "0": "0", "0.0": "0", "1": "1", "1.0": "1", "-1": "-1", "-1.0": "-1"}

LAYOUT = "\n" + textwrap.indent(DATASET_INFO["csv"]["layout"].strip("\n"), "    ")


def _rows(path: Path, required: tuple[str, ...]) -> tuple[list[str], list[tuple[int, dict]]]:
    """(header, [(row number, row)]) of a CSV; row 1 is the header, so data rows start at 2."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        reader.fieldnames = header
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(f"{path}, row 1 (the header): missing column(s) {missing}; the header has {header}. "
                             f"Expected layout:{LAYOUT}")
        return header, [(n, {k: (v or "").strip() for k, v in row.items() if k is not None})
                        for n, row in enumerate(reader, start=2)]


def _image(root: Path, path: Path, n: int, row: dict) -> str:
    if not row["image"]:
        raise ValueError(f"{path}, row {n}: the image cell is empty; give the image's path (relative to {root} "
                         f"or absolute)")
    return os.path.normpath(os.path.join(root, row["image"]))


def _split(path: Path, n: int, row: dict, allowed: tuple[str, ...]) -> str | None:
    if "split" not in row:
        return None
    if row["split"] not in allowed:
        raise ValueError(f"{path}, row {n}: unknown split {row['split']!r}; use one of {', '.join(allowed)} "
                         f"(or drop the split column for seeded patient-disjoint splits)")
    return row["split"]


def _warn_rows(path: Path, what: str, rows: list[int]) -> None:
    if rows:
        shown = ", ".join(map(str, rows[:20])) + (f" ... ({len(rows) - 20} more)" if len(rows) > 20 else "")
        warnings.warn(f"{path}: {len(rows)} row(s) skipped, {what}: rows {shown}", stacklevel=4)


def _drop_missing(path: Path, items: list[tuple[int, object]], root: Path, check_images: bool, cache_dir,
                  skipped: Counter) -> list:
    """Records whose image (or cached copy) is on disk; the others are counted and named by row."""
    missing = [n for n, r in items if not os.path.isfile(r.image) and not (
        cache_dir is not None and (m := mirror_path(r.image, root, cache_dir)) is not None and m.is_file())]
    if missing:
        key = "image missing" if check_images else "image missing (kept)"
        skipped[key] += len(missing)
        _warn_rows(path, f"image missing on disk ({'dropped' if check_images else 'kept'}; counted in "
                         f"skipped[{key!r}])", missing)
    gone = set(missing) if check_images else set()
    return [r for n, r in items if n not in gone]


def _csv_file(root, kind: str) -> tuple[Path, Path]:
    root = dataset_root("csv", root)
    path = root / FILES[kind]
    if not path.is_file():
        raise layout_error("csv", FILES[kind], root)
    return root, path


def read_csv_pairs(root, *, seed=0, check_images=True, cache_dir=None) -> tuple[list[ImageTextPair], dict]:
    """Image-report pairs of ``<root>/pairs.csv``; each pair's ``split`` is "train" or "val" (held out)."""
    root, path = _csv_file(root, "pairs")
    _, rows = _rows(path, ("image", "report"))
    items, empty, skipped = [], [], Counter()
    for n, row in rows:
        image, split = _image(root, path, n, row), _split(path, n, row, PAIR_SPLITS)
        text = report_text(row["report"])
        if not text:
            empty.append(n)
            continue
        items.append((n, ImageTextPair(image, text, row.get("patient_id") or f"row{n}", f"row{n}", split or "")))
    if empty:
        skipped["empty report"] = len(empty)
        _warn_rows(path, "empty report", empty)
    pairs = _drop_missing(path, items, root, check_images, cache_dir, skipped)
    if pairs and not any(p.split for p in pairs):
        train, held = split_by_patient(pairs, RANDOM_SPLIT["pairs"], seed)
        for p in held:
            p.split = "val"
        for p in train:
            p.split = "train"
    [pairs] = resolve_images([pairs], root, check_images, cache_dir, Counter(), stacklevel=3)
    return pairs, dict(skipped)


def _label_columns(path: Path, header: list[str]) -> tuple[list[str], str]:
    """The class columns and the task: a ``label`` column (multi-class) or 0/1 columns (multi-label)."""
    if "label" in header:
        ignored = [h for h in header if h not in (*KNOWN, "label")]
        if ignored:
            print(f"[csv] {path.name}: multi-class from the label column; other columns ignored: {ignored}",
                  file=sys.stderr)
        return [], "multiclass"
    classes = [h for h in header if h not in KNOWN]
    if not classes:
        raise ValueError(f"{path}, row 1 (the header): no class column; add one 0/1 column per class (multi-label) "
                         f"or a 'label' column of class names (multi-class). Expected layout:{LAYOUT}")
    return classes, "multilabel"


def _multilabel(path: Path, n: int, row: dict, classes: list[str], policy: dict, uncertain: Counter) -> list[float]:
    values = []
    for c in classes:
        value = LABEL_VALUES.get(row[c])
        if value is None:
            raise ValueError(f"{path}, row {n}, column {c!r}: label value {row[c]!r} is not 0, 1, -1 (uncertain) "
                             f"or blank (= 0)")
        uncertain[c] += value == "-1"
        values.append(chexpert_value(value, policy[c]))
    return values


def read_csv_labels(root, *, seed=0, check_images=True, cache_dir=None, uncertain="zeros") -> LabeledSplits:
    """Train / val / test of ``<root>/labels.csv``; ``uncertain``: the U-policy for -1 labels ("zeros",
    "ones"; "mgca" for CheXpert's five class names), as for CheXpert."""
    root, path = _csv_file(root, "labels")
    header, rows = _rows(path, ("image",))
    classes, task = _label_columns(path, header)
    policy = uncertain_policy(uncertain, classes)
    if task == "multiclass":
        empty = [n for n, row in rows if not row["label"]]
        if empty:
            raise ValueError(f"{path}, row {empty[0]}: empty label ({len(empty)} row(s) in all: "
                             f"{empty[:10]}); give each row one class name")
        classes = sorted({row["label"] for _, row in rows})
    counts, items, splits = Counter(), [], []
    for n, row in rows:
        image, split = _image(root, path, n, row), _split(path, n, row, LABEL_SPLITS)
        labels = (_multilabel(path, n, row, classes, policy, counts) if task == "multilabel"
                  else [float(c == row["label"]) for c in classes])
        items.append((n, LabeledImage(image, labels, row.get("patient_id") or f"row{n}")))
        splits.append(split)
    if sum(counts.values()):
        print(f"[csv] {path.name}: uncertain (-1) labels set by U-policy {uncertain!r}: "
              + ", ".join(f"{c} {k}" for c, k in counts.items() if k), file=sys.stderr)
    skipped = Counter()
    kept = {id(r) for r in _drop_missing(path, items, root, check_images, cache_dir, skipped)}
    records = [(r, s) for (_, r), s in zip(items, splits) if id(r) in kept]
    if "split" in header:
        parts = [[r for r, s in records if s == name] for name in LABEL_SPLITS]
    else:
        parts = split_by_patient([r for r, _ in records], RANDOM_SPLIT["labels"], seed)
    for name, part in zip(LABEL_SPLITS, parts):
        if records and not part:
            raise ValueError(f"{path}: no {name} images (of {len(records)}); "
                             + ("give some rows split=" + name if "split" in header else
                                "add images or patients: the seeded 70/10/20 split needs at least 3 patients"))
    parts = resolve_images(parts, root, check_images, cache_dir, Counter(), stacklevel=3)
    return LabeledSplits("csv", classes, task, "auc" if task == "multilabel" else "acc", *parts, dict(skipped))


def read_csv(root, *, seed=0, check_images=True, cache_dir=None, **options):
    """``labels.csv`` when the folder has one (`read_csv_labels`), else ``pairs.csv`` (`read_csv_pairs`)."""
    kinds = csv_kinds(dataset_root("csv", root))
    if not kinds:
        raise layout_error("csv", "pairs.csv (pre-training) or labels.csv (fine-tuning)", Path(root))
    reader = read_csv_labels if "labels" in kinds else read_csv_pairs
    return reader(root, seed=seed, check_images=check_images, cache_dir=cache_dir, **options)


def csv_kinds(root) -> list[str]:
    """Which of pairs.csv / labels.csv a csv dataset folder holds."""
    return [kind for kind, name in FILES.items() if (Path(root) / name).is_file()]


def image_rows(root, kind: str) -> dict[str, int]:
    """Row number of each image path (as the readers resolve it) in ``pairs.csv`` or ``labels.csv``."""
    root, path = _csv_file(root, kind)
    _, rows = _rows(path, ("image",))
    return {os.path.normpath(os.path.join(root, row["image"])): n for n, row in rows if row["image"]}
