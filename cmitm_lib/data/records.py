"""Plain records shared by every dataset reader (embedded and real).

A reader turns a dataset's official files into lists of these records; the torch datasets in
`cmitm_lib.data.datasets` turn records into tensors. Keeping the two apart means a reader can be
tested on its label files alone, without any image on disk.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class ImageTextPair:
    """One pre-training example: an image and the report written for its study."""

    image: str  # path to the image file (jpg / png / dcm) or a key into an in-memory array
    report: str  # FINDINGS + IMPRESSION text
    patient_id: str
    study_id: str = ""
    split: str = ""  # "train" / "val" when the dataset says (csv); "" = the loader's held-out rule


@dataclass
class LabeledImage:
    """One fine-tuning example: an image and its label vector (multi-label) or class index."""

    image: str
    labels: list[float]  # multi-label: one 0/1 value per class; multi-class: one-hot
    patient_id: str


@dataclass
class LabeledSplits:
    """A fine-tuning dataset: train / val / test records plus what the task is."""

    name: str
    classes: list[str]
    task: Literal["multilabel", "multiclass"]
    metric: Literal["auc", "acc"]
    train: list[LabeledImage]
    val: list[LabeledImage]
    test: list[LabeledImage]
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count, never silently dropped
