"""A lesson runs on a real dataset's official layout by changing `dataset` and `data_root` only."""
import json
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


@pytest.mark.slow
def test_stage1_notebook_takes_reader_options_for_mimic_reports_elsewhere(tmp_path):
    """MIMIC-CXR's reports come in a separate zip; `data_options` tells the notebook where they are."""
    pm = pytest.importorskip("papermill")
    data, reports = make_fixture("mimic", tmp_path / "mimic"), tmp_path / "mimic-reports"
    for txt in data.glob("files/p*/p*/s*.txt"):
        target = reports / txt.relative_to(data)
        target.parent.mkdir(parents=True, exist_ok=True)
        txt.rename(target)
    params = {"dataset": "mimic", "data_root": str(data), "epochs": 1, "batch_size": 2, "n_show": 2,
              "out_dir": str(tmp_path / "runs"), "checkpoint_out": str(tmp_path / "stage1")}
    with pytest.raises(pm.PapermillExecutionError, match="reports_root"):  # without it: the expected layout
        pm.execute_notebook(str(ROOT / "notebooks" / "02_stage1.ipynb"), str(tmp_path / "no_reports.ipynb"),
                            cwd=str(ROOT), parameters=params, kernel_name="python3", progress_bar=False)
    pm.execute_notebook(
        str(ROOT / "notebooks" / "02_stage1.ipynb"), str(tmp_path / "02_mimic.ipynb"), cwd=str(ROOT),
        parameters={**params, "data_options": {"reports_root": str(reports)}}, kernel_name="python3",
        progress_bar=False)
    assert (tmp_path / "stage1" / "model.safetensors").is_file()


@pytest.mark.slow
def test_stage1_notebook_runs_on_a_csv_folder(tmp_path):
    """Your own collection: `-p dataset csv -p data_root DIR` with a pairs.csv over png / jpg / dcm files."""
    pm = pytest.importorskip("papermill")
    data = make_fixture("csv", tmp_path / "own")
    pm.execute_notebook(
        str(ROOT / "notebooks" / "02_stage1.ipynb"), str(tmp_path / "02_csv.ipynb"), cwd=str(ROOT),
        parameters={"dataset": "csv", "data_root": str(data), "epochs": 1, "batch_size": 4, "n_show": 2,
                    "out_dir": str(tmp_path / "runs"), "checkpoint_out": str(tmp_path / "stage1")},
        kernel_name="python3", progress_bar=False)
    config = json.loads((tmp_path / "stage1" / "config.json").read_text())
    assert config["meta"]["history"][0]["unreadable_images"] == []
