"""The embedded benchmark's four downstream tasks (data/tasks.py): labels agree with what the
generator drew, the U-policy reads the report, the COVIDx-like classes are balanced and correct."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from cmitm_lib.data import load_finetune, tasks
from cmitm_lib.data.synth import FINDINGS, generate_case


@pytest.fixture(scope="module")
def small_preset(micro_preset):
    p = copy.deepcopy(micro_preset)
    p.data.n_finetune, p.data.synth_size = (60, 30, 30), 32
    return p


def test_case_params_match_generate_case():
    for i in (0, 5, 123):
        params = tasks.case_params(3, i, "downstream")
        case = generate_case(3, i, size=32, domain="downstream")
        np.testing.assert_array_equal(params["labels"], case.labels)
        np.testing.assert_array_equal(tasks.report_labels(params), case.report_labels)
        assert params["findings"].keys() == case.findings.keys()


def test_chexpert_u_policy():
    report = np.zeros(len(FINDINGS), dtype=np.float32)
    for name in tasks.CHEXPERT_FINDINGS:
        report[FINDINGS.index(name)] = -1
    report[FINDINGS.index("nodule")] = 1  # not a CheXpert-like column
    got = dict(zip(tasks.CHEXPERT_FINDINGS, tasks.chexpert_labels(report)))
    assert got == {"atelectasis": 1, "cardiomegaly": 0, "consolidation": 0, "edema": 1, "effusion": 1}
    report[:] = 1
    assert tasks.chexpert_labels(report).tolist() == [1.0] * 5


def test_covidx_class_rules():
    def labels(*present):
        return np.array([n in present for n in FINDINGS], dtype=np.float32)

    assert tasks.covidx_class(labels()) == 0
    assert tasks.covidx_class(labels("consolidation")) == 1
    assert tasks.covidx_class(labels("consolidation", "cardiomegaly")) == 1
    assert tasks.covidx_class(labels("edema", "cardiomegaly")) == 2
    assert tasks.covidx_class(labels("edema", "consolidation")) is None
    assert tasks.covidx_class(labels("nodule")) is None


def test_covidx_indices_balanced_disjoint_and_deterministic():
    splits, counts = tasks.covidx_indices(0, (30, 9, 10))
    again, _ = tasks.covidx_indices(0, (30, 9, 10))
    assert all(np.array_equal(a, b) for a, b in zip(splits, again))
    assert [len(s) for s in splits] == [30, 9, 10]
    assert len(set(np.concatenate(splits))) == 49
    for idx, n in zip(splits, (30, 9, 10)):
        classes = [tasks.covidx_class(tasks.case_params(0, int(i), "downstream")["labels"]) for i in idx]
        assert np.bincount(classes, minlength=3).tolist() == [n // 3, n // 3, n - 2 * (n // 3)]
    assert counts["excluded (other findings)"] > 0
    assert counts["scanned"] >= 49 + counts["excluded (other findings)"]


def test_rsna_indices_hold_rsna_prevalence_disjoint_and_deterministic():
    sizes = (50, 9, 20)
    splits, counts = tasks.rsna_indices(0, sizes)
    again, _ = tasks.rsna_indices(0, sizes)
    assert all(np.array_equal(a, b) for a, b in zip(splits, again))
    assert len(set(np.concatenate(splits))) == sum(sizes) and min(splits[0]) >= tasks.RSNA_START
    k = FINDINGS.index("consolidation")
    for idx, n in zip(splits, sizes):
        positives = sum(tasks.case_params(0, int(i), "downstream")["labels"][k] for i in idx)
        assert (len(idx), positives) == (n, max(1, round(tasks.RSNA_PREVALENCE * n)))
    assert counts == {"scanned": counts["scanned"], "excluded (other findings)": 0}
    assert counts["scanned"] >= sum(sizes)


@pytest.mark.parametrize("name", tasks.SYNTH_TASKS)
def test_load_task_shapes_and_determinism(name, small_preset):
    d = load_finetune(name, "", small_preset)
    classes, task, metric = tasks.TASK_INFO[name]
    assert (d.classes, d.task, d.metric) == (classes, task, metric)
    for split, n in zip((d.train, d.val, d.test), small_preset.data.n_finetune):
        assert split.images.shape == (n, 32, 32) and split.images.dtype == np.uint8
        assert split.labels.shape == (n, len(classes))
        assert set(np.unique(split.labels)) <= {0.0, 1.0}
    if task == "multiclass":
        assert np.all(d.train.labels.sum(1) == 1)
    again = load_finetune(name, "", small_preset)
    np.testing.assert_array_equal(d.train.images, again.train.images)
    np.testing.assert_array_equal(d.test.labels, again.test.labels)


def test_task_labels_follow_the_generator(small_preset):
    n_train, n_val, _ = small_preset.data.n_finetune
    findings = load_finetune("synth", "", small_preset)
    rsna = load_finetune("synth-rsna", "", small_preset)
    chex = load_finetune("synth-chexpert", "", small_preset)
    k = FINDINGS.index("consolidation")
    splits, _ = tasks.rsna_indices(0, small_preset.data.n_finetune)
    for part, idx in zip((rsna.train, rsna.val, rsna.test), splits):  # its own stream, image truth
        truth = [tasks.case_params(0, int(i), "downstream")["labels"][k] for i in idx]
        np.testing.assert_array_equal(part.labels[:, 0], truth)
    np.testing.assert_array_equal(chex.train.images, findings.train.images)  # one downstream stream
    cols = [FINDINGS.index(n) for n in tasks.CHEXPERT_FINDINGS]
    np.testing.assert_array_equal(chex.test.labels, findings.test.labels[:, cols])  # test: image truth
    for i in range(n_train):  # train: the report, U-policy on hedged mentions
        params = tasks.case_params(0, i, "downstream")
        report = tasks.report_labels(params)
        for j, name in enumerate(tasks.CHEXPERT_FINDINGS):
            said = report[FINDINGS.index(name)]
            want = tasks.U_POLICY[name] if said == -1 else said
            assert chex.train.labels[i, j] == want
            if said != -1:
                assert chex.train.labels[i, j] == params["labels"][FINDINGS.index(name)]


def test_downstream_tasks_are_shifted_from_pretraining(small_preset):
    """The tasks' films come from the downstream acquisition (greyer air above the shoulders)."""
    d = load_finetune("synth", "", small_preset)
    pre = np.stack([generate_case(0, i, size=32, domain="pretrain").image for i in range(60)])
    corner = np.s_[:, :3, :3]
    assert d.train.images[corner].mean() / 255 > pre[corner].mean() + 0.04
