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
* Report text: `cmitm_lib.data.report_sections` (MIMIC's FINDINGS + IMPRESSION and its fallbacks).

Where things are: `catalog` (what each dataset is, its classes and layout, `DatasetLayoutError`),
`policy` (CheXpert's uncertain-label policy), `splits` (patient-disjoint splits, label fractions,
split files), `ondisk` (cached copies, missing images), `label_readers` (NIH, CheXpert, RSNA,
COVIDx), `pair_readers` (MIMIC-CXR, Open-i), `csvdata` (your own collection). This module is the
registry of them all by name.
"""
from __future__ import annotations

from .csvdata import read_csv, read_csv_labels, read_csv_pairs
from .label_readers import read_chexpert, read_covidx, read_nih, read_rsna
from .pair_readers import read_mimic, read_openi

# Also importable from here, for code outside cmitm_lib.data that reads the real datasets through this
# module (the data notebook; tests/test_zeroshot_saliency.py, which still says TASKS):
from .catalog import DATASET_INFO, DatasetLayoutError  # noqa: F401
from .splits import label_fraction  # noqa: F401

PAIR_DATASETS = {"mimic": read_mimic, "openi": read_openi, "csv": read_csv_pairs}
LABEL_DATASETS = {"nih": read_nih, "chexpert": read_chexpert, "rsna": read_rsna, "covidx": read_covidx,
                  "csv": read_csv_labels}
CSV_READERS = {"pairs": read_csv_pairs, "labels": read_csv_labels, None: read_csv}  # "csv" has two files
DATASET_NAMES = ["mimic", "openi", "nih", "chexpert", "rsna", "covidx", "csv"]  # the csv format last


def get_reader(name: str, kind: str | None = None):
    """The reader of a dataset name; ValueError listing the valid names for anything else. "csv" has two
    files: ``kind`` "pairs" or "labels" picks one, None reads labels.csv when present (`csvdata.read_csv`)."""
    if name == "csv":
        return CSV_READERS[kind]
    readers = {**PAIR_DATASETS, **LABEL_DATASETS}
    if name not in readers:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    return readers[name]
