"""Ground-truth finding regions of SynthCXR cases: where the generator drew each finding.

A finding's region is where it changes the density map: `synth` renders a case twice, once with
the finding and once with it removed (each texture has its own random stream, so removing one
finding leaves everything else unchanged), and the region is where the two differ by more than
``threshold`` density units (soft tissue is ~0.45, aerated lung ~0.15). This uses the generator's
own drawing code, so a region is exactly what the finding did to the film: the disc of a nodule, the
fluid of an effusion below its meniscus, the rim by which an enlarged heart outgrew a normal one,
the unmarked air of a pneumothorax.
"""
from __future__ import annotations

import numpy as np

from .synth import case_params  # re-exported: regions.case_params(seed, index, domain)
from .synth_params import FINDINGS, check_size
from .synth_render import density_map, patient_coords

DEFAULT_THRESHOLD = 0.02


def _density(params: dict, size: int) -> np.ndarray:
    u, v = patient_coords(size, params["acquisition"])
    return density_map(u, v, params, size)


def finding_regions(params: dict, size: int = 128, threshold: float = DEFAULT_THRESHOLD) -> dict[str, np.ndarray]:
    """{finding: bool (size, size) mask} for every finding of ``synth.FINDINGS``; absent ones are all False."""
    check_size(size)
    if not threshold > 0:
        raise ValueError(f"threshold={threshold!r} is not valid; it must be > 0 (density units, e.g. 0.02)")
    full = _density(params, size)
    regions = {}
    for name in FINDINGS:
        if name not in params["findings"]:
            regions[name] = np.zeros((size, size), dtype=bool)
            continue
        without = {**params, "findings": {k: v for k, v in params["findings"].items() if k != name}}
        regions[name] = np.abs(full - _density(without, size)) > threshold
    return regions


def case_regions(seed: int, index: int, size: int = 128, domain: str = "pretrain",
                 threshold: float = DEFAULT_THRESHOLD, level: str = "lesson") -> dict[str, np.ndarray]:
    """Finding regions of case ``index`` of the SynthCXR set drawn with ``seed`` in ``domain`` at ``level``."""
    return finding_regions(case_params(seed, index, domain, level), size, threshold)
