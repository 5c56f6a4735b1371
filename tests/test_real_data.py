"""Tests of the real-data layer on tiny generated copies of each dataset (official file formats and
layouts, made-up images and report text), plus opt-in checks on the real public label files."""
from __future__ import annotations

import csv
import gzip
import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cmitm_lib.data import real
from cmitm_lib.data.cache import build_cache
from cmitm_lib.data.fixtures import fake_xray, make_fixture, write_dicom
from cmitm_lib.data.images import ImageReadError, load_image, mirror_path
from cmitm_lib.data.catalog import CHEXPERT_CLASSES, NIH_CLASSES, DatasetLayoutError
from cmitm_lib.data.real import LABEL_DATASETS, PAIR_DATASETS
from cmitm_lib.data.records import ImageTextPair, LabeledImage, LabeledSplits
from cmitm_lib.data.report_sections import findings_impression
from cmitm_lib.data.splits import label_fraction, split_by_patient
from cmitm_lib.data.summary import main as summary_main
from cmitm_lib.data.summary import summarize

REPO = Path(__file__).resolve().parents[1]


def _patients(records) -> set[str]:
    return {r.patient_id for r in records}


def _assert_disjoint(splits: LabeledSplits) -> None:
    train, val, test = map(_patients, (splits.train, splits.val, splits.test))
    assert not (train & val) and not (train & test) and not (val & test)


# --- every reader on its fixture -----------------------------------------------------------------

@pytest.mark.parametrize("name", list(LABEL_DATASETS))
def test_label_readers_read_their_fixture(tmp_path, name):
    splits = LABEL_DATASETS[name](make_fixture(name, tmp_path))
    assert isinstance(splits, LabeledSplits) and splits.name == name
    assert splits.train and splits.val and splits.test
    assert "image missing" not in splits.skipped
    for r in splits.train + splits.val + splits.test:
        assert isinstance(r, LabeledImage) and os.path.isfile(r.image)
        assert len(r.labels) == len(splits.classes) and set(r.labels) <= {0.0, 1.0}
    if splits.task == "multiclass":
        assert all(sum(r.labels) == 1 for r in splits.train)
    _assert_disjoint(splits)


@pytest.mark.parametrize("name", list(PAIR_DATASETS))
def test_pair_readers_read_their_fixture(tmp_path, name):
    pairs, skipped = PAIR_DATASETS[name](make_fixture(name, tmp_path))
    assert pairs and all(isinstance(p, ImageTextPair) and p.report and os.path.isfile(p.image) for p in pairs)
    assert "image missing" not in skipped


def test_readers_are_deterministic_per_seed(tmp_path):
    root = make_fixture("nih", tmp_path)
    a, b, c = real.read_nih(root, seed=1), real.read_nih(root, seed=1), real.read_nih(root, seed=2)
    assert [r.image for r in a.test] == [r.image for r in b.test]
    assert [r.image for r in a.test] != [r.image for r in c.test]


# --- NIH -----------------------------------------------------------------------------------------

def _direct_nih_counts(csv_file: Path) -> Counter:
    counts = Counter()
    with open(csv_file) as f:
        for row in csv.DictReader(f):
            counts.update(x for x in row["Finding Labels"].split("|") if x != "No Finding")
    return counts


def test_nih_labels_equal_a_direct_count(tmp_path):
    root = make_fixture("nih", tmp_path)
    splits = real.read_nih(root)
    assert splits.classes == NIH_CLASSES and (splits.task, splits.metric) == ("multilabel", "auc")
    records = splits.train + splits.val + splits.test
    assert len(records) == 31
    got = {c: sum(r.labels[i] for r in records) for i, c in enumerate(NIH_CLASSES)}
    assert got == {c: _direct_nih_counts(root / "Data_Entry_2017_v2020.csv")[c] for c in NIH_CLASSES}


def test_nih_original_2017_file_with_trailing_commas(tmp_path):
    root = make_fixture("nih", tmp_path)
    lines = (root / "Data_Entry_2017_v2020.csv").read_text().splitlines()
    (root / "Data_Entry_2017_v2020.csv").unlink()
    (root / "Data_Entry_2017.csv").write_text("".join(f"{line},\n" for line in lines))
    assert len(real.read_nih(root).train) > 0


def test_nih_mrm_split_files_use_their_labels(tmp_path):
    root = make_fixture("nih", tmp_path / "nih")
    names = sorted(p.name for p in root.glob("images_*/images/*.png"))
    lists = tmp_path / "lists"
    lists.mkdir()
    for split, chunk in (("train", names[:20]), ("val", names[20:25]), ("test", names[25:])):
        (lists / f"{split}_list.txt").write_text("".join(f"{n} {' '.join(['1'] * 14)}\n" for n in chunk))
    splits = real.read_nih(root, split_files=lists)
    assert [len(splits.train), len(splits.val), len(splits.test)] == [20, 5, len(names) - 25]
    assert all(r.labels == [1.0] * 14 for r in splits.train)


def test_nih_official_split_lists(tmp_path):
    root = make_fixture("nih", tmp_path)
    names = sorted(p.name for p in root.glob("images_*/images/*.png"))
    test_names = [n for n in names if n.startswith(("00000001", "00000002"))]
    (root / "test_list.txt").write_text("".join(f"{n}\n" for n in test_names))
    (root / "train_val_list.txt").write_text("".join(f"{n}\n" for n in names if n not in test_names))
    splits = real.read_nih(root, split_files=root)
    assert sorted(Path(r.image).name for r in splits.test) == test_names
    assert len(splits.train) + len(splits.val) == len(names) - len(test_names) and splits.val
    _assert_disjoint(splits)


def test_missing_images_are_counted_never_silently_dropped(tmp_path):
    root = make_fixture("nih", tmp_path)
    gone = sorted(root.glob("images_001/images/*.png"))[:3]
    for path in gone:
        path.unlink()
    with pytest.warns(UserWarning, match="3 image"):
        dropped = real.read_nih(root)
    with pytest.warns(UserWarning, match="3 image"):
        kept = real.read_nih(root, check_images=False)
    assert dropped.skipped == {"image missing": 3} and kept.skipped == {"image missing (kept)": 3}
    n = lambda s: len(s.train) + len(s.val) + len(s.test)  # noqa: E731
    assert n(kept) == 31 and n(dropped) == 28


# --- CheXpert ------------------------------------------------------------------------------------

def test_chexpert_policies_views_and_splits(tmp_path):
    root = make_fixture("chexpert", tmp_path)
    base = root / "CheXpert-v1.0-small"
    rows = {r["Path"].split("/", 1)[1]: r for name in ("train.csv", "valid.csv")
            for r in csv.DictReader(open(base / name))}
    n_lateral = sum(r["Frontal/Lateral"] == "Lateral" for r in rows.values())
    for policy, uncertain in (("mgca", [1, 0, 0, 1, 1]), ("ones", [1] * 5), ("zeros", [0] * 5)):
        splits = real.read_chexpert(root, uncertain=policy)
        assert splits.skipped == {"lateral view": n_lateral}
        for r in splits.train + splits.val + splits.test:
            row = rows[os.path.relpath(r.image, base)]
            assert row["Frontal/Lateral"] == "Frontal"
            expected = [{"": 0.0, "0.0": 0.0, "1.0": 1.0, "-1.0": u}[row[c]]
                        for c, u in zip(CHEXPERT_CLASSES, uncertain)]
            assert r.labels == expected
    assert all("/valid/" in r.image for r in splits.test) and all("/train/" in r.image for r in splits.train)
    assert len(splits.val) >= 1 and len(splits.val) <= 0.2 * len(splits.train)
    _assert_disjoint(splits)
    # the CheXpert-v1.0-small folder itself also works as root; lateral views can be kept
    assert len(real.read_chexpert(base, frontal_only=False).test) == sum(p.startswith("valid/") for p in rows)
    with pytest.raises(ValueError, match="mgca"):
        real.read_chexpert(root, uncertain="maybe")


# --- RSNA ----------------------------------------------------------------------------------------

def test_rsna_one_label_per_patient_and_png_conversions(tmp_path):
    root = make_fixture("rsna", tmp_path)
    targets = {}
    for row in csv.DictReader(open(root / "stage_2_train_labels.csv")):
        targets[row["patientId"]] = max(targets.get(row["patientId"], 0), int(row["Target"]))
    splits = real.read_rsna(root)
    records = splits.train + splits.val + splits.test
    assert {r.patient_id: r.labels[0] for r in records} == targets and len(records) == len(targets)
    dcm = root / "stage_2_train_images" / f"{records[0].patient_id}.dcm"
    Image.fromarray(fake_xray(np.random.default_rng(0))).save(dcm.with_suffix(".png"))
    dcm.unlink()
    again = real.read_rsna(root)
    assert any(r.image.endswith(".png") for r in again.train + again.val + again.test)
    assert "image missing" not in again.skipped


# --- COVIDx --------------------------------------------------------------------------------------

def test_covidx_versions_and_formats(tmp_path):
    root = make_fixture("covidx", tmp_path)
    splits = real.read_covidx(root)
    assert splits.classes == ["normal", "pneumonia", "COVID-19"] and splits.metric == "acc"
    assert len(splits.test) == len((root / "test.txt").read_text().splitlines())
    # versioned names (train_COVIDx9A.txt) and the early 3-column format
    for split in ("train", "test"):
        lines = (root / f"{split}.txt").read_text().splitlines()
        (root / f"{split}.txt").unlink()
        (root / f"{split}_COVIDx9A.txt").write_text("".join(" ".join(ln.split()[:3]) + "\n" for ln in lines))
    assert len(real.read_covidx(root).test) == len(splits.test)
    (root / "train_COVIDx8A.txt").write_text((root / "train_COVIDx9A.txt").read_text())
    with pytest.raises(ValueError, match="several COVIDx train files"):
        real.read_covidx(root)
    (root / "train_COVIDx8A.txt").write_text("p1 a.png positive rsna\n")
    with pytest.raises(ValueError, match="binary COVIDx"):
        real.read_covidx(root, split_files={"train": root / "train_COVIDx8A.txt", "test": root / "test_COVIDx9A.txt"})


# --- MIMIC-CXR and section extraction ------------------------------------------------------------

def test_findings_impression_fallbacks():
    r = "FINAL REPORT\n FINDINGS:  Lungs clear.\n \n IMPRESSION:\n \n Normal.\n"
    assert findings_impression(r) == "Lungs clear. Normal."
    assert findings_impression(" INDICATION: x\n impression :  Only this.\n") == "Only this."
    assert findings_impression(" COMPARISON: none\n  Findings  : Effusion.\n") == "Effusion."
    assert findings_impression(" CONCLUSION: Edema.\n") == "Edema."
    last_paragraphs = " COMPARISON:  Prior.\n \n Tube removed.\n \n Lungs clear.\n"
    assert findings_impression(last_paragraphs) == "Tube removed. Lungs clear."
    assert findings_impression("     FINAL REPORT\n Stable cardiomegaly.\n") == "Stable cardiomegaly."
    assert findings_impression("     FINAL REPORT\n EXAMINATION:  CHEST PORTABLE\n") == ""


def test_mimic_pairs_splits_views_and_reports_root(tmp_path):
    root = make_fixture("mimic", tmp_path / "mimic")
    pairs, skipped = real.read_mimic(root)
    assert len(pairs) == 6 and len({p.study_id for p in pairs}) == 5
    assert skipped == {"view not PA/AP": 4, "no usable report text (studies)": 1, "report missing (studies)": 1}
    assert all(re.search(r"files/p10/p\d{8}/s\d{8}/[0-9a-f-]{44}\.jpg$", p.image) for p in pairs)
    assert len(real.read_mimic(root, split="validate")[0]) > 0
    assert len(real.read_mimic(root, split="all")[0]) > len(pairs)
    assert len(real.read_mimic(root, views=None)[0]) > len(pairs)
    # reports extracted elsewhere (mimic-cxr-reports.zip), gunzipped csv files
    reports = tmp_path / "reports"
    for txt in root.glob("files/p*/p*/s*.txt"):
        target = reports / "files" / txt.relative_to(root / "files")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(txt, target)
    for gz in root.glob("*.csv.gz"):
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    with pytest.raises(DatasetLayoutError):
        real.read_mimic(tmp_path / "mimic", reports_root=tmp_path / "nowhere")
    with pytest.raises(DatasetLayoutError, match=r"report of every study \(7; .*--reports-root"):
        real.read_mimic(root)  # the image folders are there, the reports are not: not 0 pairs in silence
    assert [p.report for p in real.read_mimic(root, reports_root=reports)[0]] == [p.report for p in pairs]
    # the loaders the CLI and notebooks use forward reader options (`--reports-root` etc.) and check them
    from cmitm_lib.config import get_preset
    from cmitm_lib.data import load_finetune, load_pretrain

    train, held = load_pretrain("mimic", str(root), get_preset("tiny"), reports_root=str(reports))
    assert sorted(train.reports + held.reports) == sorted(p.report for p in pairs)
    from cmitm_lib.data import _check_read

    with pytest.raises(ValueError, match=r"no training pairs were read from mimic at x \(skipped: a: 2\)"):
        _check_read("mimic", "x", "training pairs", 0, {"a": 2})
    with pytest.raises(ValueError, match="mimic reader takes no labels_file; its options: .*reports_root"):
        load_pretrain("mimic", str(root), get_preset("tiny"), labels_file="x.csv")
    with pytest.raises(ValueError, match="cache_dir apply to real datasets only"):
        load_finetune("synth", "", get_preset("tiny"), cache_dir="somewhere")
    with pytest.raises(ValueError, match="reports_root apply to real datasets only"):
        load_pretrain("synth", "", get_preset("tiny"), reports_root="somewhere")


# --- Open-i --------------------------------------------------------------------------------------

def test_openi_sections_patients_and_image_folders(tmp_path):
    root = make_fixture("openi", tmp_path)
    pairs, skipped = real.read_openi(root)
    assert skipped == {"no findings/impression (reports)": 1, "no images (reports)": 1}
    assert {p.patient_id for p in pairs} == {"1", "2", "3", "4"} and len(pairs) == 7
    assert {p.report for p in pairs if p.patient_id == "3"} == {"Stable chest."}
    (root / "NLMCXR_png").rename(root / "images")
    assert len(real.read_openi(root)[0]) == 7


# --- errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", real.DATASET_NAMES)
def test_missing_folder_or_label_file_shows_the_layout(tmp_path, name):
    with pytest.raises(DatasetLayoutError, match="Expected layout") as err:
        real.get_reader(name)(tmp_path / "absent")
    assert isinstance(err.value, FileNotFoundError) and "absent" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"missing \(looked in") as err:
        real.get_reader(name)(tmp_path / "empty")
    assert "\n    " in str(err.value)  # the indented tree


def test_missing_image_folder_raises_unless_only_labels_are_read(tmp_path):
    root = make_fixture("nih", tmp_path)
    for folder in root.glob("images_*"):
        shutil.rmtree(folder)
    with pytest.raises(DatasetLayoutError, match="image folders"):
        real.read_nih(root)
    with pytest.warns(UserWarning):
        assert real.read_nih(root, check_images=False).skipped == {"image missing (kept)": 31}


def test_unknown_dataset_names_list_the_valid_ones(tmp_path):
    for call in (lambda: real.get_reader("nihh"), lambda: summarize("nihh", tmp_path),
                 lambda: make_fixture("nihh", tmp_path)):
        with pytest.raises(ValueError, match="valid names: mimic, openi, nih, chexpert, rsna, covidx"):
            call()


# --- splits and fractions ------------------------------------------------------------------------

def _toy_records(n_patients=300, n_classes=3, seed=0) -> list[LabeledImage]:
    rng = np.random.default_rng(seed)
    records = []
    for p in range(n_patients):
        for _ in range(int(rng.integers(1, 4))):
            label = [0.0] * n_classes
            label[int(rng.choice(n_classes, p=[0.9, 0.09, 0.01]))] = 1.0
            records.append(LabeledImage(f"{p}-{len(records)}.png", label, str(p)))
    return records


def test_split_by_patient_is_disjoint_and_close_to_the_fractions():
    records = _toy_records()
    parts = split_by_patient(records, (0.7, 0.1, 0.2), seed=3)
    assert sum(map(len, parts)) == len(records)
    assert all(not (_patients(a) & _patients(b)) for i, a in enumerate(parts) for b in parts[i + 1:])
    assert [round(len(p) / len(records), 1) for p in parts] == [0.7, 0.1, 0.2]
    few = [LabeledImage(f"{p}.png", [1.0], str(p)) for p in range(5)]
    assert all(split_by_patient(few, (0.98, 0.01, 0.01), seed=0))  # every part gets a patient


def test_label_fractions_are_nested_and_keep_every_class():
    records = _toy_records()
    for seed in range(5):
        subsets = [label_fraction(records, f, seed) for f in (0.01, 0.1, 1.0)]
        ids = [{id(r) for r in s} for s in subsets]
        assert ids[0] <= ids[1] <= ids[2] and len(subsets[2]) == len(records)
        assert all(np.asarray([r.labels for r in s]).sum(0).min() >= 1 for s in subsets)
    assert len(label_fraction(records[:10], 0.01)) >= 1
    with pytest.raises(ValueError):
        label_fraction(records, 0)


# --- images --------------------------------------------------------------------------------------

def test_load_image_formats(tmp_path):
    ramp = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (4, 1))  # 4 x 16, 0 .. 240
    Image.fromarray(ramp).save(tmp_path / "a.png")
    Image.fromarray(np.stack([ramp] * 3, -1)).save(tmp_path / "rgb.png")
    Image.fromarray(ramp).save(tmp_path / "a.jpg", quality=95)
    Image.fromarray(ramp.astype(np.uint16) * 16 + 100).save(tmp_path / "a16.png")  # 12-bit data
    for name in ("a.png", "rgb.png"):
        image = load_image(tmp_path / name)
        assert image.dtype == np.float32 and image.shape == (4, 16)
        np.testing.assert_allclose(image, ramp / 255, atol=1e-6)
    np.testing.assert_allclose(load_image(tmp_path / "a.jpg"), ramp / 255, atol=0.05)
    a16 = load_image(tmp_path / "a16.png")
    assert a16.min() == 0 and a16.max() == 1 and a16.dtype == np.float32


def test_load_dicom_rescale_window_and_monochrome1(tmp_path):
    pixels = np.tile(np.arange(0, 1000, 100, dtype=np.uint16), (3, 1))  # 0 .. 900
    write_dicom(tmp_path / "plain.dcm", pixels)
    np.testing.assert_allclose(load_image(tmp_path / "plain.dcm")[0], np.arange(10) / 9, atol=1e-6)
    write_dicom(tmp_path / "inv.dcm", pixels, PhotometricInterpretation="MONOCHROME1")
    np.testing.assert_allclose(load_image(tmp_path / "inv.dcm")[0], 1 - np.arange(10) / 9, atol=1e-6)
    # stored 0..900 -> x2 - 100 -> -100..1700; window 800 +- 400 -> [400, 1200]
    write_dicom(tmp_path / "win.dcm", pixels, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=800, WindowWidth=800)
    expected = np.clip((np.arange(0, 1000, 100) * 2 - 100 - 400) / 800, 0, 1)
    np.testing.assert_allclose(load_image(tmp_path / "win.dcm")[0], expected, atol=1e-6)


def test_unreadable_and_missing_images_are_named(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match="bad.png"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(FileNotFoundError, match="gone.dcm"):
        load_image(tmp_path / "gone.dcm")


# --- cache ---------------------------------------------------------------------------------------

def test_cache_is_resumable_reports_problems_and_is_used(tmp_path):
    root = make_fixture("rsna", tmp_path / "rsna")
    out = tmp_path / "cache"
    dicoms = sorted((root / "stage_2_train_images").glob("*.dcm"))
    dicoms[0].unlink()
    dicoms[1].write_bytes(b"garbage")
    counts = build_cache("rsna", root, out, size=20, progress=False)
    assert counts == {"written": 14, "cached": 0, "missing": 1, "corrupt": 1}
    assert (out / "missing_images.txt").read_text().strip() == f"stage_2_train_images/{dicoms[0].name}"
    assert (out / "corrupt_images.txt").read_text().startswith(f"stage_2_train_images/{dicoms[1].name}\t")
    assert build_cache("rsna", root, out, size=20, progress=False)["cached"] == 14
    cached = Image.open(mirror_path(dicoms[2], root, out))
    assert min(cached.size) == 20 and cached.size[0] == 24 and cached.mode == "L"  # 48 x 40 -> 24 x 20
    assert load_image(dicoms[2], cache_dir=out).shape == (20, 24)
    dicoms[2].unlink()  # cached images no longer need their originals
    with pytest.warns(UserWarning, match="1 image"):
        splits = real.read_rsna(root, cache_dir=out)
    images = [r.image for r in splits.train + splits.val + splits.test]
    assert sum(i.startswith(str(out)) for i in images) == 14 and splits.skipped == {"image missing": 1}
    with pytest.raises(ValueError, match="size 20"):
        build_cache("rsna", root, out, size=64, progress=False)


# --- summary -------------------------------------------------------------------------------------

def test_summary_cli_json_and_missing_images(tmp_path, capsys):
    root = make_fixture("nih", tmp_path / "nih")
    shutil.rmtree(root / "images_002")
    assert summary_main(["--dataset", "nih", "--root", str(root), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["classes"] == NIH_CLASSES and summary["total"]["images"] == 31
    assert summary["missing_images"] == sum(1 for r in csv.DictReader(open(root / "Data_Entry_2017_v2020.csv"))
                                            if int(r["Patient ID"]) > 6)
    assert summary["total"]["positives"] == {c: _direct_nih_counts(root / "Data_Entry_2017_v2020.csv")[c]
                                             for c in NIH_CLASSES}
    assert summary_main(["--dataset", "mimic", "--root", str(make_fixture("mimic", tmp_path / "m"))]) == 0
    assert "pairs: 6" in capsys.readouterr().out
    assert summary_main(["--dataset", "rsna", "--root", str(tmp_path / "absent")]) == 2
    assert "Expected layout" in capsys.readouterr().err


# --- notebook ------------------------------------------------------------------------------------

def test_data_notebook_has_typed_parameters_and_no_outputs():
    nb = json.loads((REPO / "notebooks" / "00_data.ipynb").read_text())
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and tagged[0]["cell_type"] == "code"
    source = "".join(tagged[0]["source"])
    assert re.search(r'^dataset: str = "nih" +# ', source, re.M)
    assert re.search(r'^data_root: str = "" +# ', source, re.M)
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


# --- the real public label files (opt-in: CMITM_REAL_LABELS=<folder made by scripts/fetch_public_label_files.sh>)

REAL = Path(os.environ.get("CMITM_REAL_LABELS", "")) if os.environ.get("CMITM_REAL_LABELS") else None


def _real(*parts: str) -> Path:
    if REAL is None:
        pytest.skip("set CMITM_REAL_LABELS to the folder made by scripts/fetch_public_label_files.sh")
    path = REAL.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present (run scripts/fetch_public_label_files.sh)")
    return path


@pytest.fixture(scope="module")
def real_nih_summary():
    _real("nih", "Data_Entry_2017_v2020.csv")
    return summarize("nih", REAL / "nih")


def test_real_nih_summary_equals_a_direct_count(real_nih_summary):
    direct = _direct_nih_counts(REAL / "nih" / "Data_Entry_2017_v2020.csv")
    assert real_nih_summary["classes"] == NIH_CLASSES
    assert real_nih_summary["total"]["positives"] == {c: direct[c] for c in NIH_CLASSES}
    assert real_nih_summary["total"]["images"] == 112_120 == real_nih_summary["missing_images"]
    fractions = [real_nih_summary["splits"][s]["images"] / 112_120 for s in ("train", "val", "test")]
    np.testing.assert_allclose(fractions, [0.7, 0.1, 0.2], atol=0.01)


def test_real_nih_splits_are_patient_disjoint_and_fractions_nested():
    _real("nih", "Data_Entry_2017_v2020.csv")
    with pytest.warns(UserWarning):
        splits = real.read_nih(REAL / "nih", check_images=False)
    _assert_disjoint(splits)
    ids = [{r.image for r in label_fraction(splits.train, f, seed=0)} for f in (0.01, 0.1, 1.0)]
    assert ids[0] <= ids[1] <= ids[2]
    assert 0 <= len(ids[0]) - round(0.01 * len(splits.train)) <= len(NIH_CLASSES)  # + rare classes


def test_real_rsna_one_label_per_patient():
    labels = _real("rsna", "stage_2_train_labels.csv")
    with pytest.warns(UserWarning):
        splits = real.read_rsna(labels.parent, check_images=False)
    records = splits.train + splits.val + splits.test
    positive = {r["patientId"] for r in csv.DictReader(open(labels)) if r["Target"] == "1"}
    assert len(records) == 26_684 and sum(r.labels[0] for r in records) == len(positive)
    _assert_disjoint(splits)


def test_real_openi_sections():
    xml_dir = _real("openi", "ecgen-radiology")
    with pytest.warns(UserWarning):
        pairs, skipped = real.read_openi(xml_dir.parent, check_images=False)
    filled = re.compile(r'<AbstractText Label="(FINDINGS|IMPRESSION)">\s*\S')
    neither = sum(not filled.search(p.read_text()) for p in xml_dir.glob("*.xml"))
    assert len(list(xml_dir.glob("*.xml"))) == 3_955
    assert skipped["no findings/impression (reports)"] == neither
    assert len({p.patient_id for p in pairs}) + neither + skipped["no images (reports)"] == 3_955


def test_real_chexpert_labels(tmp_path):
    train_csv = _real("chexpert", "CheXpert-v1.0-small", "train.csv")
    base = tmp_path / "CheXpert-v1.0-small"  # the wheel has no valid.csv: an empty one stands in
    base.mkdir()
    (base / "train.csv").symlink_to(train_csv)
    (base / "valid.csv").write_text(train_csv.open().readline())
    with pytest.warns(UserWarning):
        splits = real.read_chexpert(tmp_path, check_images=False)
    assert len(splits.train) + len(splits.val) == 191_027 and splits.skipped["lateral view"] == 32_387
    assert len(splits.val) >= 5_000 and len(splits.val) < 5_050
    _assert_disjoint(splits)
