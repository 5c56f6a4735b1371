"""SynthCXR: determinism, image/report/label consistency, domain shift, prevalence, arguments."""
from __future__ import annotations

import re

import numpy as np
import pytest

from cmitm_lib.data import synth
from cmitm_lib.data.synth import FINDINGS, generate_case, generate_cases
from cmitm_lib.data.synth_render import patient_coords

# An independent reading of the report text: which finding a sentence talks about and how.
TERMS = {
    "cardiomegaly": {"cardiomegaly", "heart", "cardiac", "cardiomediastinal"},
    "effusion": {"effusion", "effusions", "costophrenic"},
    "consolidation": {"consolidation", "pneumonia", "airspace"},
    "pneumothorax": {"pneumothorax"},
    "nodule": {"nodule", "nodules", "nodular"},
    "edema": {"edema", "interstitial", "perihilar", "vasculature"},
    "atelectasis": {"atelectasis"},
}
HEDGE_CUES = ("possible", "possibly", "cannot", "may", "questionable")
NEGATION_CUES = ("no", "not", "without", "normal", "clear", "sharp")
LUNG_FINDINGS = ("consolidation", "edema", "nodule", "atelectasis")


def read_sentences(report: str) -> list[tuple[str, str, int]]:
    """(sentence, finding, polarity) for every finding term found; polarity 1, 0 negated, -1 hedged."""
    body = report.replace("FINDINGS:", "").replace("IMPRESSION:", "")
    out = []
    for sentence in filter(None, (s.strip() for s in body.split("."))):
        words = set(re.findall(r"[a-z]+", sentence.lower()))
        polarity = -1 if words & set(HEDGE_CUES) else 0 if words & set(NEGATION_CUES) else 1
        out.extend((sentence, name, polarity) for name, terms in TERMS.items() if words & terms)
    return out


@pytest.fixture(scope="module")
def cases() -> list[synth.Case]:
    return [generate_case(7, i, size=32) for i in range(400)]


def params_with(name: str, hedged: bool = False, level: str = "lesson") -> dict:
    """Parameters of the first pretrain case (seed 0) that has `name` present and stated."""
    k = FINDINGS.index(name)
    for index in range(5000):
        params = synth.draw_params(np.random.default_rng([0, index, 0]), "pretrain", level)
        if name in params["findings"] and params["hedged"][k] == hedged:
            return params
    raise AssertionError(f"no case with {name}")


def without(params: dict, name: str) -> dict:
    return {**params, "findings": {k: v for k, v in params["findings"].items() if k != name}}


# ---------------------------------------------------------------- determinism


def test_same_arguments_give_identical_case():
    a, b = generate_case(3, 11, 64, "downstream"), generate_case(3, 11, 64, "downstream")
    assert a.image.tobytes() == b.image.tobytes()
    assert a.report == b.report and a.patient_id == b.patient_id
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.report_labels, b.report_labels)


def test_seed_index_and_domain_change_the_case():
    base = generate_case(3, 11, 64)
    for other in (generate_case(4, 11, 64), generate_case(3, 12, 64), generate_case(3, 11, 64, "downstream")):
        assert not np.array_equal(base.image, other.image)
        assert base.patient_id != other.patient_id
    reports = {generate_case(seed, 0, 32).report for seed in range(10)}
    assert len(reports) > 5


def test_same_patient_at_every_size():
    small, large = generate_case(5, 2, 32), generate_case(5, 2, 128)
    assert small.report == large.report
    np.testing.assert_array_equal(small.labels, large.labels)
    downsampled = large.image.reshape(32, 4, 32, 4).mean((1, 3))
    assert np.corrcoef(downsampled.ravel(), small.image.ravel())[0, 1] > 0.9


def test_batch_matches_single_cases():
    batch = generate_cases(3, seed=2, size=48, domain="downstream", start=10)
    assert batch.images.shape == (3, 48, 48) and batch.images.dtype == np.uint8
    assert batch.labels.shape == batch.report_labels.shape == (3, 7)
    for i in range(3):
        case = generate_case(2, 10 + i, 48, "downstream")
        np.testing.assert_array_equal(batch.images[i], np.round(case.image * 255).astype(np.uint8))
        assert batch.reports[i] == case.report and batch.patient_ids[i] == case.patient_id
        assert batch.findings[i] == case.findings
        np.testing.assert_array_equal(batch.report_labels[i], case.report_labels)


# ---------------------------------------------------------------- labels and report


def test_findings_dict_matches_labels(cases):
    for case in cases:
        present = {name for name, y in zip(FINDINGS, case.labels) if y == 1}
        assert set(case.findings) == present


def test_report_labels_follow_labels(cases):
    for case in cases:
        assert set(np.unique(case.report_labels)) <= {-1.0, 0.0, 1.0}
        stated = case.report_labels == 1
        assert np.all(case.labels[stated] == 1)
        assert np.all(case.report_labels[case.labels == 1] != 0), case.report  # present -> mentioned


def test_report_text_agrees_with_labels(cases):
    for case in cases:
        sentences = read_sentences(case.report)
        for sentence, name, polarity in sentences:
            k = FINDINGS.index(name)
            if polarity == -1:
                assert case.report_labels[k] == -1, (sentence, case.report)
            elif polarity == 0:
                assert case.labels[k] == 0 and case.report_labels[k] == 0, (sentence, case.report)
            else:
                assert case.labels[k] == 1 and case.report_labels[k] == 1, (sentence, case.report)
        for k, name in enumerate(FINDINGS):
            if case.report_labels[k] != 0:
                wanted = 1 if case.report_labels[k] == 1 else -1
                assert (name, wanted) in {(n, p) for _, n, p in sentences}, (name, case.report)
        if "lungs are clear" in case.report.lower():
            assert not any(case.report_labels[FINDINGS.index(n)] for n in LUNG_FINDINGS), case.report


def test_hedging_happens_for_present_and_absent_findings(cases):
    labels = np.stack([c.labels for c in cases])
    report_labels = np.stack([c.report_labels for c in cases])
    hedged = report_labels == -1
    assert hedged[labels == 1].any() and hedged[labels == 0].any()
    assert 0.005 < hedged.mean() < 0.06


def test_report_carries_details_beyond_the_label(cases):
    detail = {  # finding -> parameters a stated finding's sentence must spell out
        "cardiomegaly": ("severity",),
        "effusion": ("side", "size"),
        "consolidation": ("lobe",),
        "pneumothorax": ("side", "size"),
        "nodule": ("side", "zone"),
        "edema": ("severity",),
        "atelectasis": ("side",),
    }
    for case in cases:
        text = case.report.lower()
        for name, params in case.findings.items():
            assert params.get("side", "") in text, (name, case.report)  # hedged ones too
            if case.report_labels[FINDINGS.index(name)] == 1:
                for key in detail[name]:
                    assert params[key] in text, (name, key, case.report)
                if name == "nodule":
                    assert f"{params['size_mm']} mm" in text, case.report


def test_reports_are_short_ascii_and_varied(cases):
    for case in cases:
        assert case.report.startswith("FINDINGS: ") and " IMPRESSION: " in case.report
        assert case.report.isascii()
        assert len(case.report.split()) <= 60  # MAX_REPORT_WORDS is a target; many findings may pass it
    normal = {c.report for c in cases if not c.labels.any() and not c.report_labels.any()}
    assert len(normal) > 20


# ---------------------------------------------------------------- images


@pytest.mark.parametrize("size", [32, 64, 128])
def test_image_shape_dtype_range(size):
    image = generate_case(1, 4, size).image
    assert image.shape == (size, size) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.1


def test_patient_to_pixel_inverts_patient_coords():
    acquisition = generate_case(0, 9, 64, "downstream").acquisition
    u, v = patient_coords(64, acquisition)
    row, col = synth.patient_to_pixel(float(u[40, 20]), float(v[40, 20]), acquisition, 64)
    assert abs(row - 40) < 1e-3 and abs(col - 20) < 1e-3


@pytest.mark.parametrize("name", FINDINGS)
def test_finding_changes_pixels_where_it_is(name):
    params = params_with(name)
    diff = np.abs(synth.render(params, 64) - synth.render(without(params, name), 64))
    assert diff.max() > 0.02
    row, col = np.unravel_index(diff.argmax(), diff.shape)
    finding = params["findings"][name]
    if "centre" in finding:
        centre = synth.patient_to_pixel(*finding["centre"], params["acquisition"], 64)
        assert np.hypot(row - centre[0], col - centre[1]) < 8
    elif finding.get("side") in ("right", "left"):
        assert (col < 32) == (finding["side"] == "right")  # patient right is the image left


def finding_change(name: str, level: str, n: int = 12) -> float:
    """Mean over n cases of the summed |change| a stated finding makes to its 64-px film."""
    k, changes = FINDINGS.index(name), []
    for index in range(3000):
        params = synth.draw_params(np.random.default_rng([0, index, 0]), "pretrain", level)
        if name in params["findings"] and not params["hedged"][k]:
            changes.append(np.abs(synth.render(params, 64) - synth.render(without(params, name), 64)).sum())
        if len(changes) == n:
            return float(np.mean(changes))
    raise AssertionError(f"fewer than {n} cases with {name} at level {level}")


@pytest.mark.parametrize("name", FINDINGS)
def test_lesson_level_findings_change_the_film_more_than_subtle(name):
    assert finding_change(name, "lesson") > 1.5 * finding_change(name, "subtle")


def test_unknown_level_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="level='easy' is not valid.*lesson.*subtle"):
        generate_case(0, 0, level="easy")


def test_bigger_findings_change_more_pixels():
    params = params_with("effusion")
    base = synth.render(without(params, "effusion"), 64)

    def change(height):
        effusion = {**params["findings"]["effusion"], "height": height}
        edited = {**params, "findings": {**params["findings"], "effusion": effusion}}
        return np.abs(synth.render(edited, 64) - base).sum()

    assert change(0.06) < change(0.18) < change(0.40)


def test_cardiomegaly_enlarges_the_heart():
    params = params_with("cardiomegaly")
    assert params["findings"]["cardiomegaly"]["ctr"] > 0.53 > params["anatomy"]["ctr"]
    bright = synth.render(params, 64) > synth.render(without(params, "cardiomegaly"), 64) + 0.03
    assert bright.sum() > 10


# ---------------------------------------------------------------- domain shift and prevalence


def high_pass_std(images: np.ndarray) -> float:
    """Pixel noise estimate from the difference between horizontal neighbours."""
    return float(np.diff(images.astype(np.float32), axis=-1).std() / np.sqrt(2))


def test_domains_differ_in_exposure_and_noise():
    pre = generate_cases(150, seed=1, size=64, domain="pretrain")
    down = generate_cases(150, seed=1, size=64, domain="downstream")
    corner = np.s_[:, :6, :6]  # air above the shoulders: lighter (greyer) on under-exposed films
    assert down.images[corner].mean() > pre.images[corner].mean() + 10
    abdomen = np.s_[:, 56:63, 10:22]  # flat soft tissue under the right hemidiaphragm
    assert high_pass_std(down.images[abdomen]) > 1.1 * high_pass_std(pre.images[abdomen])
    pre_acq = [generate_case(1, i, 32, "pretrain").acquisition for i in range(150)]
    down_acq = [generate_case(1, i, 32, "downstream").acquisition for i in range(150)]
    for key, sign in (("exposure", -1), ("noise", 1), ("scale", -1)):
        gap = np.mean([a[key] for a in down_acq]) - np.mean([a[key] for a in pre_acq])
        assert sign * gap > 0, key


@pytest.mark.parametrize("level, finding_range, normal_range", [("subtle", (0.08, 0.20), (0.35, 0.50)),
                                                                ("lesson", (0.12, 0.26), (0.22, 0.35))])
def test_prevalence_in_intended_ranges(level, finding_range, normal_range):
    labels = np.stack([synth.case_params(0, i, "pretrain", level)["labels"] for i in range(1000)])
    for name, p in zip(FINDINGS, labels.mean(0)):
        assert finding_range[0] <= p <= finding_range[1], (name, p)
    assert normal_range[0] <= (labels.sum(1) == 0).mean() <= normal_range[1]


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "call, parameter",
    [
        (lambda: generate_case(0, 0, domain="test"), "domain"),
        (lambda: generate_case(0, 0, size=16), "size"),
        (lambda: generate_case(-1, 0), "seed"),
        (lambda: generate_case(0, -2), "index"),
        (lambda: generate_cases(0, seed=0), "n"),
        (lambda: generate_cases(2, seed=0, start=-1), "start"),
        (lambda: generate_cases(2, seed=0, domain="finetune"), "domain"),
    ],
)
def test_bad_arguments_raise_value_error(call, parameter):
    with pytest.raises(ValueError, match=parameter):
        call()
