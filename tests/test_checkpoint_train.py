import copy
import json

import numpy as np
import pytest
import torch

from cmitm_lib.checkpoint import load_checkpoint, save_checkpoint
from torch.utils.data import DataLoader

from cmitm_lib.data.datasets import FinetuneData, LabelData, LabelDataset, collate_labels
from cmitm_lib.evaluate import classifier_features, embed_pairs, macro_auc, predict, recall_at_k, score
from cmitm_lib.models import build_classifier
from cmitm_lib.train import build_model, finetune, fraction_indices, pretrain, probe_head, warmup_cosine


def test_checkpoint_round_trip_is_exact_and_pickle_free(tmp_path, micro_preset, micro_tokenizer):
    p = copy.deepcopy(micro_preset)
    model = build_model(p, micro_tokenizer)
    path = save_checkpoint(tmp_path / "ck", model, p, micro_tokenizer, {"stage": "stage1"})
    assert sorted(f.name for f in path.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert json.loads((path / "config.json").read_text())["meta"]["stage"] == "stage1"
    loaded, tok, preset, meta = load_checkpoint(path, expect_preset="tiny")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert tok.get_vocab() == micro_tokenizer.get_vocab()
    assert preset.model == p.model


def test_checkpoint_of_another_preset_is_refused(tmp_path, micro_preset, micro_tokenizer):
    path = save_checkpoint(tmp_path / "ck", build_model(copy.deepcopy(micro_preset), micro_tokenizer),
                           micro_preset, micro_tokenizer)
    with pytest.raises(ValueError, match="trained with preset='tiny', but preset='paper' was requested"):
        load_checkpoint(path, expect_preset="paper")


def test_checkpoint_whose_weights_do_not_match_config_is_refused(tmp_path, micro_preset, micro_tokenizer):
    path = save_checkpoint(tmp_path / "ck", build_model(copy.deepcopy(micro_preset), micro_tokenizer),
                           micro_preset, micro_tokenizer)
    cfg = json.loads((path / "config.json").read_text())
    cfg["preset"]["model"]["embed_dim"] = 64
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="does not match its config.json"):
        load_checkpoint(path)


def test_fractions_are_nested_and_seeded():
    one, ten, full = (set(fraction_indices(1000, f, seed=3)) for f in (0.01, 0.1, 1.0))
    assert len(one) == 10 and len(ten) == 100 and len(full) == 1000
    assert one < ten < full
    assert set(fraction_indices(1000, 0.1, seed=3)) == ten
    assert set(fraction_indices(1000, 0.1, seed=4)) != ten
    assert len(fraction_indices(50, 0.01)) == 1


def test_fractions_with_labels_cover_every_class_and_stay_nested():
    rng = np.random.default_rng(0)
    labels = (rng.random((1000, 5)) < [0.3, 0.1, 0.02, 0.005, 0.0]).astype(np.float32)  # last: no positive
    for seed in range(5):
        plain = [set(fraction_indices(1000, f, seed)) for f in (0.01, 0.1, 1.0)]
        covered = [set(fraction_indices(1000, f, seed, labels)) for f in (0.01, 0.1, 1.0)]
        assert covered[0] <= covered[1] <= covered[2] and len(covered[2]) == 1000
        for p, c in zip(plain, covered):
            assert p <= c  # the plain prefix is kept; only missing classes add examples
            pos = labels[sorted(c)].sum(0)
            assert (pos[:4] >= 1).all() and pos[4] == 0
            assert len(c - p) <= int((labels[sorted(p)].sum(0)[:4] == 0).sum())  # one per missing class
    with pytest.raises(ValueError, match="rows"):
        fraction_indices(10, 0.5, 0, labels)


def test_warmup_then_cosine_to_zero():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, total_steps=10, warmup_steps=2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_recall_at_k_and_duplicate_reports():
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.2, 0.1], [0.0, 0.1, 0.7]])
    r = recall_at_k(sim, ks=(1, 2))
    assert r["i2t_R@1"] == pytest.approx(2 / 3) and r["i2t_R@2"] == pytest.approx(1.0)
    # image 1's report is word for word the report of image 0: retrieving it counts
    r = recall_at_k(sim, ks=(1,), reports=["normal", "normal", "effusion"])
    assert r["i2t_R@1"] == pytest.approx(1.0)


def test_macro_auc_reports_single_valued_classes():
    labels = np.array([[1, 0], [0, 0], [1, 0], [0, 0]], dtype=float)
    auc, skipped = macro_auc(labels, np.array([[0.9, 0.1], [0.1, 0.2], [0.8, 0.3], [0.2, 0.4]]))
    assert auc == pytest.approx(1.0) and skipped == ["1"]


def test_finetune_selects_on_validation_and_reports_test(micro_preset, micro_pairs, micro_tokenizer):
    p = copy.deepcopy(micro_preset)
    rng = np.random.default_rng(0)
    imgs = micro_pairs.images
    # learnable toy task: label = image brighter than the median
    lab = (imgs.reshape(len(imgs), -1).mean(1) > np.median(imgs.reshape(len(imgs), -1).mean(1))).astype(np.float32)
    labels = np.stack([lab, 1 - lab], 1)
    data = FinetuneData("toy", ["bright", "dark"], "multilabel", "auc",
                        LabelData(imgs, labels), LabelData(imgs[:24], labels[:24]), LabelData(imgs[24:], labels[24:]))
    r = finetune(data, p, None, fraction=0.5, epochs=2, batch_size=8, progress=False)
    assert r["n_train"] == 24 and r["init"] == "random" and 1 <= r["best_epoch"] <= 2
    assert r["val_auc"] == max(h["val_auc"] for h in r["history"])
    assert 0.0 <= r["test_auc"] <= 1.0


def test_probe_head_starts_at_the_linear_probe(micro_preset, micro_pairs):
    """LP-FT: after `probe_head` the classifier scores exactly what the logistic-regression probe of its own
    frozen features scores, and a fine-tuning run with head_init="probe" starts from it."""
    p = copy.deepcopy(micro_preset)
    imgs = micro_pairs.images
    means = imgs.reshape(len(imgs), -1).mean(1)
    lab = (means > np.median(means)).astype(np.float32)
    labels = np.stack([lab, 1 - lab], 1)
    data = FinetuneData("toy", ["bright", "dark"], "multilabel", "auc",
                        LabelData(imgs, labels), LabelData(imgs[:24], labels[:24]), LabelData(imgs[24:], labels[24:]))
    net = build_classifier(p.model, 2)
    idx = np.arange(0, 48, 2)
    fit = probe_head(net, data, idx, p, torch.device("cpu"))
    feats = classifier_features(net, data.val.images, p, torch.device("cpu"))
    loader = DataLoader(LabelDataset(data.val, p.data, p.model, train=False), batch_size=16, collate_fn=collate_labels)
    _, scores = predict(net, loader, torch.device("cpu"), "multilabel")
    np.testing.assert_allclose(scores, fit["predict"](feats), atol=1e-5)
    assert fit["val"] == pytest.approx(score("auc", data.val.labels, scores))
    p.finetune.head_init = "probe"
    r = finetune(data, p, None, fraction=0.5, epochs=1, batch_size=8, progress=False)
    assert 0.0 <= r["test_auc"] <= 1.0
    p.finetune.head_init = "linear"
    with pytest.raises(ValueError, match="head_init"):
        finetune(data, p, None, fraction=0.5, epochs=1, batch_size=8, progress=False)


def test_pretrain_history_and_embeddings(micro_preset, micro_pairs, micro_tokenizer):
    p = copy.deepcopy(micro_preset)
    model = build_model(p, micro_tokenizer)
    hist = pretrain(model, micro_tokenizer, micro_pairs, p, "joint", epochs=2, batch_size=16, progress=False)
    assert [h["epoch"] for h in hist] == [1, 2]
    assert {"loss_vr", "loss_tr", "loss_c", "loss", "lr", "samples_per_s"} <= set(hist[0])
    zi, zt = embed_pairs(model, micro_tokenizer, micro_pairs, p)
    assert zi.shape == zt.shape == (48, p.model.proj_dim)
