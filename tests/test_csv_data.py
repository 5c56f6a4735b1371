"""dataset="csv": your own pairs.csv / labels.csv, read like the public datasets, every bad row named."""
import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cmitm_lib.data import load_finetune, load_pretrain
from cmitm_lib.data.csvdata import read_csv_labels, read_csv_pairs, report_text
from cmitm_lib.data.fixtures import fake_xray, make_fixture, write_image
from cmitm_lib.data.real import DatasetLayoutError
from cmitm_lib.data.summary import main as summary_main


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def rows_of(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_fixture_reads_pairs_and_labels_with_seeded_patient_disjoint_splits(tmp_path):
    root = make_fixture("csv", tmp_path / "own")
    pairs, skipped = read_csv_pairs(root)
    assert len(pairs) == len(rows_of(root / "pairs.csv")) and skipped == {}
    assert {Path(p.image).suffix for p in pairs} == {".png", ".jpg", ".dcm"}
    assert all(Path(p.image).is_file() for p in pairs)  # relative and absolute paths
    assert pairs[0].report == "Heart size is normal. Lungs are clear. No acute disease."  # FINDINGS + IMPRESSION
    assert pairs[1].report == "Small left pleural effusion. No pneumothorax."  # no sections: the whole text
    held = {p.patient_id for p in pairs if p.split == "val"}
    assert held and not held & {p.patient_id for p in pairs if p.split == "train"}

    s = read_csv_labels(root)
    assert s.classes == ["Effusion", "Nodule", "Cardiomegaly"] and (s.task, s.metric) == ("multilabel", "auc")
    parts = [{r.patient_id for r in part} for part in (s.train, s.val, s.test)]
    assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert len(s.train) + len(s.val) + len(s.test) == len(rows_of(root / "labels.csv"))
    assert [r.image for r in read_csv_labels(root, seed=1).test] != [r.image for r in s.test]
    raw = {str(root / row["image"]) if not Path(row["image"]).is_absolute() else row["image"]: row
           for row in rows_of(root / "labels.csv")}
    zeros, ones = ({r.image: r.labels for r in p.train + p.val + p.test}
                   for p in (s, read_csv_labels(root, uncertain="ones")))
    for image, row in raw.items():
        expected = [{"1": 1.0, "0": 0.0, "": 0.0, "-1": None}[row[c]] for c in s.classes]
        assert zeros[image] == [0.0 if e is None else e for e in expected]
        assert ones[image] == [1.0 if e is None else e for e in expected]
    with pytest.raises(ValueError, match="'mgca' is defined for .* only.*use 'ones' or 'zeros'"):
        read_csv_labels(root, uncertain="mgca")


def test_report_text_sections_or_whole():
    assert report_text("INDICATION: cough.\nFINDINGS: Clear.\nIMPRESSION: Normal.") == "Clear. Normal."
    assert report_text("  Heart normal.\n\n Lungs clear. ") == "Heart normal. Lungs clear."
    assert report_text("COMPARISON: none.\nHeart normal.") == "COMPARISON: none. Heart normal."


def _small_csv(root: Path, n: int = 6, with_split: bool = True) -> list[list]:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        write_image(root / f"{i}.png", fake_xray(rng))
        rows.append([f"{i}.png", f"report {i} heart normal", f"p{i}"] + (["val" if i == 5 else "train"]
                                                                          if with_split else []))
    return rows


def test_split_column_is_honoured_and_val_is_held_out(tmp_path, micro_preset):
    rows = _small_csv(tmp_path)
    write_csv(tmp_path / "pairs.csv", ["image", "report", "patient_id", "split"], rows)
    train, held = load_pretrain("csv", str(tmp_path), micro_preset)
    assert len(train) == 5 and held.reports == ["report 5 heart normal"]
    labels = [[r[0], r[2], ("train", "train", "val", "test", "train", "test")[i], i % 2] for i, r in enumerate(rows)]
    write_csv(tmp_path / "labels.csv", ["image", "patient_id", "split", "Effusion"], labels)
    data = load_finetune("csv", str(tmp_path), micro_preset)
    assert (len(data.train), len(data.val), len(data.test)) == (3, 1, 2)
    assert data.test.labels.tolist() == [[1.0], [1.0]]


def test_multiclass_label_column(tmp_path):
    rows = _small_csv(tmp_path, with_split=False)
    names = ["normal", "pneumonia", "COVID-19"]
    write_csv(tmp_path / "labels.csv", ["image", "patient_id", "label"],
              [[r[0], r[2], names[i % 3]] for i, r in enumerate(rows)])
    s = read_csv_labels(tmp_path)
    assert s.classes == sorted(names) and (s.task, s.metric) == ("multiclass", "acc")
    assert all(sum(r.labels) == 1 for r in s.train + s.val + s.test)
    assert {r.patient_id for r in s.train + s.val + s.test} == {f"p{i}" for i in range(6)}


@pytest.mark.parametrize("header, good, bad, message", [
    (["image", "patient_id", "split", "Effusion"], ["0.png", "p0", "train", "1"], ["0.png", "p1", "training", "1"],
     r"labels.csv, row 3: unknown split 'training'; use one of train, val, test"),
    (["image", "Effusion"], ["0.png", "1"], ["0.png", "yes"],
     r"labels.csv, row 3, column 'Effusion': label value 'yes' is not 0, 1, -1 \(uncertain\) or blank"),
    (["image", "Effusion"], ["0.png", "1"], ["", "1"], r"labels.csv, row 3: the image cell is empty"),
    (["image", "label"], ["0.png", "normal"], ["0.png", ""], r"labels.csv, row 3: empty label"),
    (["patient_id", "Effusion"], ["p0", "1"], ["p1", "0"],
     r"labels.csv, row 1 \(the header\): missing column\(s\) \['image'\]"),
    (["image", "patient_id"], ["0.png", "p0"], ["0.png", "p1"], r"labels.csv, row 1 \(the header\): no class column"),
])
def test_bad_label_rows_are_named(tmp_path, header, good, bad, message):
    write_image(tmp_path / "0.png", fake_xray(np.random.default_rng(0)))
    write_csv(tmp_path / "labels.csv", header, [good, bad])
    with pytest.raises(ValueError, match=message):
        read_csv_labels(tmp_path)


def test_bad_pair_rows_are_named_skipped_and_counted(tmp_path):
    rows = _small_csv(tmp_path, with_split=False)
    rows[2][1] = "   "  # row 4: empty report
    rows[3][0] = "gone.png"  # row 5: image missing
    write_csv(tmp_path / "pairs.csv", ["image", "report", "patient_id"], rows)
    with pytest.warns(UserWarning) as record:
        pairs, skipped = read_csv_pairs(tmp_path)
    messages = " | ".join(str(w.message) for w in record)
    assert "1 row(s) skipped, empty report: rows 4" in messages
    assert "1 row(s) skipped, image missing on disk" in messages and "rows 5" in messages
    assert skipped == {"empty report": 1, "image missing": 1} and len(pairs) == 4
    write_csv(tmp_path / "pairs.csv", ["image", "report", "split"], [["0.png", "x", "test"]])
    with pytest.raises(ValueError, match=r"pairs.csv, row 2: unknown split 'test'; use one of train, val"):
        read_csv_pairs(tmp_path)
    write_csv(tmp_path / "pairs.csv", ["image", "text"], [["0.png", "x"]])
    with pytest.raises(ValueError, match=r"(?s)row 1 \(the header\): missing column\(s\) \['report'\].*image,report"):
        read_csv_pairs(tmp_path)


def test_missing_csv_prints_the_layout_and_an_example_header(tmp_path):
    with pytest.raises(DatasetLayoutError, match="pairs.csv is missing") as err:
        read_csv_pairs(tmp_path)
    assert "Expected layout" in str(err.value) and "image,report[,patient_id][,split]" in str(err.value)
    with pytest.raises(DatasetLayoutError, match="labels.csv is missing"):
        read_csv_labels(tmp_path)


@pytest.fixture
def micro_cli(monkeypatch, micro_preset, tmp_path):
    from cmitm_lib import cli

    monkeypatch.setattr(cli, "get_preset", lambda name: copy.deepcopy(micro_preset))
    monkeypatch.delenv("CMITM_DEBUG", raising=False)
    return cli


def test_csv_summary_cache_stage1_stage2_and_finetune_from_the_cli(tmp_path, micro_cli, capsys):
    from cmitm_lib.data.cache import build_cache

    root = make_fixture("csv", tmp_path / "own")
    assert summary_main(["--dataset", "csv", "--root", str(root), "--check-images"]) == 0
    out = capsys.readouterr().out
    assert "pairs.csv" in out and "labels.csv" in out and "images unreadable: 0" in out
    assert summary_main(["--dataset", "csv", "--root", str(root), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["pairs"]["pairs"] == 30 and summary["labels"]["total"]["images"] == 30
    counts = build_cache("csv", root, tmp_path / "cache", size=32, progress=False)
    assert counts == {"written": 30, "cached": 0, "missing": 0, "corrupt": 0}

    s1, s2, ft = tmp_path / "s1", tmp_path / "s2", tmp_path / "ft"
    common = ["--dataset", "csv", "--data-root", str(root), "--cache-dir", str(tmp_path / "cache")]
    micro_cli.main(["pretrain", "--stage", "1", *common, "--epochs", "1", "--batch-size", "4",
                    "--checkpoint-out", str(s1)])
    micro_cli.main(["pretrain", "--stage", "2", *common, "--epochs", "1", "--batch-size", "4",
                    "--checkpoint-in", str(s1), "--checkpoint-out", str(s2)])
    assert "heldout_retrieval" in json.loads((s2 / "config.json").read_text())["meta"]
    micro_cli.main(["finetune", *common, "--checkpoint-in", str(s2), "--fractions", "0.1", "1.0",
                    "--epochs", "1", "--out-dir", str(ft)])
    rows = json.loads((ft / "finetune_metrics.json").read_text())
    assert [r["metric"] for r in rows] == ["auc", "auc"] and rows[0]["n_train"] < rows[1]["n_train"]

    names = ["normal", "pneumonia", "COVID-19"]
    labels = rows_of(root / "labels.csv")
    write_csv(root / "labels.csv", ["image", "patient_id", "label"],
              [[r["image"], r["patient_id"], names[i % 3]] for i, r in enumerate(labels)])
    micro_cli.main(["finetune", "--dataset", "csv", "--data-root", str(root), "--fractions", "1.0",
                    "--epochs", "1", "--out-dir", str(ft)])
    rows = json.loads((ft / "finetune_metrics.json").read_text())
    assert rows[0]["metric"] == "acc" and 0.0 <= rows[0]["test_acc"] <= 1.0


def test_unreadable_csv_images_are_named_by_row(tmp_path, capsys):
    rows = _small_csv(tmp_path, with_split=False)
    (tmp_path / "2.png").write_text("not an image")  # row 4
    write_csv(tmp_path / "pairs.csv", ["image", "report", "patient_id"], rows)
    assert summary_main(["--dataset", "csv", "--root", str(tmp_path), "--check-images"]) == 0
    out = capsys.readouterr().out
    assert "images unreadable: 1" in out and f"row 4: {tmp_path / '2.png'}" in out
