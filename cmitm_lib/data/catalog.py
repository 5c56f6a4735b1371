"""The real datasets: what each one is (title, source, access terms, folder layout, classes, task)
and how its official files are found and read; a missing folder or file raises `DatasetLayoutError`,
whose message shows the expected layout.
"""
from __future__ import annotations

import csv
import gzip
import os
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path

from .policy import CHEXPERT_CLASSES

NIH_CLASSES = [
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
]
RSNA_CLASSES = ["Pneumonia"]  # binary, one sigmoid output
COVIDX_CLASSES = ["normal", "pneumonia", "COVID-19"]

REAL_TASK_INFO = {  # name -> (classes, task, metric)
    "nih": (NIH_CLASSES, "multilabel", "auc"),
    "chexpert": (CHEXPERT_CLASSES, "multilabel", "auc"),
    "rsna": (RSNA_CLASSES, "multilabel", "auc"),
    "covidx": (COVIDX_CLASSES, "multiclass", "acc"),
}

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
    "csv": {
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
}


class DatasetLayoutError(FileNotFoundError):
    """A dataset folder or file is missing; the message shows the expected layout."""


def layout_error(dataset: str, what: str, folder: Path, layout: str | None = None) -> DatasetLayoutError:
    info = DATASET_INFO[dataset]
    tree = textwrap.indent((layout or info["layout"]).strip("\n"), "    ")
    return DatasetLayoutError(
        f"{info['title']}: {what} is missing (looked in {folder}).\n"
        f"Expected layout:\n{tree}\nSource: {info['source']}")


def dataset_root(dataset: str, root: str | os.PathLike) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise layout_error(dataset, "the dataset folder", root)
    return root


def find_file(dataset: str, folder: Path, names: Sequence[str]) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise layout_error(dataset, " or ".join(names), folder)


def csv_rows(path: Path, required: Sequence[str]) -> Iterator[dict[str, str]]:
    """Rows of a csv or csv.gz file as dicts, after checking that the required columns exist."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; the header has {reader.fieldnames}")
        yield from reader


def token_lines(path: Path) -> Iterator[tuple[str, list[str], str]]:
    """(where, tokens, line) of each non-blank line of a whitespace-separated list file; where = "path:lineno"."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            tokens = line.split()
            if tokens:
                yield f"{path}:{lineno}", tokens, line.strip()
