"""Every numbered lesson runs once, top to bottom, with papermill: the training lessons short (one epoch per
stage, 256 pre-training pairs) and lesson 5 on Fig. 2's small grid (`lesson_runs.suite_run`), in order, each
reading what the one before wrote. `make check` runs the same copies under nbval instead."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from lesson_runs import LESSONS, ROOT, suite_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lessons")


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.stem)
def test_lesson_runs_short(lesson: Path, runs: Path):
    pm = pytest.importorskip("papermill")
    params = suite_run(str(runs)).get(lesson.name[:2], {})
    out = runs / lesson.name
    pm.execute_notebook(str(lesson), str(out), cwd=str(ROOT / "notebooks"), parameters=params,
                        kernel_name="python3", progress_bar=False, execution_timeout=900)
    executed = json.loads(out.read_text())
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    if lesson.name.startswith("02"):
        assert (runs / "stage1" / "model.safetensors").is_file()
    if lesson.name.startswith("03"):
        assert (runs / "stage2" / "model.safetensors").is_file()
