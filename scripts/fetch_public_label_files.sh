#!/usr/bin/env bash
# Fetch real, public label files (no images) for the opt-in real-data tests and the data lesson.
#
# torchxrayvision 1.5.7 ships them inside its wheel: NIH Data_Entry_2017_v2020.csv, the RSNA
# stage_2_train_labels.csv, CheXpert(-small) train.csv and the 3,955 Open-i report XMLs.
# They are unpacked in the official layouts under DEST (default data/public_labels, git-ignored):
#
#   DEST/nih/Data_Entry_2017_v2020.csv
#   DEST/rsna/stage_2_train_labels.csv
#   DEST/chexpert/CheXpert-v1.0-small/train.csv      (no valid.csv in the wheel)
#   DEST/openi/ecgen-radiology/*.xml
#
# Usage: scripts/fetch_public_label_files.sh [DEST]
#        CMITM_REAL_LABELS=data/public_labels python -m pytest tests/test_real_data.py -k real
# The files keep their datasets' terms (see notebooks/00_data.ipynb); never commit them.
set -euo pipefail
DEST="${1:-data/public_labels}"
PYTHON="${PYTHON:-python3}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

"$PYTHON" -m pip download --no-deps --quiet -d "$TMP" torchxrayvision==1.5.7
"$PYTHON" - "$TMP/torchxrayvision-1.5.7-py3-none-any.whl" "$DEST" <<'PY'
import gzip
import io
import sys
import tarfile
import zipfile
from pathlib import Path

wheel, dest = zipfile.ZipFile(sys.argv[1]), Path(sys.argv[2])


def packaged(name: str) -> bytes:
    return wheel.read(f"torchxrayvision/data/{name}")


def write(relative: str, payload: bytes) -> None:
    path = dest / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)


write("nih/Data_Entry_2017_v2020.csv", gzip.decompress(packaged("Data_Entry_2017_v2020.csv.gz")))
write("chexpert/CheXpert-v1.0-small/train.csv", gzip.decompress(packaged("chexpert_train.csv.gz")))
rsna = zipfile.ZipFile(io.BytesIO(packaged("kaggle_stage_2_train_labels.csv.zip")))
write("rsna/stage_2_train_labels.csv", rsna.read("stage_2_train_labels.csv"))
with tarfile.open(fileobj=io.BytesIO(packaged("NLMCXR_reports.tgz"))) as tar:
    reports = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".xml")]
    for member in reports:
        write(f"openi/ecgen-radiology/{Path(member.name).name}", tar.extractfile(member).read())
print(f"{dest}: NIH, RSNA and CheXpert label files, {len(reports)} Open-i report XMLs")
PY
