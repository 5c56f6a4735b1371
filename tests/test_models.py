import copy

import pytest
import torch

from cmitm_lib.config import get_preset
from cmitm_lib.models import CMITM, MODULES, build_classifier, encode_visible, parameter_table
from cmitm_lib.train import build_model, encoder_state, pretrain


def test_paper_preset_builds_on_cpu_with_vit_b16_sizes():
    p = get_preset("paper")
    model = CMITM(p.model)
    counts = parameter_table(model)
    # ViT-B/16 on 1-channel 224 input, no head: 85.4 M (86 M for the 3-channel ImageNet model)
    assert 85.0e6 < counts["image_encoder"] < 86.5e6
    assert len(model.image_decoder.blocks) == 4 and len(model.rep_decoder.blocks) == 2
    assert model.text_encoder.config.num_hidden_layers == 12 and model.text_encoder.config.hidden_size == 768
    assert model.image_encoder.patch_embed.patch_size == (16, 16)
    # D_v predicts a 32x32 patch of the 448 view for every 16x16 input patch
    assert model.image_decoder.pred.out_features == 32 * 32


def test_forward_shapes_and_losses(micro_preset, micro_pairs, micro_tokenizer):
    from cmitm_lib.data.datasets import PairCollate, PairDataset

    p = copy.deepcopy(micro_preset)
    model = build_model(p, micro_tokenizer)
    ds = PairDataset(micro_pairs, p.data, p.model)
    batch = PairCollate(micro_tokenizer, p.model.max_len, 0.5)([ds[i] for i in range(4)])
    assert batch["image"].shape == (4, 1, 32, 32) and batch["target"].shape == (4, 1, 64, 64)
    out = model(batch, "joint", 0.75)
    assert set(out) == {"loss_vr", "loss_tr", "loss_c", "loss"}
    assert torch.isfinite(out["loss"])
    latent, mask, ids = model.encode_image(batch["image"], 0.75)
    assert latent.shape == (4, 1 + 4, p.model.embed_dim)  # 16 patches, 4 visible + class token


def test_unmasked_encoding_equals_timm_forward(micro_preset):
    cfg = micro_preset.model
    vit = build_classifier(cfg, num_classes=3).eval()
    x = torch.randn(2, 1, cfg.img_size, cfg.img_size)
    latent, _, _ = encode_visible(vit, x, 0.0)
    ref = vit.forward_features(x)
    # same tokens up to the shuffle of patch order, hence the same mean over patches
    assert torch.allclose(latent[:, 1:].mean(1), ref[:, 1:].mean(1), atol=1e-5)
    assert torch.allclose(latent[:, 0], ref[:, 0], atol=1e-5)


def _train_one_epoch(stage, preset, pairs, tokenizer):
    """(before, after) state dicts and the set of modules whose weights changed."""
    p = copy.deepcopy(preset)
    model = build_model(p, tokenizer)
    before = copy.deepcopy(model.state_dict())
    pretrain(model, tokenizer, pairs, p, stage, epochs=1, batch_size=16, lr=1e-3, progress=False)
    after = model.state_dict()
    changed = {name for name in MODULES
               if any(not torch.equal(before[k], after[k]) for k in after if k.startswith(name + "."))}
    return before, after, changed


def test_stage2_leaves_image_and_text_decoders_untouched(micro_preset, micro_pairs, micro_tokenizer):
    _, _, changed = _train_one_epoch("stage2", micro_preset, micro_pairs, micro_tokenizer)
    assert changed == {"image_encoder", "text_encoder", "rep_decoder", "image_proj", "text_proj"}


def test_stage1_trains_reconstruction_modules_only(micro_preset, micro_pairs, micro_tokenizer):
    before, after, changed = _train_one_epoch("stage1", micro_preset, micro_pairs, micro_tokenizer)
    assert changed == {"image_encoder", "image_decoder", "text_encoder", "text_decoder", "image_to_text",
                       "rep_decoder"}
    # D_r changed only by receiving D_v's trained token embedding and mask token (CMITM code shares them)
    for k, v in after.items():
        if k.startswith("rep_decoder.") and not torch.equal(before[k], v):
            assert k.split(".", 1)[1] in {"embed.weight", "embed.bias", "mask_token"}
            assert torch.equal(v, after["image_decoder." + k.split(".", 1)[1]])


def test_finetune_model_holds_exactly_the_encoder_weights(micro_preset, micro_tokenizer):
    p = copy.deepcopy(micro_preset)
    model = build_model(p, micro_tokenizer)
    state = encoder_state(model)
    clf = build_classifier(p.model, 5, state)
    clf_state = clf.state_dict()
    assert set(clf_state) == set(state) | {"head.weight", "head.bias"}
    for k, v in state.items():
        assert torch.equal(clf_state[k], v), k
    assert clf.head.out_features == 5


def test_classifier_rejects_weights_of_another_shape(micro_preset):
    state = encoder_state(CMITM(get_preset("tiny").model))
    with pytest.raises((ValueError, RuntimeError), match="size mismatch|do not fit"):
        build_classifier(micro_preset.model, 3, state)


def test_no_representation_decoder_ablation(micro_preset, micro_pairs, micro_tokenizer):
    p = copy.deepcopy(micro_preset)
    p.model.use_rep_decoder = False
    model = build_model(p, micro_tokenizer)
    hist = pretrain(model, micro_tokenizer, micro_pairs, p, "stage2", epochs=1, batch_size=16, progress=False)
    assert hist[0]["loss_c"] > 0
