"""The benchmark runner: recipes, caching and resume, the linear probe, statistics and reports."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest

from cmitm_lib.checkpoint import read_config
from cmitm_lib.data import SYNTH_TASKS, benchmark_version
from cmitm_lib.evaluate import linear_probe
from cmitm_lib.lab import recipes
from cmitm_lib.lab.recipes import EXPERIMENTS, RECIPES, SCALES, chain_keys, pretrained_encoder, scaled_preset
from cmitm_lib.lab.report import CLAIMS, markdown_table, plot, pretrain_seconds, summarize, write_docs, write_report
from cmitm_lib.lab.runner import check_same_benchmark, check_same_preset, read_results, run


@pytest.fixture(scope="module")
def base(micro_preset):
    p = copy.deepcopy(micro_preset)
    p.data.synth_size = 32
    return p


def test_recipes_share_their_stage1_link():
    keys = {m: chain_keys(r) for m, (_, r) in RECIPES.items()}
    assert keys["random"] == []
    assert keys["mrm"] == ["stage1"]
    for m in ("cmitm", "no_mask", "no_rep", "cmitm_m0.5"):
        assert keys[m][0] == "stage1" and len(keys[m]) == 2
    assert len({keys[m][-1] for m in ("cmitm", "no_mask", "no_rep", "cmitm_m0.5", "cmitm_m0.9")}) == 5
    assert keys["cmitm_m0.75"] != keys["cmitm"]  # without a preset the ratio is spelled out
    tiny = scaled_preset("quick")
    keys = {m: chain_keys(r, tiny) for m, (_, r) in RECIPES.items()}
    assert keys["cmitm_m0.5"] == keys["cmitm"] == ["stage1", "stage1__stage2"]  # same training, one folder
    assert keys["cmitm_m0.75"] == ["stage1", "stage1__stage2-m0.75"]  # the paper's ratio is spelled out
    assert keys["no_mask"] == keys["cmitm_m0"] == ["stage1", "stage1__stage2-m0.0"]
    assert keys["no_rep"][-1] == "stage1__stage2-rFalse" and keys["ccl"] == ["stage2"]
    for name, (methods, tasks, fractions) in EXPERIMENTS.items():
        assert set(methods) <= set(RECIPES) and set(tasks) <= set(SYNTH_TASKS), name
        assert {m for pair in CLAIMS[name] for m in pair} <= set(methods), name
    long, full = scaled_preset("long"), scaled_preset("full")
    assert (long.stage1.epochs, long.stage2.epochs) == (40, 12) and long.data == full.data  # more steps only


def test_linear_probe_separable_and_missing_class():
    rng = np.random.default_rng(0)
    y = (rng.random((120, 2)) < 0.4).astype(np.float32)
    x = np.concatenate([y * 3 + rng.normal(0, 0.1, y.shape), rng.normal(0, 1, (120, 3))], axis=1)
    r = linear_probe(x[:60], y[:60], x[60:90], y[60:90], x[90:], y[90:], "multilabel", "auc")
    assert r["val"] == 1.0 and r["test"] == 1.0
    labels = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 90)]
    feats = labels @ np.eye(3) * 4 + rng.normal(0, 0.1, (90, 3))
    train = labels[:30].copy()
    keep = train.argmax(1) != 2  # class 2 absent from the training fraction
    r = linear_probe(feats[:30][keep], train[keep], feats[30:60], labels[30:60], feats[60:], labels[60:],
                     "multiclass", "acc")
    truth = labels[60:].argmax(1)
    assert abs(r["test"] - np.mean(truth != 2)) < 0.05  # every class-2 image is wrong, the rest right


def test_summary_statistics():
    rows = [{"method": "cmitm", "task": "synth-rsna", "fraction": 0.01, "metric": "auc", "test": t}
            for t in (0.60, 0.70, 0.80)]
    (s,) = summarize(rows)
    assert s["n"] == 3 and math.isclose(s["mean"], 70.0) and math.isclose(s["sd"], 10.0)
    assert math.isclose(s["ci95"], 4.302652729911275 * 10 / math.sqrt(3), rel_tol=1e-6)
    assert "70.0 ± 24.8" in markdown_table([s])


def test_smoke_grid_trains_once_and_resumes(base, tmp_path, monkeypatch):
    rows = run("table2", "smoke", 1, tmp_path, preset=base, device="cpu", log=lambda *a: None)
    assert len(rows) == 4 * 2  # 4 methods x 2 tasks x 1 fraction x 1 seed
    assert {r["method"] for r in rows} == {"cmitm", "joint", "no_mask", "no_rep"}
    assert all(0.0 <= r["test"] <= 1.0 for r in rows)
    root = tmp_path / "smoke" / "pretrain" / "seed0"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(
        ["stage1", "stage1__stage2", "stage1__stage2-m0.0", "stage1__stage2-rFalse", "joint"])
    assert read_config(root / "stage1__stage2-rFalse")["preset"]["model"]["use_rep_decoder"] is False
    assert json.loads((root / "joint" / "config.json").read_text())["meta"]["history"][-1]["epoch"] == 2  # 1 + 1

    def no_training(*args, **kwargs):
        raise AssertionError("a finished grid must not train again")

    monkeypatch.setattr(recipes, "pretrain", no_training)
    again = run("table2", "smoke", 1, tmp_path, preset=base, device="cpu", log=lambda *a: None)
    assert again == rows
    with pytest.raises(AssertionError, match="must not train"):  # first_seed=1: seed 1 is fresh, so it trains
        run("table2", "smoke", 1, tmp_path, preset=base, device="cpu", log=lambda *a: None, first_seed=1)
    # fig2 reuses stage 1 and CMITM; only the CCL-only link is new (pretrain is blocked -> it must fail there)
    with pytest.raises(AssertionError, match="must not train"):
        run("fig2", "smoke", 1, tmp_path, preset=base, device="cpu", log=lambda *a: None)
    assert {r["method"] for r in read_results(tmp_path / "smoke")} >= {"mrm"}

    paths = write_report("table2", rows, tmp_path / "smoke", "cmitm experiment table2 --scale smoke")
    md = (tmp_path / "smoke" / "table2.md").read_text()
    assert "- image masking in stage 2" in md and "synth-covidx acc 1%" in md
    docs = write_docs(tmp_path / "smoke", tmp_path / "docs" / "results.md", "cmitm experiment table2")
    assert "### table2" in docs.read_text() and (tmp_path / "docs" / "results_table2.png").is_file()
    assert f"the runs in `{tmp_path / 'smoke'}/` wrote" in docs.read_text()  # the folder it read, not a guess
    assert f"Benchmark version {benchmark_version()}" in docs.read_text()  # what made the numbers
    assert "image mask ratio 0.5)" in docs.read_text()  # stage 2's mask ratio, which scales may change
    assert all(p for p in paths.values())


def test_supervised_reference_trains_on_pretraining_labels_once(base, tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    from cmitm_lib.data import load_pretrain_labels

    p = scaled_preset("smoke", base)
    labelled = load_pretrain_labels(p)
    assert labelled.train.labels.shape == (256, 7) and labelled.val.labels.shape == (64, 7)
    assert 0 < labelled.train.labels.mean() < 1  # image-truth findings, not all one value
    monkeypatch.setitem(EXPERIMENTS, "reference", (("random", "supervised"), ("synth-rsna",), (0.01,)))
    said = []
    rows = run("reference", "smoke", 1, tmp_path, preset=base, device="cpu", log=said.append)
    assert [r["method"] for r in rows] == ["random", "supervised"] and rows[0]["test"] != rows[1]["test"]
    link = tmp_path / "smoke" / "pretrain" / "seed0" / "supervised"
    meta = json.loads((link / "config.json").read_text())["meta"]
    assert meta["epochs"] == 2 and len(meta["history"]) == 2 and 0 <= meta["heldout_auc"] <= 1  # stage 1 + 2
    assert any("trained supervised (seed 0)" in s for s in said)
    state = load_file(str(link / "encoder.safetensors"))
    assert not any(k.startswith("head.") for k in state)

    def no_training(*args, **kwargs):
        raise AssertionError("a cached supervised link must not train again")

    monkeypatch.setattr(recipes, "finetune", no_training)
    assert run("reference", "smoke", 1, tmp_path, preset=base, device="cpu", log=lambda *a: None) == rows
    got = pretrained_encoder("supervised", 0, scaled_preset("smoke", base), tmp_path / "smoke")
    assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)
    assert pretrain_seconds(tmp_path / "smoke")["supervised"] == meta["seconds"]
    md = write_report("reference", rows, tmp_path / "smoke", "cmitm experiment reference")["markdown"]
    assert "not a claim of the paper" in open(md).read()


def test_output_folder_of_another_preset_is_refused(base, tmp_path):
    check_same_preset(tmp_path, base)  # nothing saved yet: fine
    (tmp_path / "preset.json").write_text(json.dumps(base.to_dict()))
    check_same_preset(tmp_path, copy.deepcopy(base))  # same values: fine
    longer = copy.deepcopy(base)
    longer.stage2.epochs += 5
    e = base.stage2.epochs
    with pytest.raises(ValueError, match=rf"stage2\.epochs: saved {e}, now {e + 5}.*another output folder"):
        check_same_preset(tmp_path, longer)


def test_output_folder_of_another_benchmark_version_is_refused(tmp_path):
    check_same_benchmark(tmp_path)  # a new folder: the version is written
    assert json.loads((tmp_path / "benchmark.json").read_text()) == {"benchmark_version": benchmark_version()}
    check_same_benchmark(tmp_path)  # same version: fine
    (tmp_path / "benchmark.json").write_text(json.dumps({"benchmark_version": "0123456789"}))
    with pytest.raises(ValueError, match=r"another version of the embedded benchmark \(0123456789; .*another output folder"):
        check_same_benchmark(tmp_path)
    old = tmp_path / "old"
    (old / "pretrain").mkdir(parents=True)  # results from before versions were recorded
    with pytest.raises(ValueError, match="unrecorded"):
        check_same_benchmark(old)


def test_bad_arguments(base, tmp_path):
    with pytest.raises(ValueError, match="experiment='table9'"):
        run("table9", "smoke", 1, tmp_path, preset=base)
    with pytest.raises(ValueError, match="scale='huge'"):
        run("table1", "huge", 1, tmp_path, preset=base)
    with pytest.raises(ValueError, match="seeds=0"):
        run("table1", "smoke", 0, tmp_path, preset=base)


def test_imagenet_row_from_local_timm_weights(base, tmp_path, monkeypatch):
    import torch
    from safetensors.torch import save_file
    from timm.models.vision_transformer import VisionTransformer

    m = base.model
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=224, patch_size=16, in_chans=3, embed_dim=m.embed_dim, depth=m.depth + 1,
                            num_heads=m.num_heads, num_classes=1000)  # an ImageNet-shaped RGB checkpoint
    weights = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(weights))
    monkeypatch.setitem(EXPERIMENTS, "table1", (("random",), ("synth-rsna",), (0.01,)))
    said = []
    rows = run("table1", "smoke", 1, tmp_path, preset=base, device="cpu", log=said.append,
                  imagenet_weights=weights)
    assert [r["method"] for r in rows] == ["random", "imagenet"]
    assert rows[1]["label"] == "ImageNet init (local timm weights)" and 0 <= rows[1]["test"] <= 1
    assert rows[1]["weights"] == "vit.safetensors" and "weights" not in rows[0]
    assert rows[0]["test"] != rows[1]["test"]  # a different encoder, not random init again
    assert any("first 2 of its 3 blocks" in s for s in said)
    assert not (tmp_path / "smoke" / "pretrain").exists()  # nothing pre-trained for either row
    write_report("table1", rows, tmp_path / "smoke", "cmitm experiment table1 --imagenet-weights vit.safetensors")
    assert "| ImageNet init (local timm weights) |" in (tmp_path / "smoke" / "table1.md").read_text()
    with pytest.raises(ValueError, match="table1 only"):
        run("table2", "smoke", 1, tmp_path, preset=base, imagenet_weights=weights)


def test_report_with_a_single_method(tmp_path):
    """The calibration experiment has one method (random init); its plot must not divide by zero."""
    rows = [{"experiment": "calibration", "method": "random", "label": RECIPES["random"][0], "task": task,
             "metric": "auc", "fraction": f, "seed": seed, "protocol": "finetune", "scale": "smoke",
             "val": 0.5, "test": 0.5 + 0.1 * f + 0.01 * seed}
            for task in ("synth", "synth-rsna") for f in (0.01, 0.1, 1.0) for seed in (0, 1)]
    paths = write_report("calibration", rows, tmp_path, "cmitm experiment calibration --protocol finetune")
    assert all(Path(p).is_file() for p in paths.values())
    assert "| random init |" in (tmp_path / "calibration_finetune.md").read_text()
    # other label fractions (--fractions) get a section of their own; the docs page keeps both, default first
    other = [{**r, "fraction": 0.05} for r in rows if r["fraction"] == 0.01]
    write_report("calibration", other, tmp_path, "cmitm experiment calibration --protocol finetune --fractions 0.05")
    assert "synth auc 5%" in (tmp_path / "calibration_finetune_f0.05.md").read_text()
    (tmp_path / "preset.json").write_text(json.dumps(scaled_preset("smoke").to_dict()))
    page = write_docs(tmp_path, tmp_path / "docs" / "results.md", "cmitm experiment calibration").read_text()
    assert page.index("### calibration_finetune\n") < page.index("### calibration_finetune_f0.05\n")
    assert "Benchmark version not recorded" in page  # a folder without benchmark.json says so


def test_cli_choices_name_every_experiment_and_scale(capsys):
    """The CLI's choices are the lab's experiments and scales."""
    import re

    from cmitm_lib.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["experiment", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    scales = re.search(r"--scale \{([^}]*)\}", text).group(1).split(",")
    experiments = re.search(r"\{(table1[^}]*)\}", text).group(1).split(",")
    assert set(scales) == set(SCALES)
    assert set(experiments) == set(EXPERIMENTS) | {"all"}


def test_plot_bars_are_the_tables_intervals():
    """The plot's bars are the tables' 95% Student-t intervals (not seaborn's bootstrap of 3 values)."""
    import matplotlib.pyplot as plt

    rows = [{"experiment": "claim", "method": m, "label": RECIPES[m][0], "task": "synth", "metric": "auc",
             "fraction": 0.01, "seed": seed, "protocol": "linear", "scale": "smoke", "val": 0.5, "test": test}
            for m, tests in (("random", (0.50, 0.61, 0.55)), ("cmitm", (0.60, 0.62, 0.70))) for seed, test in enumerate(tests)]
    summary = summarize(rows)
    fig = plot(summary, rows)
    halves = sorted((line.get_ydata()[1] - line.get_ydata()[0]) / 2 for line in fig.axes[0].lines
                    if len(line.get_ydata()) == 2)
    plt.close(fig)
    assert np.allclose(halves, sorted(s["ci95"] for s in summary))


def test_fresh_seeds_get_a_section_of_their_own(tmp_path):
    rows = [{"experiment": "claim", "method": m, "label": m, "task": "synth-rsna", "metric": "auc", "fraction": 0.01,
             "seed": seed, "protocol": "linear", "scale": "smoke", "val": 0.5, "test": t}
            for seed in (5, 6, 7) for m, t in (("random", 0.55), ("cmitm", 0.6 + seed / 100), ("mrm", 0.56))]
    paths = write_report("claim", rows, tmp_path, "cmitm experiment claim --seeds 3 --first-seed 5")
    assert Path(paths["csv"]).name == "claim_f0.01_seeds5-7_results.csv"  # beside claim_f0.01_results.csv
    md = Path(paths["markdown"]).read_text()
    assert md.startswith("### claim_f0.01_seeds5-7") and "Seeds: 3 (5, 6, 7)" in md
    with pytest.raises(ValueError, match="first_seed=-1"):
        run("claim", "smoke", 1, tmp_path, first_seed=-1)
