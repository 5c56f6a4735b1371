"""Label fractions (1% / 10% / 100%): one rule for the embedded tasks and the real datasets."""
from __future__ import annotations

import math

import numpy as np

from ..config import check_fraction


def fraction_indices(n: int, fraction: float, seed: int = 0, labels: np.ndarray | None = None) -> np.ndarray:
    """Sorted indices of about ``fraction`` of ``n`` training examples, nested: for one seed, 1% is
    inside 10% is inside 100%.

    One seeded permutation; its first ``max(1, ceil(fraction * n))`` items are taken. With ``labels``
    (N, K), every class (multi-class, one-hot) or finding (multi-label) without a positive in that
    prefix gets its first positive in the permutation added, so every class appears when the data
    allow. Nesting still holds: a class missing from a longer prefix is missing from a shorter one
    too, and both add the same example.
    """
    check_fraction("fraction", fraction)
    order = np.random.default_rng(seed).permutation(n)
    chosen = order[: max(1, math.ceil(fraction * n - 1e-9))]
    if labels is not None:
        positive = np.asarray(labels) > 0.5
        if positive.shape[0] != n:
            raise ValueError(f"labels has {positive.shape[0]} rows for n={n} examples")
        missing = np.flatnonzero(~positive[chosen].any(axis=0) & positive.any(axis=0))
        chosen = np.union1d(chosen, [order[np.argmax(positive[order, c])] for c in missing]).astype(int)
    return np.sort(chosen)
