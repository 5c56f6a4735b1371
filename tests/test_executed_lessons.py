"""docs/lessons holds every lesson as `make lessons` executed it: the current source, at its defaults, without
an error. A lesson edited without re-running `make lessons` fails here."""
from __future__ import annotations

import nbformat
import pytest
from lesson_runs import LESSONS, ROOT

EXECUTED = ROOT / "docs" / "lessons"


def cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source) for c in nb.cells]


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.stem)
def test_executed_copy_is_the_current_lesson_at_its_defaults(lesson):
    copy = EXECUTED / lesson.name
    assert copy.is_file(), f"{copy} is missing: run `make lessons`"
    executed = nbformat.read(copy, as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert not injected, f"{copy.name} ran with parameters; `make lessons` runs every lesson at its defaults"
    assert cells(executed) == cells(nbformat.read(lesson, as_version=4)), (
        f"{copy.name} was executed from another version of {lesson.name}: run `make lessons`")
    code = [c for c in executed.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), f"{copy.name}: not every cell ran"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{copy.name} holds an error output"
