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
synth-rsna         consolidation present (binary, pneumonia-like), 22%   AUC         RSNA Pneumonia
                   positive in every split (RSNA's share)
synth-covidx       normal / focal consolidation / diffuse bilateral      accuracy    COVIDx
                   (edema), balanced thirds, other studies excluded
=================  ====================================================  ==========  =============

synth and synth-chexpert share the downstream case stream (indices 0 ..). synth-covidx and synth-rsna
pick their studies by class from their own streams (``COVIDX_START``, ``RSNA_START``), keeping the
first cases of each class: consolidation has a base rate of 13%, and at 1% of the labels (50 studies)
that left 3-9 positives to learn from, where RSNA's 22% leaves about 11.
"""
from __future__ import annotations

import numpy as np

from .policy import UNCERTAIN_POLICIES, uncertain_value
from .synth import FINDINGS, case_params

SYNTH_TASKS = ("synth", "synth-chexpert", "synth-rsna", "synth-covidx")
# The synth-chexpert findings and the CheXpert class each stands for; their U-policy is CheXpert's "mgca".
CHEXPERT_CLASS_OF = {"atelectasis": "Atelectasis", "cardiomegaly": "Cardiomegaly", "consolidation": "Consolidation",
                     "edema": "Edema", "effusion": "Pleural Effusion"}
CHEXPERT_FINDINGS = tuple(CHEXPERT_CLASS_OF)
U_POLICY = {name: UNCERTAIN_POLICIES["mgca"][c] for name, c in CHEXPERT_CLASS_OF.items()}
SYNTH_COVIDX_CLASSES = ("normal", "focal consolidation", "diffuse bilateral")
COVIDX_START = 1_000_000
RSNA_START = 2_000_000
RSNA_PREVALENCE = 0.22  # RSNA Pneumonia: 6012 of 26684 studies with opacity boxes (22.5%)
TASK_INFO = {  # name -> (classes, task, metric)
    "synth": (list(FINDINGS), "multilabel", "auc"),
    "synth-chexpert": (list(CHEXPERT_FINDINGS), "multilabel", "auc"),
    "synth-rsna": (["consolidation"], "multilabel", "auc"),
    "synth-covidx": (list(SYNTH_COVIDX_CLASSES), "multiclass", "acc"),
}


def report_labels(params: dict) -> np.ndarray:
    """What the report says per finding: 1 stated, 0 negated / unmentioned, -1 hedged."""
    return np.where(params["hedged"], -1.0, params["labels"]).astype(np.float32)


def chexpert_labels(report: np.ndarray) -> np.ndarray:
    """The 5 CheXpert-like columns of a report-label vector, uncertain (-1) mapped by U_POLICY."""
    cols = [report[FINDINGS.index(name)] for name in CHEXPERT_FINDINGS]
    return np.array([uncertain_value(v, U_POLICY[name]) for name, v in zip(CHEXPERT_FINDINGS, cols)],
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


def rsna_class(labels: np.ndarray) -> int:
    """1 consolidation present, 0 absent (every study belongs to the task)."""
    return int(labels[FINDINGS.index("consolidation")] > 0.5)


def rsna_quotas(n: int) -> list[int]:
    """Negatives and positives of an ``n``-study split of synth-rsna (positives: RSNA_PREVALENCE)."""
    positives = max(1, round(RSNA_PREVALENCE * n))
    return [n - positives, positives]


def covidx_quotas(n: int) -> list[int]:
    """Balanced thirds, the last class taking the remainder."""
    return [n // 3, n // 3, n - 2 * (n // 3)]


def select_indices(seed: int, sizes: tuple[int, ...], start: int, classify, quotas,
                   level: str = "lesson") -> tuple[list[np.ndarray], dict]:
    """Case indices of each split of a task that picks its studies by class: scan the downstream stream
    from ``start``, keep the first cases of each class until every split's ``quotas(n)`` is met (splits
    disjoint, in order), and count what was scanned and what ``classify`` excluded (None)."""
    per_split = [quotas(n) for n in sizes]
    n_classes = len(per_split[0])
    need = [sum(q[c] for q in per_split) for c in range(n_classes)]
    found: list[list[int]] = [[] for _ in range(n_classes)]
    index, excluded = start, 0
    while any(len(found[c]) < need[c] for c in range(n_classes)):
        c = classify(case_params(seed, index, "downstream", level)["labels"])
        if c is None:
            excluded += 1
        elif len(found[c]) < need[c]:
            found[c].append(index)
        index += 1
    splits, taken = [], [0] * n_classes
    for q in per_split:
        part = []
        for c in range(n_classes):
            part += found[c][taken[c]: taken[c] + q[c]]
            taken[c] += q[c]
        splits.append(np.array(sorted(part)))
    return splits, {"scanned": index - start, "excluded (other findings)": excluded}


def covidx_indices(seed: int, sizes: tuple[int, int, int], level: str = "lesson") -> tuple[list[np.ndarray], dict]:
    """Case indices of the train / val / test splits of synth-covidx (balanced thirds)."""
    return select_indices(seed, sizes, COVIDX_START, covidx_class, covidx_quotas, level)


def rsna_indices(seed: int, sizes: tuple[int, int, int], level: str = "lesson") -> tuple[list[np.ndarray], dict]:
    """Case indices of the train / val / test splits of synth-rsna (RSNA_PREVALENCE positives each)."""
    return select_indices(seed, sizes, RSNA_START, rsna_class, rsna_quotas, level)


# task -> how its studies are picked (the other tasks take the downstream stream as it comes)
SELECTED = {"synth-covidx": covidx_indices, "synth-rsna": rsna_indices}
