"""An unreadable image met during training is skipped, counted and listed, or stops the run on request."""
import copy
import json
from pathlib import Path

import numpy as np
import pytest

from cmitm_lib.data.datasets import LabelData, LabelDataset, UnreadableImageError, collate_labels
from cmitm_lib.data.fixtures import fake_xray, make_fixture, write_image
from cmitm_lib.data.summary import main as summary_main


def spoil(truncated: Path, not_an_image: Path) -> list[str]:
    """A PNG cut in half and a text file with an image's name, as a broken download leaves them."""
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    not_an_image.write_text("404 Not Found\n")
    return sorted([str(truncated), str(not_an_image)])


def test_label_dataset_replaces_an_unreadable_image_deterministically(tmp_path, micro_preset):
    rng = np.random.default_rng(0)
    paths = [tmp_path / f"{i}.png" for i in range(6)]
    for p in paths:
        write_image(p, fake_xray(rng))
    bad = spoil(paths[1], paths[4])
    labels = np.eye(6, dtype=np.float32)
    data = LabelData([str(p) for p in paths], labels)
    ds = LabelDataset(data, micro_preset.data, micro_preset.model, train=False, seed=3)
    x, y, skipped = ds[1]
    assert skipped[0] == str(paths[1]) and set(skipped) <= set(bad)
    assert int(y.argmax()) not in (1, 4)  # another image, with its own labels
    x2, y2, _ = LabelDataset(data, micro_preset.data, micro_preset.model, train=False, seed=3)[1]
    assert (x2 == x).all() and (y2 == y).all()  # the same replacement every time
    assert ds[0][2] == []
    _, _, batch_bad = collate_labels([ds[i] for i in range(6)])
    assert sorted(set(batch_bad)) == bad
    stop = LabelDataset(data, micro_preset.data, micro_preset.model, train=False, on_unreadable="stop")
    with pytest.raises(UnreadableImageError, match=r"unreadable image .*4\.png"):
        stop[4]
    with pytest.raises(ValueError, match="on_unreadable='later' is not valid"):
        LabelDataset(data, micro_preset.data, micro_preset.model, on_unreadable="later")


@pytest.fixture
def micro_cli(monkeypatch, micro_preset, tmp_path):
    from cmitm_lib import cli

    monkeypatch.setattr(cli, "get_preset", lambda name: copy.deepcopy(micro_preset))
    monkeypatch.setattr("cmitm_lib.data.cache_dir", lambda: tmp_path / "cache")
    monkeypatch.delenv("CMITM_DEBUG", raising=False)
    return cli


def test_finetune_on_nih_with_bad_files_finishes_and_lists_them(tmp_path, micro_cli, capsys, monkeypatch):
    root = make_fixture("nih", tmp_path / "nih")
    bad = spoil(root / "images_001" / "images" / "00000002_000.png", root / "images_002" / "images" / "00000009_001.png")
    assert summary_main(["--dataset", "nih", "--root", str(root), "--check-images"]) == 0
    out = capsys.readouterr().out
    assert "images missing on disk: 0" in out and "images unreadable: 2" in out
    assert all(path in out for path in bad)
    assert summary_main(["--dataset", "nih", "--root", str(root), "--check-images", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unreadable_images"] == bad

    ft = tmp_path / "ft"
    micro_cli.main(["finetune", "--dataset", "nih", "--data-root", str(root), "--fractions", "1.0", "--epochs", "1",
                    "--out-dir", str(ft)])
    rows = json.loads((ft / "finetune_metrics.json").read_text())
    assert rows[0]["unreadable_images"] == bad and np.isfinite(rows[0]["test_auc"])
    out = capsys.readouterr().out
    assert "skipped" in out and all(path in out for path in bad)
    assert "unreadable images skipped: 2" in out

    monkeypatch.setattr("sys.argv", ["cmitm", "finetune", "--dataset", "nih", "--data-root", str(root),
                                     "--fractions", "1.0", "--epochs", "1", "--out-dir", str(ft),
                                     "--stop-on-unreadable"])
    with pytest.raises(SystemExit) as exit_info:
        micro_cli.entry()
    message = str(exit_info.value)
    assert message.startswith("cmitm: error: unreadable image ") and "\n" not in message
    assert any(path in message for path in bad)


def test_stage1_on_openi_with_bad_files_finishes_and_lists_them(tmp_path, micro_cli, micro_preset, capsys,
                                                                monkeypatch):
    from cmitm_lib.data import load_pretrain

    root = make_fixture("openi", tmp_path / "openi")
    train, _ = load_pretrain("openi", str(root), micro_preset)
    bad = spoil(Path(train.images[0]), Path(train.images[-1]))
    assert summary_main(["--dataset", "openi", "--root", str(root), "--check-images"]) == 0
    assert "images unreadable: 2" in capsys.readouterr().out
    s1 = tmp_path / "s1"
    micro_cli.main(["pretrain", "--stage", "1", "--dataset", "openi", "--data-root", str(root), "--epochs", "1",
                    "--batch-size", "1", "--checkpoint-out", str(s1)])
    meta = json.loads((s1 / "config.json").read_text())["meta"]
    assert meta["history"][0]["unreadable_images"] == bad and meta["unreadable_images"] == bad
    out = capsys.readouterr().out
    assert "stage1 epoch 1: skipped 2 unreadable image(s)" in out and all(path in out for path in bad)

    monkeypatch.setattr("sys.argv", ["cmitm", "pretrain", "--stage", "1", "--dataset", "openi", "--data-root",
                                     str(root), "--epochs", "1", "--batch-size", "1", "--checkpoint-out",
                                     str(tmp_path / "s1b"), "--stop-on-unreadable", "--num-workers", "1"])
    with pytest.raises(SystemExit) as exit_info:
        micro_cli.entry()
    message = str(exit_info.value)
    assert message.startswith("cmitm: error: unreadable image ") and "\n" not in message
    assert any(path in message for path in bad)
