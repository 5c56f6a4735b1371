"""The lessons' layout, checked without running them: stored without outputs, one `parameters` cell split
into what is learned and what is operational, one imports cell, and the shared helpers imported from
`cmitm_lib` instead of being defined in a notebook."""
import ast
import json
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))
MARKER = "# --- operational: where and how it runs (does not change what is learned) ---"
# where and how a lesson runs; every other parameter changes what is learned (or shown) and goes above MARKER
OPERATIONAL = {"data_root", "device", "num_workers", "checkpoint_every", "resume", "accum_steps", "n_show",
               "n_samples", "out_dir", "checkpoint_in", "checkpoint_out", "checkpoint_stage1"}


def _cells(nb_path: Path, kind: str = "code") -> list[dict]:
    return [c for c in json.loads(nb_path.read_text())["cells"] if c["cell_type"] == kind]


def _python(cell: dict) -> str:
    """The cell's source without IPython magics (`%matplotlib inline`), as Python."""
    return "\n".join(line for line in "".join(cell["source"]).split("\n") if not line.lstrip().startswith("%"))


def _parameters(nb_path: Path) -> dict:
    tagged = [c for c in _cells(nb_path) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{nb_path.name}: {len(tagged)} cells tagged `parameters`, expected 1"
    return tagged[0]


def test_there_are_lessons():
    assert [p.name[:2] for p in NOTEBOOKS] == ["00", "01", "02", "03", "04", "05"]


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_without_outputs(nb_path):
    for cell in _cells(nb_path):
        assert cell["outputs"] == [] and cell["execution_count"] is None, f"{nb_path.name}: cell {cell.get('id')}"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_are_typed_commented_and_split_at_the_marker(nb_path):
    source = "".join(_parameters(nb_path)["source"])
    lines = source.split("\n")
    names = []
    for line in lines:
        if line == MARKER:
            continue
        stmt = ast.parse(line).body
        assert len(stmt) == 1 and isinstance(stmt[0], ast.AnnAssign), f"{nb_path.name}: not `name: type = value`: {line!r}"
        assert "  # " in line, f"{nb_path.name}: parameter without a comment: {line!r}"
        names.append(stmt[0].target.id)
    operational = [n for n in names if n in OPERATIONAL]
    if not operational:
        assert MARKER not in lines
        return
    assert lines.count(MARKER) == 1, f"{nb_path.name} has operational parameters {operational} but no marker line"
    cut = lines.index(MARKER)
    above = [n for n in names[:cut] if n in OPERATIONAL]
    below = [n for n in names[cut:] if n not in OPERATIONAL]
    assert not above, f"{nb_path.name}: operational parameters above the marker: {above}"
    assert not below, f"{nb_path.name}: parameters that change what is learned below the marker: {below}"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.name)
def test_one_imports_cell_right_after_the_parameters(nb_path):
    cells = _cells(nb_path)
    with_imports = [c.get("id") for c in cells
                    if any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(ast.parse(_python(c))))]
    assert len(with_imports) == 1, f"{nb_path.name}: imports in cells {with_imports}"
    params = cells.index(_parameters(nb_path))
    assert cells[params + 1].get("id") == with_imports[0], f"{nb_path.name}: the imports cell must follow `parameters`"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.name)
def test_shared_helpers_come_from_the_library(nb_path):
    code = "\n".join("".join(c["source"]) for c in _cells(nb_path))
    for helper in ("def show(", "def first_of_shuffle("):
        assert helper not in code, f"{nb_path.name} defines {helper[4:-1]}: import it from cmitm_lib"
    assert "from cmitm_lib.cli" not in code and "import cmitm_lib.cli" not in code, \
        f"{nb_path.name} imports the command line module; lessons use the library"


def test_viz_show_displays_and_closes_the_figure():
    pytest.importorskip("IPython")
    from cmitm_lib import viz

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    viz.show(fig)
    assert not plt.fignum_exists(fig.number)


def test_first_of_shuffle_is_seeded_ordered_and_of_length_n(micro_pairs):
    from cmitm_lib.data.datasets import first_of_shuffle

    a, b = first_of_shuffle(micro_pairs, 10, seed=3), first_of_shuffle(micro_pairs, 10, seed=3)
    assert len(a) == 10 and a.reports == b.reports and (a.images == b.images).all()
    assert first_of_shuffle(micro_pairs, 10, seed=4).reports != a.reports
    positions = [micro_pairs.patient_ids.index(p) for p in a.patient_ids]
    assert positions == sorted(positions)  # kept in the original order
    assert first_of_shuffle(micro_pairs, 0, seed=3) is micro_pairs
    for bad in (-1, len(micro_pairs) + 1, True, 2.0):
        with pytest.raises(ValueError):
            first_of_shuffle(micro_pairs, bad, seed=0)
