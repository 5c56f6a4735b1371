"""Datasets by name: the embedded SynthCXR and the real chest X-ray collections.

`load_pretrain(name, root, preset)` gives image-report pairs (train + held-out, for retrieval);
`load_finetune(name, root, preset)` gives labelled train / val / test splits.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import os
import zlib
from pathlib import Path

import numpy as np

from ..config import Preset, check_choice
from ..paths import cache_dir, resolve
from . import policy, synth, synth_params, synth_render, synth_report, tasks
from .datasets import FinetuneData, LabelData, PairData
from .real import LABEL_DATASETS, PAIR_DATASETS
from .synth import FINDINGS
from .tasks import SYNTH_TASKS  # the four embedded downstream tasks

PRETRAIN_DATASETS = ("synth", "mimic", "openi", "csv")
FINETUNE_DATASETS = (*SYNTH_TASKS, "nih", "chexpert", "rsna", "covidx", "csv")

GENERATOR_MODULES = (synth_params, synth_render, synth_report, synth)  # SynthCXR: what a case is drawn from
BENCHMARK_MODULES = (*GENERATOR_MODULES, tasks, policy)  # + how the embedded tasks pick and label cases


def _source_hash(*modules) -> str:
    return hashlib.sha1(b"".join(Path(m.__file__).read_bytes() for m in modules)).hexdigest()[:10]


@functools.lru_cache(maxsize=1)
def _synth_version() -> str:
    """Hash of the generator's source, read once per process (edits invalidate the cache)."""
    return _source_hash(*GENERATOR_MODULES)


@functools.lru_cache(maxsize=1)
def benchmark_version() -> str:
    """Hash of the generator's and the tasks' source: what an embedded-benchmark result was made from."""
    return _source_hash(*BENCHMARK_MODULES)


def _check_synth_size(n: int) -> None:
    if n < 1:
        raise ValueError(f"the preset asks for {n} SynthCXR cases; dataset='synth' needs the preset's data sizes "
                         "(n_pretrain, n_heldout, n_finetune) set, as the tiny preset has. The paper preset is "
                         "sized for real data: use preset='tiny' with synth, or a real dataset with preset='paper'")


def _cached(name: str, make) -> dict:
    """The arrays of ``<cache_dir>/<name>.npz``, made by ``make()`` and saved there first when missing.
    The one on-disk cache of SynthCXR cases; ``name`` holds the generator's version, so edits invalidate it."""
    path = cache_dir() / f"{name}.npz"
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        return {key: z[key] for key in z.files}
    arrays = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")  # one writer per process (DDP ranks)
    np.savez(tmp, **{key: np.asarray(value) for key, value in arrays.items()})
    tmp.replace(path)
    return arrays


def _synth_batch(n: int, seed: int, size: int, domain: str, start: int, level: str = "lesson"):
    """SynthCXR cases start .. start + n - 1: images, labels, reports, patient ids (cached on disk)."""
    _check_synth_size(n)

    def make() -> dict:
        b = synth.generate_cases(n, seed=seed, size=size, domain=domain, start=start, level=level)
        return {"images": b.images, "labels": b.labels, "reports": b.reports, "patient_ids": b.patient_ids}

    z = _cached(f"synth_{level}_{domain}_{seed}_{start}_{n}_{size}_{_synth_version()}", make)
    return z["images"], z["labels"], list(z["reports"]), list(z["patient_ids"])


def load_pretrain(name: str, root: str, preset: Preset, seed: int = 0, **options) -> tuple[PairData, PairData]:
    """(train pairs, held-out pairs). ``options`` go to a real dataset's reader (`data.real`), e.g.
    ``cache_dir`` (resized copies, `cmitm data cache`), ``reports_root`` (MIMIC), ``split_files``."""
    check_choice("dataset", name, PRETRAIN_DATASETS)
    d = preset.data
    if name == "synth":
        _no_options_for_synth(name, options)
        imgs, _, reports, pids = _synth_batch(d.n_pretrain, seed, d.synth_size, "pretrain", 0, d.synth_level)
        h_imgs, _, h_reports, h_pids = _synth_batch(d.n_heldout, seed, d.synth_size, "pretrain", d.n_pretrain,
                                                    d.synth_level)
        return PairData(imgs, reports, pids), PairData(h_imgs, h_reports, h_pids)
    return _real_pairs(name, root, seed, options)


def load_pretrain_labels(preset: Preset) -> FinetuneData:
    """The embedded pre-training images with their image-truth labels (the 7 findings, multi-label):
    the labels SynthCXR knows and MIMIC-CXR's reports only hint at. Train = the pre-training pairs'
    images; val and test are both the held-out pairs' images. For the benchmark's supervised
    reference only (`lab.recipes.RECIPES["supervised"]`); CMITM never sees these labels."""
    d = preset.data
    imgs, labels, _, _ = _synth_batch(d.n_pretrain, 0, d.synth_size, "pretrain", 0, d.synth_level)
    h_imgs, h_labels, _, _ = _synth_batch(d.n_heldout, 0, d.synth_size, "pretrain", d.n_pretrain, d.synth_level)
    held = LabelData(h_imgs, h_labels.astype(np.float32))
    return FinetuneData("synth-pretrain", list(FINDINGS), "multilabel", "auc",
                        LabelData(imgs, labels.astype(np.float32)), held, held)


def load_finetune(name: str, root: str, preset: Preset, seed: int = 0, **options) -> FinetuneData:
    """Train / val / test of a downstream task; ``options`` as for `load_pretrain`."""
    check_choice("dataset", name, FINETUNE_DATASETS)
    if name in SYNTH_TASKS:
        _no_options_for_synth(name, options)
        return _synth_task(name, preset, seed)
    return _real_labels(name, root, seed, options)


def _no_options_for_synth(name: str, options: dict) -> None:
    if options:
        raise ValueError(f"{', '.join(options)} apply to real datasets only; the embedded {name} data is "
                         f"generated, not read: drop them")


def _read(readers: dict, name: str, root: str, seed: int, options: dict):
    """Call a real dataset's reader; options it does not take are named with the ones it does."""
    if not root:
        raise ValueError(f"dataset={name!r} needs data_root=<folder with the official files> (--data-root); "
                         f"see data/README.md")
    reader = readers[name]
    takes = [k for k in inspect.signature(reader).parameters if k not in ("root", "seed")]
    unknown = [k for k in options if k not in takes]
    if unknown:
        raise ValueError(f"the {name} reader takes no {', '.join(unknown)}; its options: {', '.join(takes)}")
    return reader(str(resolve(root)), seed=seed, **options)


def _synth_task(name: str, preset: Preset, seed: int) -> FinetuneData:
    """One of the four embedded downstream tasks (data/tasks.py), from the downstream domain."""
    d = preset.data
    classes, task, metric = tasks.TASK_INFO[name]
    for n in d.n_finetune:
        _check_synth_size(n)
    if name in tasks.SELECTED:
        splits, counts = tasks.SELECTED[name](seed, d.n_finetune, d.synth_level)
        print(f"[{name}] scanned {counts['scanned']} downstream studies, excluded "
              f"{counts['excluded (other findings)']} with findings outside the task's classes")
        parts = []
        for idx in splits:
            images, labels = _synth_cases(idx, seed, d.synth_size, d.synth_level)
            parts.append(LabelData(images, _task_labels(name, classes, labels)))
        return FinetuneData(name, classes, task, metric, *parts)
    parts, start = [], 0
    for split, n in zip(("train", "val", "test"), d.n_finetune):
        images, labels, _, _ = _synth_batch(n, seed, d.synth_size, "downstream", start, d.synth_level)
        if name == "synth-chexpert" and split == "train":  # labels read from the reports, U-policy
            labels = np.stack([tasks.chexpert_labels(tasks.report_labels(
                tasks.case_params(seed, i, "downstream", d.synth_level))) for i in range(start, start + n)])
        else:
            labels = _task_labels(name, classes, labels)
        parts.append(LabelData(images, labels))
        start += n
    return FinetuneData(name, classes, task, metric, *parts)


def _task_labels(name: str, classes: list[str], labels: np.ndarray) -> np.ndarray:
    """A task's labels from (N, 7) image-truth labels: synth-covidx's classes one-hot, the others' findings."""
    if name == "synth-covidx":
        return np.eye(len(classes), dtype=np.float32)[[tasks.covidx_class(row) for row in labels]]
    return tasks.image_columns(labels, classes)


def _synth_cases(indices: np.ndarray, seed: int, size: int, level: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8) and image labels of downstream cases at arbitrary indices, cached on disk."""
    key = hashlib.sha1(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()[:10]

    def make() -> dict:
        cases = [synth.generate_case(seed, int(i), size, "downstream", level) for i in indices]
        return {"images": np.stack([np.round(c.image * 255).astype(np.uint8) for c in cases]),
                "labels": np.stack([c.labels for c in cases])}

    z = _cached(f"synth_cases_{level}_{seed}_{len(indices)}_{key}_{size}_{_synth_version()}", make)
    return z["images"], z["labels"]


def _heldout(patient_id: str, fraction: float = 0.05) -> bool:
    """Deterministic patient-level held-out split (stable across runs and machines)."""
    return zlib.crc32(patient_id.encode()) % 1000 < fraction * 1000


def _check_read(name: str, root: str, what: str, n: int, skipped: dict) -> None:
    """Print what a reader skipped; fail when nothing usable was read."""
    counts = ", ".join(f"{k}: {v}" for k, v in skipped.items())
    if counts:
        print(f"[{name}] skipped: {counts}")
    if n == 0:
        raise ValueError(f"no {what} were read from {name} at {root} (skipped: {counts or 'nothing'}); check the "
                         f"folder against the layout in data/README.md")


def _real_pairs(name: str, root: str, seed: int, options: dict) -> tuple[PairData, PairData]:
    pairs, skipped = _read(PAIR_DATASETS, name, root, seed, options)
    split = [p.split == "val" if p.split else _heldout(p.patient_id) for p in pairs]  # csv: its own split
    train = [p for p, h in zip(pairs, split) if not h]
    held = [p for p, h in zip(pairs, split) if h]
    _check_read(name, root, "training pairs", len(train), skipped)

    def to_data(ps):
        return PairData([p.image for p in ps], [p.report for p in ps], [p.patient_id for p in ps])

    return to_data(train), to_data(held)


def _real_labels(name: str, root: str, seed: int, options: dict) -> FinetuneData:
    s = _read(LABEL_DATASETS, name, root, seed, options)
    _check_read(name, root, "training images", len(s.train), s.skipped)

    def to_data(records):
        return LabelData([r.image for r in records], np.array([r.labels for r in records], dtype=np.float32))

    return FinetuneData(s.name, s.classes, s.task, s.metric, to_data(s.train), to_data(s.val), to_data(s.test))
