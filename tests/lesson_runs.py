"""Short-run parameters of the training lessons: what `make test` and the browser test inject with papermill
(a papermill ``-p`` cell after the `parameters` cell). nbval (`make check`) runs every lesson at its defaults."""
from __future__ import annotations


def short_run(base: str, n_train_pairs: int = 0) -> dict[str, dict]:
    """Lesson number -> parameters: one epoch per stage, checkpoints and metrics under ``base``
    (``n_train_pairs`` > 0: that many pre-training pairs, for a quicker run)."""
    subset = {"n_train_pairs": n_train_pairs} if n_train_pairs else {}
    return {
        "02": {"epochs": 1, **subset, "checkpoint_out": f"{base}/stage1", "out_dir": base},
        "03": {"epochs": 1, **subset, "checkpoint_in": f"{base}/stage1", "checkpoint_out": f"{base}/stage2",
               "out_dir": base},
        "04": {"epochs": 1, "fractions": [0.01], "checkpoint_in": f"{base}/stage2",
               "checkpoint_stage1": f"{base}/stage1", "out_dir": base},
        "05": {"out_dir": f"{base}/experiments"},
    }
