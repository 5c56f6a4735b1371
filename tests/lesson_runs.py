"""Short-run parameters of the training lessons, injected after each lesson's `parameters` cell as
`papermill -p` would: `make test` executes them with papermill (tests/test_lessons_run.py), `make check`
with nbval (``python tests/lesson_runs.py DIR`` writes the parameterised copies it checks), the browser
test in JupyterLab. Each lesson's default run is `make lessons` (docs/lessons, checked by
tests/test_executed_lessons.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "notebooks").glob("0*.ipynb"))


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


def suite_run(base: str) -> dict[str, dict]:
    """What the test suites run: `short_run` on 256 pre-training pairs, lesson 5 on Fig. 2's small grid."""
    return {**short_run(base, n_train_pairs=256), "05": {"out_dir": f"{base}/experiments", "experiment": "fig2"}}


def parameterised(lesson: Path, params: dict) -> nbformat.NotebookNode:
    """The lesson with ``params`` in a cell after its `parameters` cell (papermill's injected cell)."""
    notebook = nbformat.read(lesson, as_version=4)
    if not params:
        return notebook
    from papermill.parameterize import parameterize_notebook  # dev extra

    for cell in notebook.cells:  # papermill's own runs add these first
        cell.metadata.setdefault("tags", [])
    notebook.metadata.setdefault("papermill", {})
    return parameterize_notebook(notebook, params)


def write_suite_copies(out: Path) -> list[Path]:
    """Every lesson with `suite_run`'s parameters (runs under ``out``/runs), written to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    params = suite_run(str((out / "runs").resolve()))
    written = []
    for lesson in LESSONS:
        target = out / lesson.name
        nbformat.write(parameterised(lesson, params.get(lesson.name[:2], {})), target)
        written.append(target)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/lesson_runs.py OUT_DIR  (writes the lessons with the suite's short parameters)")
    for path in write_suite_copies(Path(sys.argv[1])):
        print(path)
