import copy

import matplotlib.figure
import numpy as np
import pytest
import torch

from cmitm_lib import viz
from cmitm_lib.data.datasets import PairDataset
from cmitm_lib.train import build_model


def _batch(preset, pairs, n=2):
    ds = PairDataset(pairs, preset.data, preset.model, train=False)
    items = [ds[i] for i in range(n)]
    return torch.stack([it["image"] for it in items]), torch.stack([it["target"] for it in items])


def test_masking_figure_shows_the_masked_fraction(micro_preset, micro_pairs):
    images, _ = _batch(micro_preset, micro_pairs)
    fig = viz.masking_figure(images, 0.75, micro_preset.model.patch_size)
    assert isinstance(fig, matplotlib.figure.Figure)
    assert fig.axes[1].get_title() == "visible 4/16 patches"


def test_masked_view_paints_exactly_the_masked_patches():
    img = torch.arange(16.0).reshape(1, 4, 4) + 1
    mask = torch.tensor([1.0, 0.0, 0.0, 1.0])  # 2x2 patches: top-left and bottom-right masked
    out = viz.masked_view(img, mask, 2, fill=0.0)
    assert out[0, :2, :2].sum() == 0 and out[0, 2:, 2:].sum() == 0
    assert torch.equal(out[0, :2, 2:], img[0, :2, 2:])


def test_reconstruction_keeps_visible_pixels_and_figure_has_four_panels(micro_preset, micro_pairs, micro_tokenizer):
    p = copy.deepcopy(micro_preset)
    model = build_model(p, micro_tokenizer)
    images, targets = _batch(p, micro_pairs)
    out = viz.reconstruct_sample(model, images[0], targets[0], 0.75, seed=0)
    assert out["reconstruction"].shape == out["2x target"].shape == (64, 64)
    keep = np.kron(1 - out["mask"].reshape(4, 4), np.ones((16, 16))).astype(bool)  # visible 2x patches
    assert np.allclose(out["reconstruction"][keep], out["2x target"][keep])
    assert not np.allclose(out["reconstruction"][~keep], out["2x target"][~keep])
    fig = viz.reconstruction_figure(model, images, targets, 0.75)
    assert [a.get_title() for a in fig.axes[:4]] == ["input", "masked input", "reconstruction", "2x target"]


def test_similarity_retrieval_loss_and_finetune_figures():
    sim = torch.eye(5)
    assert viz.similarity_figure(sim).axes[0].get_images()[0].get_array().shape == (5, 5)
    r = {"i2t_R@1": 0.1, "i2t_R@5": 0.3, "t2i_R@1": 0.2, "t2i_R@5": 0.4, "i2t_R@10": 0.5}
    fig = viz.retrieval_figure({"before": r, "after": r})
    assert len(fig.axes[0].patches) == 8  # 2 models x 4 bars (R@10 left out)
    hist = [{"epoch": 1, "loss_c": 8.0}, {"epoch": 2, "loss_c": 7.0}]
    assert len(viz.loss_figure(hist, uniform=8.3).axes[0].lines) == 2
    rows = [{"init": i, "fraction": f, "metric": "auc", "test_auc": 0.6} for i in ("random", "CMITM") for f in (0.01, 0.1)]
    assert len(viz.finetune_figure(rows).axes[0].lines) == 2


def test_widgets_build(micro_preset, micro_pairs, micro_tokenizer):
    pytest.importorskip("ipywidgets")
    images, targets = _batch(micro_preset, micro_pairs, 3)
    model = build_model(copy.deepcopy(micro_preset), micro_tokenizer)
    w = viz.masking_widget(images, micro_preset.model.patch_size)
    assert {c.description for c in w.children[:-1]} == {"sample", "mask ratio", "mask seed"}
    assert viz.reconstruction_widget(model, images, targets).children[0].max == 2
    ratio = {c.description: c.value for c in viz.reconstruction_widget(model, images, targets, 0.9).children[:-1]}
    assert ratio["mask ratio"] == 0.9  # starts where the notebook's mask_ratio parameter is
    assert viz.similarity_widget({"a": torch.eye(3)}, ["x", "y", "z"]).children[0].options == ("a",)


def test_demo_end_to_end_on_a_micro_preset(tmp_path, micro_preset, monkeypatch, capsys):
    from cmitm_lib import cli

    p = copy.deepcopy(micro_preset)
    p.data.n_pretrain, p.data.n_heldout, p.data.n_finetune = 64, 32, (200, 64, 64)
    p.stage1.batch_size = p.stage2.batch_size = 16
    monkeypatch.setattr(cli, "get_preset", lambda name: copy.deepcopy(p))
    monkeypatch.setattr("cmitm_lib.data.cache_dir", lambda: tmp_path / "cache")
    cli.main(["demo", "--out-dir", str(tmp_path / "demo"), "--stage1-epochs", "1", "--stage2-epochs", "1",
              "--finetune-epochs", "1", "--fraction", "0.1"])
    out = capsys.readouterr().out
    assert "Fine-tuning on synth, test AUC of the model chosen on validation" in out
    from cmitm_lib.data import load_finetune
    from cmitm_lib.data.fractions import fraction_indices

    d = load_finetune("synth", "", p, 0)
    n = len(fraction_indices(len(d.train), 0.1, 0, d.train.labels))  # 20, plus a positive of any class they lack
    assert n >= 20 and f"     10%{n:>8}" in out
    for init in ("random", "stage 1 only (MRM-like)", "CMITM"):
        assert init in out
    assert (tmp_path / "demo" / "stage2" / "model.safetensors").is_file()
    assert (tmp_path / "demo" / "demo_metrics.json").is_file()


def test_pretrain_and_finetune_commands(tmp_path, micro_preset, monkeypatch, capsys):
    from cmitm_lib import cli

    p = copy.deepcopy(micro_preset)
    p.data.n_pretrain, p.data.n_heldout, p.data.n_finetune = 64, 32, (100, 32, 32)
    monkeypatch.setattr(cli, "get_preset", lambda name: copy.deepcopy(p))
    monkeypatch.setattr("cmitm_lib.data.cache_dir", lambda: tmp_path / "cache")
    s1, s2 = str(tmp_path / "s1"), str(tmp_path / "s2")
    cli.main(["pretrain", "--stage", "1", "--epochs", "1", "--batch-size", "16", "--checkpoint-out", s1])
    cli.main(["pretrain", "--stage", "2", "--epochs", "1", "--batch-size", "16", "--checkpoint-in", s1,
              "--checkpoint-out", s2])
    cli.main(["finetune", "--checkpoint-in", s2, "--fractions", "0.1", "1.0", "--epochs", "1",
              "--out-dir", str(tmp_path / "ft")])
    out = capsys.readouterr().out
    assert "stage1: final loss" in out and "stage2: final loss" in out
    assert (tmp_path / "ft" / "finetune_metrics.json").is_file()
    with pytest.raises(ValueError, match="epochs=0"):
        cli.main(["pretrain", "--stage", "1", "--epochs", "0", "--checkpoint-out", s1])
