"""The opt-in convolutional E_v (ModelConfig.encoder = "cnn"): leak-free masking, the ViT's interface,
every training stage, checkpoints, and clear errors where only the ViT will do."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from cmitm_lib.checkpoint import load_checkpoint, save_checkpoint
from cmitm_lib.lab.recipes import RECIPES, chain_keys, scaled_preset
from cmitm_lib.lab.runner import check_same_preset
from cmitm_lib.models import (MODULES, ConvEncoder, build_classifier, build_encoder, encode_visible, imagenet_encoder_state,
                              unpatchify, unshuffle)
from cmitm_lib.saliency import classifier_saliency
from cmitm_lib.train import build_model, encoder_state, pretrain


@pytest.fixture()
def cnn_preset(micro_preset):
    p = copy.deepcopy(micro_preset)
    p.model.encoder = "cnn"
    return p


def _hidden(mask: torch.Tensor, p: int) -> torch.Tensor:
    """(B, N) patch mask -> (B, 1, H, W) pixel mask."""
    return unpatchify(mask.unsqueeze(-1).expand(-1, -1, p * p), p, 1)


def test_masked_pixels_do_not_reach_the_visible_tokens(cnn_preset):
    enc = build_encoder(cnn_preset.model).eval()
    p = cnn_preset.model.patch_size
    x = torch.randn(3, 1, 32, 32)
    latent, mask, _ = encode_visible(enc, x, 0.75, torch.Generator().manual_seed(0))
    assert latent.shape == (3, 1 + 4, cnn_preset.model.embed_dim) and mask.sum(1).tolist() == [12.0] * 3
    hidden = _hidden(mask, p)
    # anything drawn in the masked patches: the visible tokens (3x3 convs cross patch borders) stay put
    other, _, _ = encode_visible(enc, x + 10 * hidden * torch.randn_like(x), 0.75, torch.Generator().manual_seed(0))
    assert torch.equal(latent, other)
    # a change in a visible patch does move them
    moved, _, _ = encode_visible(enc, x + (1 - hidden) * torch.randn_like(x), 0.75, torch.Generator().manual_seed(0))
    assert (latent - moved).abs().max() > 1e-3


def test_unmasked_encoding_equals_forward_features(cnn_preset):
    enc = build_classifier(cnn_preset.model, 3).eval()
    x = torch.randn(2, 1, 32, 32)
    latent, mask, ids_restore = encode_visible(enc, x, 0.0, torch.Generator().manual_seed(1))
    ref = enc.forward_features(x)
    assert mask.sum() == 0
    tokens = unshuffle(latent[:, 1:], torch.zeros(1, 1, latent.shape[-1]), ids_restore)
    torch.testing.assert_close(tokens, ref[:, 1:])  # the same tokens, back in patch order
    torch.testing.assert_close(latent[:, 0], ref[:, 0])
    assert enc(x).shape == (2, 3)
    torch.testing.assert_close(enc.forward_head(ref, pre_logits=True), ref[:, 1:].mean(1))


@pytest.mark.parametrize("stage", ["stage1", "stage2", "joint", "mae"])
def test_every_stage_trains_the_conv_encoder(stage, cnn_preset, micro_pairs, micro_tokenizer):
    p = copy.deepcopy(cnn_preset)
    model = build_model(p, micro_tokenizer)
    assert isinstance(model.image_encoder, ConvEncoder)
    before = copy.deepcopy(model.state_dict())
    hist = pretrain(model, micro_tokenizer, micro_pairs, p, stage, epochs=1, batch_size=16, lr=1e-3, progress=False)
    assert all(torch.isfinite(torch.tensor(v)) for k, v in hist[0].items() if k.startswith("loss"))
    after = model.state_dict()
    changed = {name for name in MODULES
               if any(not torch.equal(before[k], after[k]) for k in after if k.startswith(name + "."))}
    assert "image_encoder" in changed
    if stage == "stage2":
        assert "image_decoder" not in changed and "text_decoder" not in changed


def test_checkpoint_keeps_the_encoder_and_the_classifier_loads_it(cnn_preset, micro_tokenizer, tmp_path):
    p = copy.deepcopy(cnn_preset)
    model = build_model(p, micro_tokenizer)
    save_checkpoint(tmp_path / "ck", model, p, micro_tokenizer)
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["preset"]["model"]["encoder"] == "cnn"
    loaded, _, preset, _ = load_checkpoint(tmp_path / "ck")
    assert preset.model.encoder == "cnn" and isinstance(loaded.image_encoder, ConvEncoder)
    state = encoder_state(loaded)
    clf = build_classifier(preset.model, 4, state)
    for k, v in state.items():
        assert torch.equal(clf.state_dict()[k], v), k
    vit = copy.deepcopy(p)
    vit.model.encoder = "vit"
    with pytest.raises(ValueError, match="do not fit"):  # ViT weights into the conv classifier
        build_classifier(preset.model, 4, encoder_state(build_model(vit, micro_tokenizer)))


def test_vit_only_features_say_so(cnn_preset, tmp_path):
    net = build_classifier(cnn_preset.model, 2)
    with pytest.raises(ValueError, match="attention rollout needs the ViT encoder"):
        classifier_saliency(net, torch.randn(1, 1, 32, 32), 0)
    with pytest.raises(ValueError, match="ImageNet weights are for the ViT encoder"):
        imagenet_encoder_state(cnn_preset.model, str(tmp_path / "none.safetensors"))
    bad = copy.deepcopy(cnn_preset.model)
    bad.encoder = "resnet"
    with pytest.raises(ValueError, match="encoder='resnet' is not valid"):
        build_classifier(bad, 2)


def test_conv_scale_is_full_with_the_conv_encoder_and_a_longer_stage2_at_mask_ratio_025(tmp_path):
    conv, full = scaled_preset("conv"), scaled_preset("full")
    assert conv.model.encoder == "cnn" and full.model.encoder == "vit"
    assert conv.data == full.data and conv.stage1 == full.stage1 and conv.finetune == full.finetune
    assert (conv.stage2.epochs, conv.stage2.lr, conv.stage2.mask_ratio) == (24, 3e-4, 0.25)
    assert full.stage2.mask_ratio == 0.5
    # the CMITM link is the preset's own stage 2 (ratio 0.25); the paper's ratio is spelled out
    keys = {m: chain_keys(r, conv) for m, (_, r) in RECIPES.items()}
    assert keys["cmitm"] == keys["cmitm_m0.25"] == ["stage1", "stage1__stage2"]
    assert keys["cmitm_m0.75"] == ["stage1", "stage1__stage2-m0.75"]
    # an output folder made with the ViT is refused for the conv encoder, naming what differs
    (tmp_path / "preset.json").write_text(json.dumps(full.to_dict()))
    check_same_preset(tmp_path, full)
    with pytest.raises(ValueError, match="model.encoder: saved 'vit', now 'cnn'"):
        check_same_preset(tmp_path, conv)


def test_cli_trains_the_conv_encoder_and_its_checkpoint_keeps_it(tmp_path, micro_preset, monkeypatch):
    from cmitm_lib import cli

    p = copy.deepcopy(micro_preset)
    p.data.n_pretrain, p.data.n_heldout, p.data.n_finetune = 64, 32, (100, 32, 32)
    monkeypatch.setattr(cli, "get_preset", lambda name: copy.deepcopy(p))
    monkeypatch.setattr("cmitm_lib.data.cache_dir", lambda: tmp_path / "cache")
    s1, s2 = str(tmp_path / "s1"), str(tmp_path / "s2")
    cli.main(["pretrain", "--stage", "1", "--encoder", "cnn", "--epochs", "1", "--batch-size", "16",
              "--checkpoint-out", s1])
    assert isinstance(load_checkpoint(s1)[0].image_encoder, ConvEncoder)
    cli.main(["pretrain", "--stage", "2", "--epochs", "1", "--batch-size", "16", "--checkpoint-in", s1,
              "--checkpoint-out", s2])  # no --encoder: the checkpoint's
    assert load_checkpoint(s2)[2].model.encoder == "cnn"
    cli.main(["finetune", "--checkpoint-in", s2, "--fractions", "1.0", "--epochs", "1",
              "--out-dir", str(tmp_path / "ft")])
    assert json.loads((tmp_path / "ft" / "finetune_metrics.json").read_text())[0]["init"] == s2
    with pytest.raises(ValueError, match="holds a 'cnn' image encoder; drop --encoder"):
        cli.main(["finetune", "--encoder", "vit", "--checkpoint-in", s2, "--fractions", "1.0", "--epochs", "1",
                  "--out-dir", str(tmp_path / "ft")])


@pytest.mark.slow
def test_lessons_2_to_4_run_with_the_conv_encoder(tmp_path):
    """Lesson 2's `encoder` parameter builds the conv E_v; lessons 3 and 4 follow the checkpoint and skip
    attention rollout (ViT only) with a message instead of an error."""
    from pathlib import Path

    pm = pytest.importorskip("papermill")
    root = Path(__file__).resolve().parents[1]
    small = {"epochs": 1, "batch_size": 16, "out_dir": str(tmp_path / "runs")}

    def lesson(name: str, **params):
        out = tmp_path / name
        pm.execute_notebook(str(root / "notebooks" / name), str(out), cwd=str(root), parameters={**small, **params},
                            kernel_name="python3", progress_bar=False)
        return out.read_text()

    lesson("02_stage1.ipynb", encoder="cnn", n_train_pairs=64, n_show=2, checkpoint_out=str(tmp_path / "stage1"))
    assert json.loads((tmp_path / "stage1" / "config.json").read_text())["preset"]["model"]["encoder"] == "cnn"
    text = lesson("03_stage2.ipynb", n_train_pairs=64, checkpoint_in=str(tmp_path / "stage1"),
                  checkpoint_out=str(tmp_path / "stage2"))
    assert "this checkpoint's E_v is 'cnn'" in text
    text = lesson("04_finetune.ipynb", fractions=[0.01], checkpoint_in=str(tmp_path / "stage2"),
                  checkpoint_stage1=str(tmp_path / "stage1"))
    assert "this checkpoint's E_v is 'cnn'" in text and (tmp_path / "runs" / "finetune_results.json").is_file()
    with pytest.raises(pm.PapermillExecutionError, match="encoder='mlp' is not valid"):
        lesson("02_stage1.ipynb", encoder="mlp", checkpoint_out=str(tmp_path / "bad"))
