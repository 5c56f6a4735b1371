"""The embedded benchmark: four SynthCXR downstream tasks that mirror the paper's four datasets.

All four are drawn from the *downstream* acquisition domain (under-exposed, noisier, wider field of
view than the pre-training pairs), so pre-trained encoders face an acquisition shift, as they do
between MIMIC-CXR and NIH / CheXpert / RSNA / COVIDx.

=================  ====================================================  ==========  =============
task               labels                                                metric      like
=================  ====================================================  ==========  =============
synth              7 findings present in the image (multi-label)         macro AUC   NIH ChestX-ray
synth-chexpert     5 findings; TRAIN labels read from the report, hedged macro AUC   CheXpert
                   mentions (-1) mapped by the U-policy (U-ones for
                   atelectasis, edema, effusion; U-zeros for
                   cardiomegaly, consolidation); val/test labels are
                   the image truth (CheXpert's expert-labelled test)
synth-rsna         consolidation present (binary, pneumonia-like)        AUC         RSNA Pneumonia
synth-covidx       normal / focal consolidation / diffuse bilateral      accuracy    COVIDx
                   (edema), balanced thirds, other studies excluded
=================  ====================================================  ==========  =============

synth, synth-chexpert and synth-rsna share the downstream case stream (indices 0 ..); synth-covidx
scans its own stream from index ``COVIDX_START`` on, keeping the first cases of each class.
"""
from __future__ import annotations

import numpy as np

from .synth import FINDINGS, case_params

TASKS = ("synth", "synth-chexpert", "synth-rsna", "synth-covidx")
CHEXPERT_FINDINGS = ("atelectasis", "cardiomegaly", "consolidation", "edema", "effusion")
U_POLICY = {"atelectasis": 1.0, "cardiomegaly": 0.0, "consolidation": 0.0, "edema": 1.0, "effusion": 1.0}  # MGCA
COVIDX_CLASSES = ("normal", "focal consolidation", "diffuse bilateral")
COVIDX_START = 1_000_000
TASK_INFO = {  # name -> (classes, task, metric)
    "synth": (list(FINDINGS), "multilabel", "auc"),
    "synth-chexpert": (list(CHEXPERT_FINDINGS), "multilabel", "auc"),
    "synth-rsna": (["consolidation"], "multilabel", "auc"),
    "synth-covidx": (list(COVIDX_CLASSES), "multiclass", "acc"),
}


def report_labels(params: dict) -> np.ndarray:
    """What the report says per finding: 1 stated, 0 negated / unmentioned, -1 hedged."""
    return np.where(params["hedged"], -1.0, params["labels"]).astype(np.float32)


def chexpert_labels(report: np.ndarray) -> np.ndarray:
    """The 5 CheXpert-like columns of a report-label vector, uncertain (-1) mapped by U_POLICY."""
    cols = [report[FINDINGS.index(name)] for name in CHEXPERT_FINDINGS]
    return np.array([U_POLICY[name] if v == -1 else v for name, v in zip(CHEXPERT_FINDINGS, cols)],
                    dtype=np.float32)


def image_columns(labels: np.ndarray, names) -> np.ndarray:
    """Columns ``names`` of (N, 7) image-truth labels."""
    return labels[:, [FINDINGS.index(n) for n in names]].astype(np.float32)


def covidx_class(labels: np.ndarray) -> int | None:
    """0 normal (no finding at all), 1 focal consolidation (no edema), 2 diffuse bilateral (edema, no
    consolidation); None for every other study (excluded from the task)."""
    present = {name for name, v in zip(FINDINGS, labels) if v}
    if not present:
        return 0
    if "consolidation" in present and "edema" not in present:
        return 1
    if "edema" in present and "consolidation" not in present:
        return 2
    return None


def covidx_indices(seed: int, sizes: tuple[int, int, int]) -> tuple[list[np.ndarray], dict]:
    """Case indices of the train / val / test splits of synth-covidx (each split in balanced thirds,
    the last third taking the remainder), and counts of what the scan saw and excluded."""
    quotas = [[n // 3, n // 3, n - 2 * (n // 3)] for n in sizes]
    need = [sum(q[c] for q in quotas) for c in range(3)]
    found: list[list[int]] = [[], [], []]
    index, excluded = COVIDX_START, 0
    while any(len(found[c]) < need[c] for c in range(3)):
        c = covidx_class(case_params(seed, index, "downstream")["labels"])
        if c is None:
            excluded += 1
        elif len(found[c]) < need[c]:
            found[c].append(index)
        index += 1
    splits, taken = [], [0, 0, 0]
    for q in quotas:
        part = []
        for c in range(3):
            part += found[c][taken[c]: taken[c] + q[c]]
            taken[c] += q[c]
        splits.append(np.array(sorted(part)))
    return splits, {"scanned": index - COVIDX_START, "excluded (other findings)": excluded}
