"""The CheXpert uncertainty ("U") policy: what an uncertain (-1) label counts as, per class.

CheXpert's labeller marks a finding that a report hedges as -1. A U-policy sets each class's -1 to 1
(U-ones) or 0 (U-zeros); blank always means 0. "mgca", the policy CMITM and MGCA fine-tune with, is
U-ones for Atelectasis, Edema and Pleural Effusion and U-zeros for Cardiomegaly and Consolidation.
One definition for every user: the CheXpert reader, the csv reader (``uncertain=``) and the embedded
synth-chexpert task (`tasks.U_POLICY`).
"""
from __future__ import annotations

from collections.abc import Sequence

CHEXPERT_CLASSES = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]

# CheXpert uncertain (-1) label -> value, per class. Blank always means 0.
UNCERTAIN_POLICIES = {
    "mgca": {"Atelectasis": 1.0, "Cardiomegaly": 0.0, "Consolidation": 0.0, "Edema": 1.0, "Pleural Effusion": 1.0},
    "ones": dict.fromkeys(CHEXPERT_CLASSES, 1.0),
    "zeros": dict.fromkeys(CHEXPERT_CLASSES, 0.0),
}


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


def uncertain_value(value: float, uncertain: float) -> float:
    """A label value with uncertain (-1) replaced by ``uncertain``, the policy's value for its class."""
    return uncertain if value == -1 else value


def chexpert_value(text: str, uncertain: float) -> float:
    """A CheXpert-style label cell ("1", "0", "-1" or blank) as a number; blank is 0, -1 is ``uncertain``."""
    if text.strip() == "":
        return 0.0
    return uncertain_value(float(text), uncertain)
