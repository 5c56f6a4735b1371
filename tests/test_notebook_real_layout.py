"""A lesson runs on a real dataset's official layout by changing `dataset` and `data_root` only."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cmitm_lib.data.fixtures import make_fixture

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_stage1_notebook_runs_on_an_openi_fixture(tmp_path):
    pm = pytest.importorskip("papermill")
    data = tmp_path / "openi"
    make_fixture("openi", data)
    out = tmp_path / "02_openi.ipynb"
    pm.execute_notebook(
        str(ROOT / "notebooks" / "02_stage1.ipynb"), str(out), cwd=str(ROOT),
        parameters={"dataset": "openi", "data_root": str(data), "epochs": 1, "batch_size": 2, "n_show": 2,
                    "out_dir": str(tmp_path / "runs"), "checkpoint_out": str(tmp_path / "stage1")},
        kernel_name="python3", progress_bar=False)
    assert (tmp_path / "stage1" / "model.safetensors").is_file()
