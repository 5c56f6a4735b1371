"""Readers of the real fine-tuning datasets: NIH ChestX-ray14, CheXpert, RSNA Pneumonia and COVIDx.

Each returns `LabeledSplits` (train / val / test records, classes, task, metric, what was skipped);
the rules all readers share are in `cmitm_lib.data.real`.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from .catalog import (
    CHEXPERT_CLASSES, COVIDX_CLASSES, NIH_CLASSES, REAL_TASK_INFO, csv_rows, dataset_root, find_file, layout_error,
    token_lines,
)
from .images import IMAGE_SUFFIXES
from .ondisk import resolve_images
from .policy import chexpert_value, uncertain_policy
from .records import LabeledImage, LabeledSplits
from .splits import split_by_patient, splits_from_files

# Official split sizes in images (CMITM / MGCA): used as proportions of whatever the file holds.
RSNA_SPLIT = (25_184, 1_500, 3_000)
NIH_SPLIT = (0.7, 0.1, 0.2)


def _labeled_splits(name, parts, skipped, root, check_images, cache_dir) -> LabeledSplits:
    classes, task, metric = REAL_TASK_INFO[name]
    train, val, test = resolve_images(parts, root, check_images, cache_dir, skipped, stacklevel=4)
    return LabeledSplits(name, list(classes), task, metric, train, val, test, dict(skipped))


# --- NIH ChestX-ray14 ----------------------------------------------------------------------------

def _nih_labels(text: str, source: Path) -> list[float]:
    names = {t.strip() for t in text.split("|")}
    unknown = names - set(NIH_CLASSES) - {"No Finding"}
    if unknown:
        raise ValueError(f"{source}: unknown finding(s) {sorted(unknown)}; expected {NIH_CLASSES} or 'No Finding'")
    return [float(c in names) for c in NIH_CLASSES]


def read_nih(root, *, seed=0, split_files=None, check_images=True, cache_dir=None) -> LabeledSplits:
    """NIH ChestX-ray14, 14 findings (multi-label, AUC). Split 70/10/20 by patient, seeded; or
    `split_files`: MRM's train/val/test_list.txt, or the official train_val_list.txt + test_list.txt
    (val = 1/8 of train_val by patient, so about 70/10/20 overall)."""
    root = dataset_root("nih", root)
    label_file = find_file("nih", root, ["Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"])
    image_dirs = [d / "images" if (d / "images").is_dir() else d for d in sorted(root.glob("images*")) if d.is_dir()]
    if check_images and not image_dirs:
        raise layout_error("nih", "the image folders (images_001/images/ ... or images/)", root)
    on_disk = {e.name: e.path for d in image_dirs for e in os.scandir(d)}
    records = {}
    for row in csv_rows(label_file, ["Image Index", "Finding Labels", "Patient ID"]):
        name = row["Image Index"]
        image = on_disk.get(name) or os.path.join(root, "images", name)
        records[name] = LabeledImage(image, _nih_labels(row["Finding Labels"], label_file), row["Patient ID"])
    skipped = Counter()
    if split_files is None:
        parts = split_by_patient(list(records.values()), NIH_SPLIT, seed)
    else:
        parts = splits_from_files("nih", split_files, lambda n: records.get(PurePosixPath(n).name),
                                  seed, 1 / 8, skipped)
    return _labeled_splits("nih", parts, skipped, root, check_images, cache_dir)


# --- CheXpert ------------------------------------------------------------------------------------

def _chexpert_relpath(csv_path: str) -> str:
    """'CheXpert-v1.0-small/train/patient00001/...' -> 'train/patient00001/...' (any version prefix)."""
    head, _, tail = csv_path.replace("\\", "/").partition("/")
    return tail if head.lower().startswith("chexpert-v1.0") else csv_path


def read_chexpert(root, *, seed=0, split_files=None, check_images=True, cache_dir=None,
                  uncertain="mgca", frontal_only=True, val_size=5000) -> LabeledSplits:
    """CheXpert, 5 competition findings (multi-label, AUC). Test = official valid.csv; val = whole
    train patients, seeded, until at least `val_size` images (at most 10% of train); train = the rest.
    `uncertain`: "mgca" (U-ones for Atelectasis, Edema, Pleural Effusion; U-zeros for Cardiomegaly,
    Consolidation), "ones" or "zeros"; blank is 0. `frontal_only` drops lateral views (counted)."""
    policy = uncertain_policy(uncertain, CHEXPERT_CLASSES)
    root = dataset_root("chexpert", root)
    base = next((d for d in (root, root / "CheXpert-v1.0-small", root / "CheXpert-v1.0")
                 if (d / "train.csv").is_file()), None)
    if base is None:
        raise layout_error("chexpert", "train.csv", root)
    valid_csv = find_file("chexpert", base, ["valid.csv"])
    if check_images and not (base / "train").is_dir():
        raise layout_error("chexpert", "the train/ image folder", base)
    skipped = Counter()
    lateral: set[str] = set()
    by_path: dict[str, LabeledImage] = {}  # "train/patient00001/study1/view1_frontal.jpg" -> record

    def read(csv_file: Path) -> list[LabeledImage]:
        out = []
        for row in csv_rows(csv_file, ["Path", "Frontal/Lateral", *CHEXPERT_CLASSES]):
            patient = re.search(r"patient\d+", row["Path"])
            if patient is None:
                raise ValueError(f"{csv_file}: no patientNNNNN in path {row['Path']!r}")
            rel = _chexpert_relpath(row["Path"])
            labels = [chexpert_value(row[c], policy[c]) for c in CHEXPERT_CLASSES]
            record = LabeledImage(os.path.join(base, rel), labels, patient.group(0))
            if row["Frontal/Lateral"] != "Frontal":
                lateral.add(record.image)
            by_path[rel] = record
            out.append(record)
        return out

    def drop_lateral(part: list[LabeledImage]) -> list[LabeledImage]:
        kept = [r for r in part if r.image not in lateral] if frontal_only else part
        if len(kept) < len(part):
            skipped["lateral view"] += len(part) - len(kept)
        return kept

    train, test = read(base / "train.csv"), read(valid_csv)
    if split_files is None:
        train, test = drop_lateral(train), drop_lateral(test)
        n_val = min(val_size, round(0.1 * len(train)))
        val, train = split_by_patient(train, (n_val, len(train) - n_val), seed)
        parts = [train, val, test]
    else:
        parts = splits_from_files("chexpert", split_files, lambda n: by_path.get(_chexpert_relpath(n)),
                                  seed, 0.1, skipped)
        parts = [drop_lateral(p) for p in parts]
    return _labeled_splits("chexpert", parts, skipped, root, check_images, cache_dir)


# --- RSNA Pneumonia ------------------------------------------------------------------------------

def read_rsna(root, *, seed=0, split_files=None, check_images=True, cache_dir=None) -> LabeledSplits:
    """RSNA Pneumonia (binary, AUC): one label per patientId = max(Target) over its box rows.
    Split in the proportions 25,184 / 1,500 / 3,000 by patient, seeded; or MRM-style `split_files`."""
    root = dataset_root("rsna", root)
    label_file = find_file("rsna", root, ["stage_2_train_labels.csv"])
    image_dir = root / "stage_2_train_images"
    if check_images and not image_dir.is_dir():
        raise layout_error("rsna", "the stage_2_train_images/ folder", root)
    on_disk: dict[str, str] = {}
    if image_dir.is_dir():  # prefer png / jpg conversions over the dcm originals when both exist
        entries = [e for e in os.scandir(image_dir) if Path(e.name).suffix.lower() in IMAGE_SUFFIXES]
        for e in sorted(entries, key=lambda e: IMAGE_SUFFIXES.index(Path(e.name).suffix.lower())):
            on_disk.setdefault(Path(e.name).stem, e.path)
    target: dict[str, float] = {}
    for row in csv_rows(label_file, ["patientId", "Target"]):
        target[row["patientId"]] = max(target.get(row["patientId"], 0.0), float(row["Target"]))
    records = {pid: LabeledImage(on_disk.get(pid) or os.path.join(image_dir, f"{pid}.dcm"), [t], pid)
               for pid, t in target.items()}
    skipped = Counter()
    if split_files is None:
        parts = split_by_patient(list(records.values()), RSNA_SPLIT, seed)
    else:
        parts = splits_from_files("rsna", split_files, lambda n: records.get(PurePosixPath(n).stem),
                                  seed, 0.1, skipped)
    return _labeled_splits("rsna", parts, skipped, root, check_images, cache_dir)


# --- COVIDx --------------------------------------------------------------------------------------

_COVIDX_SPELLINGS = {"normal": 0, "pneumonia": 1, "covid-19": 2, "covid19": 2}


def _covidx_label_files(root: Path, split_files) -> dict[str, Path]:
    if isinstance(split_files, Mapping):
        files = {split: Path(split_files[split]) for split in ("train", "test")}
        for path in files.values():
            if not path.is_file():
                raise layout_error("covidx", path.name, path.parent)
        return files
    folder = Path(split_files) if split_files is not None else root
    files = {}
    for split in ("train", "test"):
        exact = folder / f"{split}.txt"
        candidates = [exact] if exact.is_file() else sorted(folder.glob(f"{split}_*.txt"))
        if not candidates:
            raise layout_error("covidx", f"{split}.txt (or a versioned {split}_COVIDx*.txt)", folder)
        if len(candidates) > 1:
            raise ValueError(f"several COVIDx {split} files in {folder}: {[c.name for c in candidates]}; "
                             f"choose with split_files={{'train': ..., 'test': ...}}")
        files[split] = candidates[0]
    return files


def _read_covidx_file(path: Path, image_dir: Path) -> list[LabeledImage]:
    """Lines "patient_id filename class [source]" (3 columns in early versions, 4 later)."""
    out = []
    for where, tokens, line in token_lines(path):
        if len(tokens) < 3:
            raise ValueError(f"{where}: expected 'patient_id filename class [source]', got {line!r}")
        patient, label = tokens[0], (tokens[2] if len(tokens) == 3 else tokens[-2])
        filename = tokens[1] if len(tokens) == 3 else " ".join(tokens[1:-2])
        index = _COVIDX_SPELLINGS.get(label.lower())
        if index is None:
            hint = (" This is a binary COVIDx file (positive/negative: COVIDx 9B, CXR-2, CXR-3B ...); "
                    "the kit's task is the 3-class COVIDx (e.g. COVIDx 8A / 9A / CXR-3A)."
                    if label.lower() in ("positive", "negative") else "")
            raise ValueError(f"{where}: unknown class {label!r}; expected one of {COVIDX_CLASSES}.{hint}")
        onehot = [0.0] * len(COVIDX_CLASSES)
        onehot[index] = 1.0
        out.append(LabeledImage(os.path.join(image_dir, filename), onehot, patient))
    return out


def read_covidx(root, *, seed=0, split_files=None, check_images=True, cache_dir=None,
                val_fraction=0.1) -> LabeledSplits:
    """COVIDx, 3 classes (multi-class, accuracy). Test = official test file; val = `val_fraction` of
    the train file by patient, seeded. `split_files`: a folder holding the label files, or
    {"train": path, "test": path} to pick one version when several are present."""
    root = dataset_root("covidx", root)
    files = _covidx_label_files(root, split_files)
    for split in ("train", "test"):
        if check_images and not (root / split).is_dir():
            raise layout_error("covidx", f"the {split}/ image folder", root)
    train = _read_covidx_file(files["train"], root / "train")
    test = _read_covidx_file(files["test"], root / "test")
    parts = [*split_by_patient(train, (1 - val_fraction, val_fraction), seed), test]
    return _labeled_splits("covidx", parts, Counter(), root, check_images, cache_dir)
