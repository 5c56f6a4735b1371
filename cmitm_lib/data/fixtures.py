"""Tiny stand-ins for the real datasets, in their exact official file formats and folder layouts.

`make_fixture(dataset, root)` writes a few dozen small synthetic images and label / report files
under `root` and returns the folder to hand to the dataset's reader. Every report sentence is
made up here; no real patient data is involved. Used by the tests and by the data notebook when
no real data is available.
"""
from __future__ import annotations

import csv
import gzip
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from .catalog import NIH_CLASSES
from .real import DATASET_NAMES


def fake_xray(rng: np.random.Generator, height: int = 40, width: int = 48) -> np.ndarray:
    """A small uint8 chest-like picture: a bright body, two darker lungs, some noise."""
    y, x = np.mgrid[0:height, 0:width]
    y, x = y / height, x / width
    body = ((x - 0.5) / 0.45) ** 2 + ((y - 0.55) / 0.5) ** 2 < 1
    lungs = (((abs(x - 0.5) - 0.18) / 0.13) ** 2 + ((y - 0.5) / 0.3) ** 2) < 1
    image = 30 + 150 * body - 90 * lungs + rng.normal(0, 8, (height, width))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_image(path: str | os.PathLike, pixels: np.ndarray) -> None:
    """Save a uint8 / uint16 HxW array as png, jpg or dcm (chosen by the suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".dcm":
        write_dicom(path, pixels)
    else:
        Image.fromarray(pixels).save(path)


def write_dicom(path: str | os.PathLike, pixels: np.ndarray, patient_id: str = "anonymous", **elements) -> None:
    """Write an uncompressed single-frame grayscale DICOM; `elements` set extra attributes
    (e.g. PhotometricInterpretation="MONOCHROME1", RescaleSlope=2, WindowCenter=..., WindowWidth=...)."""
    uid = generate_uid(entropy_srcs=[str(path)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, uid
    ds.PatientID, ds.Modality, ds.BodyPartExamined = patient_id, "CR", "CHEST"
    bits = 16 if pixels.dtype == np.uint16 else 8
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    for name, value in elements.items():
        setattr(ds, name, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.getvalue().encode()))
    else:
        path.write_text(text.getvalue())


def _nih(root: Path, rng: np.random.Generator) -> None:
    # The v2020 header: its "OriginalImage[Width,Height]" really spans two csv columns.
    header = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
              "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]"]
    rows, n = [], 0
    for patient in range(1, 13):
        for follow_up in range(int(rng.integers(2, 4))):
            if n < len(NIH_CLASSES):  # every class appears at least once
                findings = [NIH_CLASSES[n]]
            elif rng.random() < 0.4:
                findings = []
            else:
                findings = list(rng.choice(NIH_CLASSES, size=int(rng.integers(1, 3)), replace=False))
            name = f"{patient:08d}_{follow_up:03d}.png"
            folder = "images_001" if patient <= 6 else "images_002"
            write_image(root / folder / "images" / name, fake_xray(rng))
            rows.append([name, "|".join(sorted(findings)) or "No Finding", follow_up, patient,
                         int(rng.integers(20, 90)), rng.choice(["M", "F"]), rng.choice(["PA", "AP"]),
                         48, 40, 0.143, 0.143])
            n += 1
    _write_csv(root / "Data_Entry_2017_v2020.csv", header, rows)


def _chexpert(root: Path, rng: np.random.Generator) -> None:
    base = root / "CheXpert-v1.0-small"
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum",
              "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia",
              "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices"]

    def rows_for(split: str, patients: range, values: list[str]) -> list[list]:
        rows = []
        for patient in patients:
            for study in range(1, int(rng.integers(2, 4))):
                views = ["view1_frontal"] + (["view2_lateral"] if rng.random() < 0.4 else [])
                for view in views:
                    rel = f"{split}/patient{patient:05d}/study{study}/{view}.jpg"
                    write_image(base / rel, fake_xray(rng))
                    frontal = view.endswith("frontal")
                    labels = {c: rng.choice(values) for c in header[5:]}
                    rows.append([f"CheXpert-v1.0-small/{rel}", rng.choice(["Female", "Male"]),
                                 int(rng.integers(20, 90)), "Frontal" if frontal else "Lateral",
                                 rng.choice(["AP", "PA"]) if frontal else "", *labels.values()])
        return rows

    train = rows_for("train", range(1, 21), ["1.0", "0.0", "-1.0", "", ""])
    valid = rows_for("valid", range(64541, 64545), ["1.0", "0.0"])
    _write_csv(base / "train.csv", header, train)
    _write_csv(base / "valid.csv", header, valid)


def _rsna(root: Path, rng: np.random.Generator) -> None:
    rows = []
    for i in range(16):
        patient = "-".join(f"{int(rng.integers(0, 16**w)):0{w}x}" for w in (8, 4, 4, 4, 12))  # a uuid
        write_dicom(root / "stage_2_train_images" / f"{patient}.dcm", fake_xray(rng), patient_id=patient)
        if i % 3 == 0:  # positives: one row per box
            for _ in range(int(rng.integers(1, 3))):
                rows.append([patient, *(float(v) for v in rng.integers(100, 600, 4)), 1])
        else:
            rows.append([patient, "", "", "", "", 0])
    _write_csv(root / "stage_2_train_labels.csv", ["patientId", "x", "y", "width", "height", "Target"], rows)


def _covidx(root: Path, rng: np.random.Generator) -> None:
    classes = ["normal", "pneumonia", "COVID-19"]
    for split, n_patients in (("train", 18), ("test", 6)):
        lines = []
        for patient in range(n_patients):
            label = classes[patient % 3]
            for k in range(1 + patient % 2):
                name = f"{split}-{label.lower()}-{patient}-{k}.{'png' if k == 0 else 'jpg'}"
                write_image(root / split / name, fake_xray(rng))
                lines.append(f"{split}{patient} {name} {label} {'rsna' if label != 'COVID-19' else 'cohen'}\n")
        (root / f"{split}.txt").write_text("".join(lines))


# Made-up MIMIC-style reports covering every section-extraction branch.
MIMIC_REPORTS = [
    "                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n \n INDICATION:  Cough.\n \n"
    " COMPARISON:  None.\n \n FINDINGS:\n \n Heart size is normal. Lungs are clear.\n \n"
    " IMPRESSION:\n \n No acute cardiopulmonary process.\n",
    "                                 FINAL REPORT\n INDICATION:  Fever.\n \n"
    " IMPRESSION:  Mild left basilar opacity, possibly atelectasis.\n",
    "                                 FINAL REPORT\n Findings :   Small right pleural effusion.  No pneumothorax.\n",
    "                                 FINAL REPORT\n COMPARISON:  Prior radiograph.\n \n"
    " Interval removal of the feeding tube. Lungs remain clear.\n",
    "                                 FINAL REPORT\n Portable chest radiograph shows stable cardiomegaly.\n",
    "                                 FINAL REPORT\n EXAMINATION:  CHEST PORTABLE\n",
]


def _mimic(root: Path, rng: np.random.Generator) -> None:
    meta_header = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
                   "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                   "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"]
    meta, split_rows, study_n = [], [], 0
    splits = ["train"] * 5 + ["validate", "test"]
    for s, subject in enumerate(range(10000032, 10000039)):
        for _ in range(1 + s % 2):
            study = 50000000 + 1111 * study_n
            folder = root / "files" / f"p{str(subject)[:2]}" / f"p{subject}"
            if study_n != 6:  # study 6 has no report file
                report = MIMIC_REPORTS[study_n % len(MIMIC_REPORTS)]
                (folder / f"s{study}.txt").parent.mkdir(parents=True, exist_ok=True)
                (folder / f"s{study}.txt").write_text(report)
            for view in ("PA", "LATERAL", "AP")[: 1 + study_n % 3]:
                dicom_id = "-".join(f"{int(v):08x}" for v in rng.integers(0, 2**31, 5))
                write_image(folder / f"s{study}" / f"{dicom_id}.jpg", fake_xray(rng))
                meta.append([dicom_id, subject, study, "CHEST (PA AND LAT)", view, 40, 48, 21800101, 120000.0,
                             "CHEST (PA AND LAT)", "postero-anterior" if view == "PA" else view.lower(), "Erect"])
                split_rows.append([dicom_id, study, subject, splits[s]])
            study_n += 1
    _write_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", meta_header, meta)
    _write_csv(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"], split_rows)


OPENI_XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation>
   <meta type="rr"/>
   <uId id="CXR{n}"/>
   <pmcId id="{n}"/>
   <docSource>CXR</docSource>
   <IUXRId id="{n}"/>
   <licenseType>open-access</licenseType>
   <MedlineCitation Owner="Indiana University" Status="supplied by publisher">
      <Article PubModel="Electronic">
         <ArticleTitle>Indiana University Chest X-ray Collection</ArticleTitle>
         <Abstract>
            <AbstractText Label="COMPARISON">None.</AbstractText>
            <AbstractText Label="INDICATION">Made-up indication</AbstractText>
            {findings}
            {impression}
         </Abstract>
      </Article>
   </MedlineCitation>
{images}</eCitation>
"""


def _abstract(label: str, text: str | None) -> str:
    """An <AbstractText> element; empty ones are self-closing, as in the real files."""
    return f'<AbstractText Label="{label}">{text}</AbstractText>' if text else f'<AbstractText Label="{label}"/>'


def _openi(root: Path, rng: np.random.Generator) -> None:
    reports = [  # (findings, impression, number of images)
        ("The heart is normal in size. The lungs are clear.", "No acute disease.", 2),
        ("Mild cardiomegaly. No effusion.", "Cardiomegaly.", 2),
        (None, "Stable chest.", 1),
        ("Low lung volumes.", None, 2),
        (None, None, 2),  # neither section: counted and skipped
        ("Clear lungs.", "Normal chest.", 0),  # no image: counted and skipped
    ]
    for n, (findings, impression, n_images) in enumerate(reports, 1):
        images = ""
        for k in range(n_images):
            image_id = f"CXR{n}_1_IM-{n:04d}-{k + 1}001"
            write_image(root / "NLMCXR_png" / f"{image_id}.png", fake_xray(rng))
            images += (f'   <parentImage id="{image_id}">\n'
                       '      <caption>Xray Chest PA and Lateral</caption>\n   </parentImage>\n')
        xml = OPENI_XML.format(n=n, images=images, findings=_abstract("FINDINGS", findings),
                               impression=_abstract("IMPRESSION", impression))
        (root / "ecgen-radiology").mkdir(parents=True, exist_ok=True)
        (root / "ecgen-radiology" / f"{n}.xml").write_text(xml)


CSV_REPORTS = [
    "FINDINGS: Heart size is normal. Lungs are clear.\nIMPRESSION: No acute disease.",
    "Small left pleural effusion. No pneumothorax.",
    "INDICATION: Cough.\n\nFINDINGS: Mild cardiomegaly. A small nodule in the right upper lobe.",
    "IMPRESSION: Stable chest, no effusion.",
]


def _csv(root: Path, rng: np.random.Generator) -> None:
    """pairs.csv and labels.csv (multi-label, with blanks and -1) over png, jpg and dcm images; one
    image given by its absolute path."""
    pairs, labels, n = [], [], 0
    for patient in range(1, 21):
        for k in range(1 + patient % 2):
            suffix = ("png", "jpg", "dcm")[n % 3]
            rel = f"images/p{patient:02d}_{k}.{suffix}"
            write_image(root / rel, fake_xray(rng))
            image = str(root / rel) if n == 4 else rel  # paths relative to root, or absolute
            pairs.append([image, CSV_REPORTS[n % len(CSV_REPORTS)], f"p{patient:02d}"])
            values = [("1", "0", "", "-1")[(n + c) % 4] for c in range(3)]
            labels.append([image, f"p{patient:02d}", *values])
            n += 1
    _write_csv(root / "pairs.csv", ["image", "report", "patient_id"], pairs)
    _write_csv(root / "labels.csv", ["image", "patient_id", "Effusion", "Nodule", "Cardiomegaly"], labels)


_BUILDERS = {"mimic": _mimic, "openi": _openi, "nih": _nih, "chexpert": _chexpert, "rsna": _rsna, "covidx": _covidx,
             "csv": _csv}


def make_fixture(dataset: str, root: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny official-layout copy of `dataset` under `root`; returns the reader's root."""
    if dataset not in _BUILDERS:
        raise ValueError(f"unknown dataset {dataset!r}; valid names: {', '.join(DATASET_NAMES)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _BUILDERS[dataset](root, np.random.default_rng(seed))
    return root
