"""Readers for the real datasets: the official label and report files, read exactly as distributed.

Pre-training pairs, ``read_mimic`` and ``read_openi``, return ``(list[ImageTextPair], skipped)``.
Fine-tuning sets, ``read_nih``, ``read_chexpert``, ``read_rsna`` and ``read_covidx``, return
``LabeledSplits``. Every reader is called the same way::

    read_X(root, *, seed=0, split_files=None, check_images=True, cache_dir=None, **dataset_options)

Rules shared by all readers:

* Splits are computed from the label files alone, before any image is looked at, so they do not
  change with which images happen to be on disk. Random splits are patient-disjoint and seeded.
* ``skipped`` maps a reason to a count; nothing is dropped silently. The unit is in the reason
  when it is not one image, e.g. ``"report missing (studies)"``.
* Images missing on disk: with ``check_images=True`` they are dropped and counted as
  ``"image missing"``; with ``check_images=False`` (used by ``cmitm data summary`` when only the
  label files are present) they are kept and counted as ``"image missing (kept)"``. A warning
  names the first few either way. ``check_images=True`` also requires the image folder to exist.
* A missing dataset folder or label file raises `DatasetLayoutError` (a ``FileNotFoundError``)
  whose message shows the expected layout; an unknown dataset name raises ``ValueError``.
* ``cache_dir``: a folder built by ``python -m cmitm_lib.data.cache`` for this root; records then
  point at the cached PNGs wherever they exist (originals are not needed for cached images).

MIMIC report text (`findings_impression`), in this order of preference:

1. FINDINGS + IMPRESSION (headers at a line start: upper-case ``NAME:`` like MIMIC's own section
   parser, or ``findings:`` / ``impression:`` / ``conclusion:`` in any case, spaces allowed;
   ``CONCLUSION`` and ``FINDINGS AND IMPRESSION`` count as IMPRESSION, as in MIMIC's parser);
2. IMPRESSION alone; 3. FINDINGS alone;
4. a report with headers but neither section: the paragraphs after the first paragraph of the
   last section (MIMIC's ``last_paragraph``);
5. a report without any header: its whole body, "FINAL REPORT" title removed;
6. otherwise the study is skipped (``"no usable report text (studies)"``).
"""
from __future__ import annotations

import csv
import gzip
import os
import re
import textwrap
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath

import numpy as np

from cmitm_lib.config import check_fraction
from cmitm_lib.data.fractions import fraction_indices
from cmitm_lib.data.images import IMAGE_SUFFIXES, mirror_path
from cmitm_lib.data.records import ImageTextPair, LabeledImage, LabeledSplits

NIH_CLASSES = [
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
]
CHEXPERT_CLASSES = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
RSNA_CLASSES = ["Pneumonia"]  # binary, one sigmoid output
COVIDX_CLASSES = ["normal", "pneumonia", "COVID-19"]

TASKS = {  # name -> (classes, task, metric)
    "nih": (NIH_CLASSES, "multilabel", "auc"),
    "chexpert": (CHEXPERT_CLASSES, "multilabel", "auc"),
    "rsna": (RSNA_CLASSES, "multilabel", "auc"),
    "covidx": (COVIDX_CLASSES, "multiclass", "acc"),
}

# CheXpert uncertain (-1) label -> value, per class. Blank always means 0.
UNCERTAIN_POLICIES = {
    "mgca": {"Atelectasis": 1.0, "Cardiomegaly": 0.0, "Consolidation": 0.0, "Edema": 1.0, "Pleural Effusion": 1.0},
    "ones": dict.fromkeys(CHEXPERT_CLASSES, 1.0),
    "zeros": dict.fromkeys(CHEXPERT_CLASSES, 0.0),
}

# Official split sizes in images (CMITM / MGCA): used as proportions of whatever the file holds.
RSNA_SPLIT = (25_184, 1_500, 3_000)
NIH_SPLIT = (0.7, 0.1, 0.2)

DATASET_INFO = {
    "mimic": {
        "title": "MIMIC-CXR-JPG 2.0.0 with MIMIC-CXR 2.0.0 reports",
        "source": "https://physionet.org/content/mimic-cxr-jpg/2.0.0/ (images, metadata, split); "
                  "https://physionet.org/content/mimic-cxr/2.0.0/ (mimic-cxr-reports.zip)",
        "access": "credentialed PhysioNet account + CITI training + signed PhysioNet Credentialed "
                  "Health Data License 1.5.0; never share images or report text",
        "layout": """
<root>/
|-- mimic-cxr-2.0.0-metadata.csv.gz    (or gunzipped .csv)
|-- mimic-cxr-2.0.0-split.csv.gz       (or gunzipped .csv)
`-- files/
    `-- p10/p10000032/
        |-- s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg
        `-- s50414267.txt              (report; from mimic-cxr-reports.zip: here or under reports_root)""",
    },
    "openi": {
        "title": "Open-i / Indiana University chest X-ray collection",
        "source": "https://openi.nlm.nih.gov/faq (NLMCXR_png.tgz, NLMCXR_reports.tgz)",
        "access": "free download, no account; CC BY-NC-ND 4.0 (stated in every report XML)",
        "layout": """
<root>/
|-- ecgen-radiology/1.xml ... 3999.xml       (NLMCXR_reports.tgz)
`-- NLMCXR_png/CXR1_1_IM-0001-3001.png ...   (NLMCXR_png.tgz; images/ or <root>/ also work)""",
    },
    "nih": {
        "title": "NIH ChestX-ray14",
        "source": "https://nihcc.app.box.com/v/ChestXray-NIHCC",
        "access": "free download, no account; cite Wang et al. (CVPR 2017) and acknowledge the NIH Clinical Center",
        "layout": """
<root>/
|-- Data_Entry_2017_v2020.csv            (or Data_Entry_2017.csv)
|-- images_001/images/00000001_000.png   (the 12 archives as extracted; a flat images/ also works)
|-- ...
|-- images_012/images/...
`-- train_val_list.txt, test_list.txt    (optional official split: pass split_files=<root>)""",
    },
    "chexpert": {
        "title": "CheXpert v1.0",
        "source": "https://stanfordmlgroup.github.io/competitions/chexpert/",
        "access": "registration; Stanford CheXpert Dataset Research Use Agreement (non-commercial research)",
        "layout": """
<root>/                                (the CheXpert-v1.0-small folder itself, or its parent)
`-- CheXpert-v1.0-small/               (or CheXpert-v1.0/)
    |-- train.csv
    |-- valid.csv
    |-- train/patient00001/study1/view1_frontal.jpg ...
    `-- valid/patient64541/study1/view1_frontal.jpg ...""",
    },
    "rsna": {
        "title": "RSNA Pneumonia Detection Challenge (stage 2)",
        "source": "https://www.kaggle.com/c/rsna-pneumonia-detection-challenge",
        "access": "Kaggle account + accepting the competition rules",
        "layout": """
<root>/
|-- stage_2_train_labels.csv
`-- stage_2_train_images/0004cfab-14fd-4e49-80ba-63a80b6bddd6.dcm ...   (.png / .jpg conversions also work)""",
    },
    "covidx": {
        "title": "COVIDx CXR (3-class: normal / pneumonia / COVID-19)",
        "source": "https://github.com/lindawangg/COVID-Net/blob/master/docs/COVIDx.md",
        "access": "built from public sources (each with its own licence) by the COVID-Net scripts, "
                  "or the Kaggle release",
        "layout": """
<root>/
|-- train.txt     (or one versioned train_COVIDx9A.txt ...; lines "patient_id filename class source")
|-- test.txt      (or one versioned test_COVIDx9A.txt ...)
|-- train/<filename> ...
`-- test/<filename> ...""",
    },
}

DATASET_INFO["csv"] = {
    "title": "Your own collection (pairs.csv / labels.csv)",
    "source": "your files; the format is documented in data/README.md (\"csv\") and cmitm_lib/data/csvdata.py",
    "access": "yours",
    "layout": """
<root>/
|-- pairs.csv     (pre-training)  header: image,report[,patient_id][,split]
|-- labels.csv    (fine-tuning)   header: image[,patient_id][,split],<class 1>,<class 2>,...  (0/1/-1/blank)
|                                 or:     image[,patient_id][,split],label                   (class names)
`-- images/...    (png, jpg or dcm; paths in the csv are relative to <root>, or absolute)
e.g. pairs.csv:   image,report,patient_id
                  images/p1_a.png,"FINDINGS: Heart size normal. IMPRESSION: No acute disease.",p1""",
}

SPLIT_FILE_NAMES = {"train": "train_list.txt", "val": "val_list.txt", "test": "test_list.txt",
                    "train_val": "train_val_list.txt"}
SPLIT_FILES_LAYOUT = """
<split_files>/             (a folder, or a dict {"train": path, "val": path, "test": path})
|-- train_list.txt         "<image> <label> <label> ..." per line (MRM style; labels optional)
|-- val_list.txt           (optional: otherwise carved from train, patient-disjoint)
`-- test_list.txt
or the official NIH pair train_val_list.txt + test_list.txt (image names only)"""


class DatasetLayoutError(FileNotFoundError):
    """A dataset folder or file is missing; the message shows the expected layout."""


def _layout_error(dataset: str, what: str, folder: Path, layout: str | None = None) -> DatasetLayoutError:
    info = DATASET_INFO[dataset]
    tree = textwrap.indent((layout or info["layout"]).strip("\n"), "    ")
    return DatasetLayoutError(
        f"{info['title']}: {what} is missing (looked in {folder}).\n"
        f"Expected layout:\n{tree}\nSource: {info['source']}")


def _dataset_root(dataset: str, root: str | os.PathLike) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise _layout_error(dataset, "the dataset folder", root)
    return root


def _find_file(dataset: str, folder: Path, names: Sequence[str]) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise _layout_error(dataset, " or ".join(names), folder)


def _csv_rows(path: Path, required: Sequence[str]) -> Iterator[dict[str, str]]:
    """Rows of a csv or csv.gz file as dicts, after checking that the required columns exist."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; the header has {reader.fieldnames}")
        yield from reader


# --- splits and label fractions ------------------------------------------------------------------

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
                raise _layout_error(dataset, f"split file {path.name}", path.parent, SPLIT_FILES_LAYOUT)
        folder = next(iter(paths.values()), Path(".")).parent
    else:
        folder = Path(split_files)
        paths = {key: folder / name for key, name in SPLIT_FILE_NAMES.items() if (folder / name).is_file()}
    if "test" not in paths or not {"train", "train_val"} & set(paths):
        raise _layout_error(dataset, "split files (a test list and a train or train_val list)", folder,
                            SPLIT_FILES_LAYOUT)
    return paths


def _read_split_list(path: Path, n_classes: int) -> list[tuple[str, list[float] | None]]:
    entries = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            tokens = line.split()
            if not tokens:
                continue
            if len(tokens) > 1 and len(tokens) != n_classes + 1:
                raise ValueError(f"{path}:{lineno}: expected an image and {n_classes} labels, got {line.strip()!r}")
            entries.append((tokens[0], [float(t) for t in tokens[1:]] or None))
    return entries


def _splits_from_files(dataset, split_files, lookup, seed, val_fraction, skipped) -> list[list[LabeledImage]]:
    """train / val / test from split files; `lookup(name)` is the official record of a listed image.
    Labels written in a split file win over the official ones (that is what MRM trains with)."""
    paths = _split_file_paths(dataset, split_files)
    n_classes = len(TASKS[dataset][0])

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


# --- images on disk ------------------------------------------------------------------------------

def _resolve_images(parts: list[list], root: Path, check_images: bool, cache_dir, skipped: Counter,
                    stacklevel: int = 3) -> list[list]:
    """Point records at cached copies, then count (and, with check_images, drop) missing images.
    `stacklevel` makes the warnings point at the caller of the public reader."""
    missing, n_cached, out = [], 0, []
    for part in parts:
        kept = []
        for r in part:
            cached = mirror_path(r.image, root, cache_dir) if cache_dir is not None else None
            if cached is not None and cached.is_file():
                r.image = str(cached)
                n_cached += 1
            elif not os.path.isfile(r.image):
                missing.append(r.image)
                if check_images:
                    continue
            kept.append(r)
        out.append(kept)
    if missing:
        key = "image missing" if check_images else "image missing (kept)"
        skipped[key] += len(missing)
        warnings.warn(f"{len(missing)} image(s) missing on disk, {'dropped' if check_images else 'kept'} "
                      f"and counted in skipped[{key!r}]; e.g. {missing[:3]}", stacklevel=stacklevel)
    if cache_dir is not None and n_cached == 0:
        warnings.warn(f"cache_dir {cache_dir} holds none of these images (was it built for root {root}?)",
                      stacklevel=stacklevel)
    return out


def _labeled_splits(name, parts, skipped, root, check_images, cache_dir) -> LabeledSplits:
    classes, task, metric = TASKS[name]
    train, val, test = _resolve_images(parts, root, check_images, cache_dir, skipped, stacklevel=4)
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
    root = _dataset_root("nih", root)
    label_file = _find_file("nih", root, ["Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"])
    image_dirs = [d / "images" if (d / "images").is_dir() else d for d in sorted(root.glob("images*")) if d.is_dir()]
    if check_images and not image_dirs:
        raise _layout_error("nih", "the image folders (images_001/images/ ... or images/)", root)
    on_disk = {e.name: e.path for d in image_dirs for e in os.scandir(d)}
    records = {}
    for row in _csv_rows(label_file, ["Image Index", "Finding Labels", "Patient ID"]):
        name = row["Image Index"]
        image = on_disk.get(name) or os.path.join(root, "images", name)
        records[name] = LabeledImage(image, _nih_labels(row["Finding Labels"], label_file), row["Patient ID"])
    skipped = Counter()
    if split_files is None:
        parts = split_by_patient(list(records.values()), NIH_SPLIT, seed)
    else:
        parts = _splits_from_files("nih", split_files, lambda n: records.get(PurePosixPath(n).name),
                                   seed, 1 / 8, skipped)
    return _labeled_splits("nih", parts, skipped, root, check_images, cache_dir)


# --- CheXpert ------------------------------------------------------------------------------------

def _chexpert_relpath(csv_path: str) -> str:
    """'CheXpert-v1.0-small/train/patient00001/...' -> 'train/patient00001/...' (any version prefix)."""
    head, _, tail = csv_path.replace("\\", "/").partition("/")
    return tail if head.lower().startswith("chexpert-v1.0") else csv_path


def uncertain_policy(name: str, classes: Sequence[str]) -> dict[str, float]:
    """The value of an uncertain (-1) label per class under U-policy ``name``: "ones" and "zeros" take any
    class names, "mgca" CheXpert's five (used by `read_chexpert` and the csv reader)."""
    if name not in UNCERTAIN_POLICIES:
        raise ValueError(f"unknown uncertain policy {name!r}; use one of {sorted(UNCERTAIN_POLICIES)}")
    if name in ("ones", "zeros"):
        return dict.fromkeys(classes, 1.0 if name == "ones" else 0.0)
    unknown = [c for c in classes if c not in UNCERTAIN_POLICIES[name]]
    if unknown:
        raise ValueError(f"uncertain={name!r} is defined for {list(UNCERTAIN_POLICIES[name])} only, not {unknown}; "
                         f"use 'ones' or 'zeros'")
    return {c: UNCERTAIN_POLICIES[name][c] for c in classes}


def _chexpert_value(text: str, uncertain: float) -> float:
    if text.strip() == "":
        return 0.0
    value = float(text)
    return uncertain if value == -1 else value


def read_chexpert(root, *, seed=0, split_files=None, check_images=True, cache_dir=None,
                  uncertain="mgca", frontal_only=True, val_size=5000) -> LabeledSplits:
    """CheXpert, 5 competition findings (multi-label, AUC). Test = official valid.csv; val = whole
    train patients, seeded, until at least `val_size` images (at most 10% of train); train = the rest.
    `uncertain`: "mgca" (U-ones for Atelectasis, Edema, Pleural Effusion; U-zeros for Cardiomegaly,
    Consolidation), "ones" or "zeros"; blank is 0. `frontal_only` drops lateral views (counted)."""
    policy = uncertain_policy(uncertain, CHEXPERT_CLASSES)
    root = _dataset_root("chexpert", root)
    base = next((d for d in (root, root / "CheXpert-v1.0-small", root / "CheXpert-v1.0")
                 if (d / "train.csv").is_file()), None)
    if base is None:
        raise _layout_error("chexpert", "train.csv", root)
    valid_csv = _find_file("chexpert", base, ["valid.csv"])
    if check_images and not (base / "train").is_dir():
        raise _layout_error("chexpert", "the train/ image folder", base)
    skipped = Counter()
    lateral: set[str] = set()
    by_path: dict[str, LabeledImage] = {}  # "train/patient00001/study1/view1_frontal.jpg" -> record

    def read(csv_file: Path) -> list[LabeledImage]:
        out = []
        for row in _csv_rows(csv_file, ["Path", "Frontal/Lateral", *CHEXPERT_CLASSES]):
            patient = re.search(r"patient\d+", row["Path"])
            if patient is None:
                raise ValueError(f"{csv_file}: no patientNNNNN in path {row['Path']!r}")
            rel = _chexpert_relpath(row["Path"])
            labels = [_chexpert_value(row[c], policy[c]) for c in CHEXPERT_CLASSES]
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
        parts = _splits_from_files("chexpert", split_files, lambda n: by_path.get(_chexpert_relpath(n)),
                                   seed, 0.1, skipped)
        parts = [drop_lateral(p) for p in parts]
    return _labeled_splits("chexpert", parts, skipped, root, check_images, cache_dir)


# --- RSNA Pneumonia ------------------------------------------------------------------------------

def read_rsna(root, *, seed=0, split_files=None, check_images=True, cache_dir=None) -> LabeledSplits:
    """RSNA Pneumonia (binary, AUC): one label per patientId = max(Target) over its box rows.
    Split in the proportions 25,184 / 1,500 / 3,000 by patient, seeded; or MRM-style `split_files`."""
    root = _dataset_root("rsna", root)
    label_file = _find_file("rsna", root, ["stage_2_train_labels.csv"])
    image_dir = root / "stage_2_train_images"
    if check_images and not image_dir.is_dir():
        raise _layout_error("rsna", "the stage_2_train_images/ folder", root)
    on_disk: dict[str, str] = {}
    if image_dir.is_dir():  # prefer png / jpg conversions over the dcm originals when both exist
        entries = [e for e in os.scandir(image_dir) if Path(e.name).suffix.lower() in IMAGE_SUFFIXES]
        for e in sorted(entries, key=lambda e: IMAGE_SUFFIXES.index(Path(e.name).suffix.lower())):
            on_disk.setdefault(Path(e.name).stem, e.path)
    target: dict[str, float] = {}
    for row in _csv_rows(label_file, ["patientId", "Target"]):
        target[row["patientId"]] = max(target.get(row["patientId"], 0.0), float(row["Target"]))
    records = {pid: LabeledImage(on_disk.get(pid) or os.path.join(image_dir, f"{pid}.dcm"), [t], pid)
               for pid, t in target.items()}
    skipped = Counter()
    if split_files is None:
        parts = split_by_patient(list(records.values()), RSNA_SPLIT, seed)
    else:
        parts = _splits_from_files("rsna", split_files, lambda n: records.get(PurePosixPath(n).stem),
                                   seed, 0.1, skipped)
    return _labeled_splits("rsna", parts, skipped, root, check_images, cache_dir)


# --- COVIDx --------------------------------------------------------------------------------------

_COVIDX_SPELLINGS = {"normal": 0, "pneumonia": 1, "covid-19": 2, "covid19": 2}


def _covidx_label_files(root: Path, split_files) -> dict[str, Path]:
    if isinstance(split_files, Mapping):
        files = {split: Path(split_files[split]) for split in ("train", "test")}
        for path in files.values():
            if not path.is_file():
                raise _layout_error("covidx", path.name, path.parent)
        return files
    folder = Path(split_files) if split_files is not None else root
    files = {}
    for split in ("train", "test"):
        exact = folder / f"{split}.txt"
        candidates = [exact] if exact.is_file() else sorted(folder.glob(f"{split}_*.txt"))
        if not candidates:
            raise _layout_error("covidx", f"{split}.txt (or a versioned {split}_COVIDx*.txt)", folder)
        if len(candidates) > 1:
            raise ValueError(f"several COVIDx {split} files in {folder}: {[c.name for c in candidates]}; "
                             f"choose with split_files={{'train': ..., 'test': ...}}")
        files[split] = candidates[0]
    return files


def _read_covidx_file(path: Path, image_dir: Path) -> list[LabeledImage]:
    """Lines "patient_id filename class [source]" (3 columns in early versions, 4 later)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            tokens = line.split()
            if not tokens:
                continue
            if len(tokens) < 3:
                raise ValueError(f"{path}:{lineno}: expected 'patient_id filename class [source]', "
                                 f"got {line.strip()!r}")
            patient, label = tokens[0], (tokens[2] if len(tokens) == 3 else tokens[-2])
            filename = tokens[1] if len(tokens) == 3 else " ".join(tokens[1:-2])
            index = _COVIDX_SPELLINGS.get(label.lower())
            if index is None:
                hint = (" This is a binary COVIDx file (positive/negative: COVIDx 9B, CXR-2, CXR-3B ...); "
                        "the kit's task is the 3-class COVIDx (e.g. COVIDx 8A / 9A / CXR-3A)."
                        if label.lower() in ("positive", "negative") else "")
                raise ValueError(f"{path}:{lineno}: unknown class {label!r}; expected one of {COVIDX_CLASSES}.{hint}")
            onehot = [0.0] * len(COVIDX_CLASSES)
            onehot[index] = 1.0
            out.append(LabeledImage(os.path.join(image_dir, filename), onehot, patient))
    return out


def read_covidx(root, *, seed=0, split_files=None, check_images=True, cache_dir=None,
                val_fraction=0.1) -> LabeledSplits:
    """COVIDx, 3 classes (multi-class, accuracy). Test = official test file; val = `val_fraction` of
    the train file by patient, seeded. `split_files`: a folder holding the label files, or
    {"train": path, "test": path} to pick one version when several are present."""
    root = _dataset_root("covidx", root)
    files = _covidx_label_files(root, split_files)
    for split in ("train", "test"):
        if check_images and not (root / split).is_dir():
            raise _layout_error("covidx", f"the {split}/ image folder", root)
    train = _read_covidx_file(files["train"], root / "train")
    test = _read_covidx_file(files["test"], root / "test")
    parts = [*split_by_patient(train, (1 - val_fraction, val_fraction), seed), test]
    return _labeled_splits("covidx", parts, Counter(), root, check_images, cache_dir)


# --- MIMIC-CXR -----------------------------------------------------------------------------------

_HEADER = re.compile(
    r"^[ \t]*(?P<name>[A-Z][A-Z ()/,&-]*?|(?i:findings?|impressions?|conclusions?))[ \t]*:", re.MULTILINE)
_TITLE = re.compile(r"^[ \t]*FINAL REPORT[ \t]*$", re.IGNORECASE | re.MULTILINE)


def _squash(text: str) -> str:
    return " ".join(text.split())


def _section_name(header: str) -> str:
    name = _squash(header).lower()
    if "impression" in name or "conclusion" in name:
        return "impression"
    return "findings" if "finding" in name else name


def findings_impression(report: str) -> str:
    """FINDINGS + IMPRESSION of a free-text report, with the fallbacks listed in the module doc."""
    headers = list(_HEADER.finditer(report))
    if not headers:
        return _squash(_TITLE.sub("", report))
    sections: dict[str, str] = {}
    for header, following in zip(headers, headers[1:] + [None]):
        text = _squash(report[header.end(): following.start() if following else len(report)])
        name = _section_name(header.group("name"))
        sections[name] = _squash(f"{sections.get(name, '')} {text}")
    text = _squash(f"{sections.get('findings', '')} {sections.get('impression', '')}")
    if text:
        return text
    paragraphs = re.split(r"\n[ \t]*\n", report[headers[-1].end():].strip(), maxsplit=1)
    return _squash(paragraphs[1]) if len(paragraphs) > 1 else ""


def read_mimic(root, *, seed=0, split_files=None, check_images=True, cache_dir=None,
               reports_root=None, split="train", views=("PA", "AP")) -> tuple[list[ImageTextPair], dict[str, int]]:
    """MIMIC-CXR-JPG image-report pairs of one official split ("train", "validate", "test", "all"),
    frontal views (PA/AP) by default (`views=None`: all). Reports come from `reports_root` (default:
    `root`), as extracted from mimic-cxr-reports.zip. `split_files`: a csv replacing
    mimic-cxr-2.0.0-split.csv. `seed` is unused (nothing random; kept for the uniform signature)."""
    if split not in ("train", "validate", "test", "all"):
        raise ValueError(f"unknown MIMIC split {split!r}; use train, validate, test or all")
    root = _dataset_root("mimic", root)
    metadata = _find_file("mimic", root, ["mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv"])
    if split_files is None:
        split_csv = _find_file("mimic", root, ["mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-split.csv"])
    else:
        split_csv = _find_file("mimic", Path(split_files).parent, [Path(split_files).name])
    reports = Path(reports_root).expanduser() if reports_root is not None else root
    reports = reports / "files" if (reports / "files").is_dir() else reports
    if not reports.is_dir() or not any(reports.glob("p1*")):
        raise _layout_error("mimic", "the report folders (files/p10/...)", reports)
    if check_images and not (root / "files").is_dir():
        raise _layout_error("mimic", "the image folder files/", root)
    split_of = {row["dicom_id"]: row["split"] for row in _csv_rows(split_csv, ["dicom_id", "split"])}
    wanted = {v.upper() for v in views} if views is not None else None
    skipped = Counter()
    studies: dict[tuple[str, str], list[str]] = {}
    for row in _csv_rows(metadata, ["dicom_id", "subject_id", "study_id", "ViewPosition"]):
        image_split = split_of.get(row["dicom_id"])
        if image_split is None:
            skipped["not in the split file"] += 1
        elif split != "all" and image_split != split:
            continue  # another split: not skipped, just not asked for
        elif wanted is not None and row["ViewPosition"].upper() not in wanted:
            skipped[f"view not {'/'.join(views)}"] += 1
        else:
            studies.setdefault((row["subject_id"], row["study_id"]), []).append(row["dicom_id"])
    pairs = []
    for (subject, study), dicom_ids in studies.items():
        study_path = f"p{subject[:2]}/p{subject}/s{study}"
        report_file = reports / f"{study_path}.txt"
        if not report_file.is_file():
            skipped["report missing (studies)"] += 1
            continue
        text = findings_impression(report_file.read_text(encoding="utf-8", errors="replace"))
        if not text:
            skipped["no usable report text (studies)"] += 1
            continue
        pairs += [ImageTextPair(str(root / "files" / study_path / f"{d}.jpg"), text, subject, f"s{study}")
                  for d in dicom_ids]
    if studies and skipped["report missing (studies)"] == len(studies):
        raise _layout_error("mimic", f"the report of every study ({len(studies)}; if mimic-cxr-reports.zip "
                            "was extracted elsewhere, pass that folder as reports_root / --reports-root)", reports)
    [pairs] = _resolve_images([pairs], root, check_images, cache_dir, skipped)
    return pairs, dict(skipped)


# --- Open-i / IU X-ray ---------------------------------------------------------------------------

def openi_sections(xml_file: Path) -> tuple[str, str, str, list[str]]:
    """(uId, FINDINGS, IMPRESSION, parent image ids) of one Open-i report XML."""
    try:
        tree = ET.parse(xml_file)
    except ET.ParseError as err:
        raise ValueError(f"unreadable report XML {xml_file}: {err}") from err
    texts = {el.get("Label", "").upper(): _squash(el.text or "") for el in tree.iter("AbstractText")}
    uid = tree.find("uId")
    images = [el.get("id") for el in tree.iter("parentImage") if el.get("id")]
    report_id = uid.get("id") if uid is not None else xml_file.stem
    return report_id, texts.get("FINDINGS", ""), texts.get("IMPRESSION", ""), images


def read_openi(root, *, seed=0, split_files=None, check_images=True,
               cache_dir=None) -> tuple[list[ImageTextPair], dict[str, int]]:
    """Open-i / IU X-ray pairs: one pair per parent image of a report, text = FINDINGS + IMPRESSION
    (either alone when the other is empty). Patient = report number (file stem). All views (the XML
    names no view). `seed` and `split_files` are unused (no official split; uniform signature)."""
    root = _dataset_root("openi", root)
    xml_dir = root / "ecgen-radiology"
    xml_files = sorted(xml_dir.glob("*.xml"), key=lambda p: (len(p.stem), p.stem)) if xml_dir.is_dir() else []
    if not xml_files:
        raise _layout_error("openi", "the report XMLs ecgen-radiology/*.xml", root)
    image_dir = next((d for d in (root / "NLMCXR_png", root / "images") if d.is_dir()), root)
    if check_images and image_dir == root and not any(root.glob("*.png")):
        raise _layout_error("openi", "the image folder NLMCXR_png/", root)
    skipped = Counter()
    pairs = []
    for xml_file in xml_files:
        uid, findings, impression, images = openi_sections(xml_file)
        text = _squash(f"{findings} {impression}")
        if not text:
            skipped["no findings/impression (reports)"] += 1
        elif not images:
            skipped["no images (reports)"] += 1
        else:
            pairs += [ImageTextPair(str(image_dir / f"{i}.png"), text, xml_file.stem, uid) for i in images]
    [pairs] = _resolve_images([pairs], root, check_images, cache_dir, skipped)
    return pairs, dict(skipped)


# --- registry ------------------------------------------------------------------------------------

PAIR_DATASETS = {"mimic": read_mimic, "openi": read_openi}  # + "csv", registered by data.csvdata
LABEL_DATASETS = {"nih": read_nih, "chexpert": read_chexpert, "rsna": read_rsna, "covidx": read_covidx}  # + "csv"
CSV_READERS: dict = {}  # "pairs", "labels", None (whichever file is there): filled in by data.csvdata
DATASET_NAMES = [*PAIR_DATASETS, *LABEL_DATASETS, "csv"]


def get_reader(name: str, kind: str | None = None):
    """The reader of a dataset name; ValueError listing the valid names for anything else. "csv" has two
    files: ``kind`` "pairs" or "labels" picks one, None reads labels.csv when present (`csvdata.read_csv`)."""
    if name == "csv":
        return CSV_READERS[kind]
    readers = {**PAIR_DATASETS, **LABEL_DATASETS}
    if name not in readers:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    return readers[name]


import cmitm_lib.data.csvdata  # noqa: E402,F401  (registers "csv" in the tables above)
