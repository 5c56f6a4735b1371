"""Splits and label fractions of the real datasets: seeded patient-disjoint splits, the nested label
fractions fine-tuning trains on, and MRM-style split files (``split_files=``).

Splits are computed from the label files alone, before any image is looked at, so they do not change
with which images happen to be on disk.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..config import check_fraction
from .catalog import REAL_TASK_INFO, layout_error, token_lines
from .fractions import fraction_indices
from .records import LabeledImage

SPLIT_FILE_NAMES = {"train": "train_list.txt", "val": "val_list.txt", "test": "test_list.txt",
                    "train_val": "train_val_list.txt"}
SPLIT_FILES_LAYOUT = """
<split_files>/             (a folder, or a dict {"train": path, "val": path, "test": path})
|-- train_list.txt         "<image> <label> <label> ..." per line (MRM style; labels optional)
|-- val_list.txt           (optional: otherwise carved from train, patient-disjoint)
`-- test_list.txt
or the official NIH pair train_val_list.txt + test_list.txt (image names only)"""


def split_by_patient(records: Sequence, fractions: Sequence[float], seed: int = 0) -> list[list]:
    """Patient-disjoint parts holding about `fractions` of the images (seeded).

    Patients are shuffled once and dealt in that order: a part is filled until its share of the
    images is reached. Every part gets at least one patient when there are enough patients.
    """
    counts = Counter(r.patient_id for r in records)
    patients = sorted(counts)
    order = np.random.default_rng(seed).permutation(len(patients))
    bounds = np.cumsum(fractions)[:-1] / sum(fractions) * len(records)
    part_of, seen, part, taken = {}, 0, 0, 0
    for dealt, i in enumerate(order):
        parts_after = len(bounds) - part  # parts still to fill after this one
        if parts_after and taken and (seen >= bounds[part] or len(order) - dealt <= parts_after):
            part, taken = part + 1, 0
        part_of[patients[i]] = part
        seen += counts[patients[i]]
        taken += 1
    parts = [[] for _ in fractions]
    for r in records:
        parts[part_of[r.patient_id]].append(r)
    return parts


def label_fraction(records: Sequence[LabeledImage], fraction: float, seed: int = 0) -> list[LabeledImage]:
    """About `fraction` of `records`, nested and with every class when the data allow: the records
    that `fractions.fraction_indices` picks from their labels (what fine-tuning trains on). Records
    keep their original order."""
    if not records:
        check_fraction("fraction", fraction)
        return []
    labels = np.asarray([r.labels for r in records], dtype=np.float32)
    return [records[i] for i in fraction_indices(len(records), fraction, seed, labels)]


def _split_file_paths(dataset: str, split_files) -> dict[str, Path]:
    if isinstance(split_files, Mapping):
        unknown = set(split_files) - set(SPLIT_FILE_NAMES)
        if unknown:
            raise ValueError(f"unknown split_files key(s) {sorted(unknown)}; use {sorted(SPLIT_FILE_NAMES)}")
        paths = {key: Path(p) for key, p in split_files.items()}
        for path in paths.values():
            if not path.is_file():
                raise layout_error(dataset, f"split file {path.name}", path.parent, SPLIT_FILES_LAYOUT)
        folder = next(iter(paths.values()), Path(".")).parent
    else:
        folder = Path(split_files)
        paths = {key: folder / name for key, name in SPLIT_FILE_NAMES.items() if (folder / name).is_file()}
    if "test" not in paths or not {"train", "train_val"} & set(paths):
        raise layout_error(dataset, "split files (a test list and a train or train_val list)", folder,
                            SPLIT_FILES_LAYOUT)
    return paths


def _read_split_list(path: Path, n_classes: int) -> list[tuple[str, list[float] | None]]:
    entries = []
    for where, tokens, line in token_lines(path):
        if len(tokens) > 1 and len(tokens) != n_classes + 1:
            raise ValueError(f"{where}: expected an image and {n_classes} labels, got {line!r}")
        entries.append((tokens[0], [float(t) for t in tokens[1:]] or None))
    return entries


def splits_from_files(dataset, split_files, lookup, seed, val_fraction, skipped) -> list[list[LabeledImage]]:
    """train / val / test from split files; `lookup(name)` is the official record of a listed image.
    Labels written in a split file win over the official ones (that is what MRM trains with)."""
    paths = _split_file_paths(dataset, split_files)
    n_classes = len(REAL_TASK_INFO[dataset][0])

    def listed(key: str) -> list[LabeledImage]:
        out = []
        for name, labels in _read_split_list(paths[key], n_classes):
            official = lookup(name)
            if official is None:
                skipped["listed in a split file but not in the label file"] += 1
                continue
            out.append(LabeledImage(official.image, labels or official.labels, official.patient_id))
        return out

    if "train" in paths and "val" in paths:
        return [listed("train"), listed("val"), listed("test")]
    train, val = split_by_patient(listed("train" if "train" in paths else "train_val"),
                                  (1 - val_fraction, val_fraction), seed)
    return [train, val, listed("test")]
