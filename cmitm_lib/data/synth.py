"""SynthCXR: a seed-driven generator of chest-radiograph-like phantoms with paired reports.

Every case is drawn from `np.random.default_rng([seed, index, domain_code])`: acquisition,
anatomy, findings and report all come from that one generator, so a case is fully determined by
(seed, index, size, domain) and the same patient looks the same at every `size`.

The generator in four modules, each readable on its own:

* `synth_params`: the findings, domains and levels, and `draw_params` (what a case is made of);
* `synth_render`: `render`, the image drawn from those parameters (coordinate conventions there);
* `synth_report`: `compose_report`, the report written from them;
* this module: the cases themselves, `case_params`, `generate_case` and `generate_cases`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .synth_params import FINDINGS, check_domain, check_level, check_non_negative, check_size, draw_params
from .synth_render import render
from .synth_report import compose_report

# Also importable from here, for code that uses the generator as one module (saliency, tests, benchmarks):
from .synth_params import LEVELS  # noqa: F401
from .synth_render import patient_to_pixel  # noqa: F401


@dataclass
class Case:
    """One synthetic study: image, ground truth, report and what was drawn."""

    image: np.ndarray  # float32 (size, size) in [0, 1]
    labels: np.ndarray  # float32 (7,), finding present in the image, order FINDINGS
    report_labels: np.ndarray  # float32 (7,), 1 stated, 0 negated / not mentioned, -1 hedged
    report: str
    findings: dict  # finding name -> parameters, present findings only
    acquisition: dict
    patient_id: str


@dataclass
class SynthBatch:
    """Many cases stacked; images as uint8 to keep memory small."""

    images: np.ndarray  # uint8 (n, size, size)
    labels: np.ndarray  # float32 (n, 7)
    report_labels: np.ndarray  # float32 (n, 7)
    reports: list[str]
    patient_ids: list[str]
    findings: list[dict]


def _case_rng(seed: int, index: int, domain: str) -> np.random.Generator:
    """The one generator a case draws everything from."""
    check_non_negative("seed", seed)
    check_non_negative("index", index)
    return np.random.default_rng([seed, index, check_domain(domain)])


def case_params(seed: int, index: int, domain: str = "pretrain", level: str = "lesson") -> dict:
    """The parameters `generate_case` draws for a case, without rendering (cheap; size-independent)."""
    return draw_params(_case_rng(seed, index, domain), domain, level)


def generate_case(seed: int, index: int, size: int = 128, domain: str = "pretrain", level: str = "lesson") -> Case:
    """One deterministic case: same (seed, index, size, domain, level) -> same image and report."""
    check_size(size)
    rng = _case_rng(seed, index, domain)
    params = draw_params(rng, domain, level)
    report, report_labels = compose_report(rng, params)
    return Case(
        image=render(params, size),
        labels=params["labels"].copy(),
        report_labels=report_labels,
        report=report,
        findings=params["findings"],
        acquisition=params["acquisition"],
        patient_id=f"synth-{domain}-{seed}-{index:06d}",
    )


def generate_cases(n: int, seed: int, size: int = 128, domain: str = "pretrain", start: int = 0,
                   level: str = "lesson") -> SynthBatch:
    """Cases start .. start + n - 1 stacked into a SynthBatch (images as uint8)."""
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n={n!r} is not valid; use an integer >= 1")
    check_non_negative("start", start)
    check_size(size)
    check_domain(domain)
    check_level(level)
    images = np.empty((n, size, size), dtype=np.uint8)
    labels = np.empty((n, len(FINDINGS)), dtype=np.float32)
    report_labels = np.empty((n, len(FINDINGS)), dtype=np.float32)
    reports, patient_ids, findings = [], [], []
    for i in range(n):
        case = generate_case(seed, start + i, size, domain, level)
        images[i] = np.round(case.image * 255).astype(np.uint8)
        labels[i], report_labels[i] = case.labels, case.report_labels
        reports.append(case.report)
        patient_ids.append(case.patient_id)
        findings.append(case.findings)
    return SynthBatch(images, labels, report_labels, reports, patient_ids, findings)
