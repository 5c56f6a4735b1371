"""Train-or-load (cmitm_lib.lessons) and the demo's closing line."""
import copy

import pytest

from cmitm_lib import lessons
from cmitm_lib.lessons import closing_line


@pytest.fixture
def small(micro_preset, monkeypatch, tmp_path):
    p = copy.deepcopy(micro_preset)
    p.data.n_pretrain, p.data.n_heldout = 64, 32
    p.stage1.batch_size = p.stage2.batch_size = 16
    p.stage1.epochs = p.stage2.epochs = 1
    monkeypatch.setattr(lessons, "get_preset", lambda name: copy.deepcopy(p))
    monkeypatch.setattr("cmitm_lib.data.cache_dir", lambda: tmp_path / "cache")
    return p


def test_stage2_trains_stage1_then_itself_when_missing_then_loads(small, tmp_path):
    said = []
    model, _, p, meta = lessons.load_or_pretrain(tmp_path / "runs" / "stage2", "stage2", "tiny", log=said.append)
    assert [s.split(":")[0] for s in said if s.startswith("no checkpoint")] == [
        f"no checkpoint at {tmp_path / 'runs' / 'stage1'}", f"no checkpoint at {tmp_path / 'runs' / 'stage2'}"]
    assert meta["stage"] == "stage2" and meta["epochs"] == 1 and meta["synth_level"] == "lesson"
    assert {"i2t_R@5", "t2i_R@5"} <= set(meta["retrieval"])
    for stage in ("stage1", "stage2"):
        assert (tmp_path / "runs" / stage / "model.safetensors").is_file()
    said.clear()
    again, _, _, meta2 = lessons.load_or_pretrain(tmp_path / "runs" / "stage2", "stage2", "tiny", log=said.append)
    assert len(said) == 1 and said[0].startswith(f"loaded {tmp_path / 'runs' / 'stage2'}")
    assert meta2["history"] == meta["history"]
    a, b = model.state_dict(), again.state_dict()
    assert all((a[k] == b[k]).all() for k in a)


def test_unknown_stage_is_refused(tmp_path):
    with pytest.raises(ValueError, match="stage='stage3' is not valid"):
        lessons.load_or_pretrain(tmp_path, "stage3")


def test_closing_line_says_which_init_won():
    rows = [{"init": "random", "metric": "auc", "test_auc": 0.70},
            {"init": "stage 1 only (MRM-like)", "metric": "auc", "test_auc": 0.74},
            {"init": "CMITM", "metric": "auc", "test_auc": 0.72}]
    line = closing_line(rows)
    assert line.startswith("CMITM init beats random init by +0.020") and "stage 1 only scores +0.020 above" in line
    rows[2]["test_auc"] = 0.65
    assert closing_line(rows).startswith("CMITM init does not beat random init (-0.050 test AUC)")
