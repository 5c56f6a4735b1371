"""Readers of the real pre-training datasets: MIMIC-CXR(-JPG) and Open-i / IU X-ray image-report pairs.

Each returns ``(list[ImageTextPair], skipped)``; the rules all readers share are in `cmitm_lib.data.real`,
how a MIMIC report becomes text in `cmitm_lib.data.report_sections`.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from .catalog import csv_rows, dataset_root, find_file, layout_error
from .ondisk import resolve_images
from .records import ImageTextPair
from .report_sections import findings_impression, squash


# --- MIMIC-CXR -----------------------------------------------------------------------------------

def read_mimic(root, *, seed=0, split_files=None, check_images=True, cache_dir=None,
               reports_root=None, split="train", views=("PA", "AP")) -> tuple[list[ImageTextPair], dict[str, int]]:
    """MIMIC-CXR-JPG image-report pairs of one official split ("train", "validate", "test", "all"),
    frontal views (PA/AP) by default (`views=None`: all). Reports come from `reports_root` (default:
    `root`), as extracted from mimic-cxr-reports.zip. `split_files`: a csv replacing
    mimic-cxr-2.0.0-split.csv. `seed` is unused (nothing random; kept for the uniform signature)."""
    if split not in ("train", "validate", "test", "all"):
        raise ValueError(f"unknown MIMIC split {split!r}; use train, validate, test or all")
    root = dataset_root("mimic", root)
    metadata = find_file("mimic", root, ["mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv"])
    if split_files is None:
        split_csv = find_file("mimic", root, ["mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-split.csv"])
    else:
        split_csv = find_file("mimic", Path(split_files).parent, [Path(split_files).name])
    reports = Path(reports_root).expanduser() if reports_root is not None else root
    reports = reports / "files" if (reports / "files").is_dir() else reports
    if not reports.is_dir() or not any(reports.glob("p1*")):
        raise layout_error("mimic", "the report folders (files/p10/...)", reports)
    if check_images and not (root / "files").is_dir():
        raise layout_error("mimic", "the image folder files/", root)
    split_of = {row["dicom_id"]: row["split"] for row in csv_rows(split_csv, ["dicom_id", "split"])}
    wanted = {v.upper() for v in views} if views is not None else None
    skipped = Counter()
    studies: dict[tuple[str, str], list[str]] = {}
    for row in csv_rows(metadata, ["dicom_id", "subject_id", "study_id", "ViewPosition"]):
        image_split = split_of.get(row["dicom_id"])
        if image_split is None:
            skipped["not in the split file"] += 1
        elif split != "all" and image_split != split:
            continue  # another split: not skipped, just not asked for
        elif wanted is not None and row["ViewPosition"].upper() not in wanted:
            skipped[f"view not {'/'.join(views)}"] += 1
        else:
            studies.setdefault((row["subject_id"], row["study_id"]), []).append(row["dicom_id"])
    pairs = []
    for (subject, study), dicom_ids in studies.items():
        study_path = f"p{subject[:2]}/p{subject}/s{study}"
        report_file = reports / f"{study_path}.txt"
        if not report_file.is_file():
            skipped["report missing (studies)"] += 1
            continue
        text = findings_impression(report_file.read_text(encoding="utf-8", errors="replace"))
        if not text:
            skipped["no usable report text (studies)"] += 1
            continue
        pairs += [ImageTextPair(str(root / "files" / study_path / f"{d}.jpg"), text, subject, f"s{study}")
                  for d in dicom_ids]
    if studies and skipped["report missing (studies)"] == len(studies):
        raise layout_error("mimic", f"the report of every study ({len(studies)}; if mimic-cxr-reports.zip "
                           "was extracted elsewhere, pass that folder as reports_root / --reports-root)", reports)
    [pairs] = resolve_images([pairs], root, check_images, cache_dir, skipped)
    return pairs, dict(skipped)


# --- Open-i / IU X-ray ---------------------------------------------------------------------------

def openi_sections(xml_file: Path) -> tuple[str, str, str, list[str]]:
    """(uId, FINDINGS, IMPRESSION, parent image ids) of one Open-i report XML."""
    try:
        tree = ET.parse(xml_file)
    except ET.ParseError as err:
        raise ValueError(f"unreadable report XML {xml_file}: {err}") from err
    texts = {el.get("Label", "").upper(): squash(el.text or "") for el in tree.iter("AbstractText")}
    uid = tree.find("uId")
    images = [el.get("id") for el in tree.iter("parentImage") if el.get("id")]
    report_id = uid.get("id") if uid is not None else xml_file.stem
    return report_id, texts.get("FINDINGS", ""), texts.get("IMPRESSION", ""), images


def read_openi(root, *, seed=0, split_files=None, check_images=True,
               cache_dir=None) -> tuple[list[ImageTextPair], dict[str, int]]:
    """Open-i / IU X-ray pairs: one pair per parent image of a report, text = FINDINGS + IMPRESSION
    (either alone when the other is empty). Patient = report number (file stem). All views (the XML
    names no view). `seed` and `split_files` are unused (no official split; uniform signature)."""
    root = dataset_root("openi", root)
    xml_dir = root / "ecgen-radiology"
    xml_files = sorted(xml_dir.glob("*.xml"), key=lambda p: (len(p.stem), p.stem)) if xml_dir.is_dir() else []
    if not xml_files:
        raise layout_error("openi", "the report XMLs ecgen-radiology/*.xml", root)
    image_dir = next((d for d in (root / "NLMCXR_png", root / "images") if d.is_dir()), root)
    if check_images and image_dir == root and not any(root.glob("*.png")):
        raise layout_error("openi", "the image folder NLMCXR_png/", root)
    skipped = Counter()
    pairs = []
    for xml_file in xml_files:
        uid, findings, impression, images = openi_sections(xml_file)
        text = squash(f"{findings} {impression}")
        if not text:
            skipped["no findings/impression (reports)"] += 1
        elif not images:
            skipped["no images (reports)"] += 1
        else:
            pairs += [ImageTextPair(str(image_dir / f"{i}.png"), text, xml_file.stem, uid) for i in images]
    [pairs] = resolve_images([pairs], root, check_images, cache_dir, skipped)
    return pairs, dict(skipped)
