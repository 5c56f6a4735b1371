"""Every numbered lesson runs once, top to bottom, with papermill: the training lessons short (one epoch per
stage, 256 pre-training pairs; `lesson_runs.short_run`) and lesson 5 on Fig. 2's small grid, in order, each
reading what the one before wrote. `make check` runs them at their defaults as well (nbval)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from lesson_runs import short_run

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "notebooks").glob("0*.ipynb"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lessons")


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.stem)
def test_lesson_runs_short(lesson: Path, runs: Path):
    pm = pytest.importorskip("papermill")
    params = {**short_run(str(runs), n_train_pairs=256), "05": {"out_dir": f"{runs}/experiments", "experiment": "fig2"}}
    params = params.get(lesson.name[:2], {})
    out = runs / lesson.name
    pm.execute_notebook(str(lesson), str(out), cwd=str(ROOT / "notebooks"), parameters=params,
                        kernel_name="python3", progress_bar=False)
    executed = json.loads(out.read_text())
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    if lesson.name.startswith("02"):
        assert (runs / "stage1" / "model.safetensors").is_file()
    if lesson.name.startswith("03"):
        assert (runs / "stage2" / "model.safetensors").is_file()
