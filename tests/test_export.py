"""`cmitm export`: E_v loads in plain timm, E_t + tokenizer in plain transformers, with the kit's features."""
import copy
import json

import numpy as np
import pytest
import torch

from cmitm_lib.checkpoint import save_checkpoint
from cmitm_lib.config import get_preset
from cmitm_lib.data.fixtures import fake_xray
from cmitm_lib.text import encode, train_tokenizer
from cmitm_lib.train import build_model

REPORTS = ["Heart size is normal. Lungs are clear.", "Small left pleural effusion, no pneumothorax.",
           "Mild cardiomegaly with a nodule in the right upper lobe and bibasilar atelectasis."]


def images(size: int, n: int = 3) -> torch.Tensor:
    """Radiograph-like inputs, normalised as the kit feeds E_v."""
    rng = np.random.default_rng(0)
    x = torch.stack([torch.from_numpy(fake_xray(rng, size, size)).float().div(255) for _ in range(n)])[:, None]
    return (x - 0.4978) / 0.2449


def kit_image_features(vit, x):
    with torch.no_grad():
        return vit.eval().forward_head(vit.forward_features(x), pre_logits=True)


def kit_text_features(text_encoder, tokenizer, max_len):
    enc = encode(tokenizer, REPORTS, max_len)
    with torch.no_grad():
        return text_encoder.eval()(input_ids=enc.input_ids, attention_mask=enc.attention_mask).last_hidden_state[:, 0]


def assert_same_image_features(out, vit, num_classes=0):
    import timm

    cfg = json.loads((out / "image_encoder" / "config.json").read_text())
    loaded = timm.create_model(cfg["architecture"], pretrained=True, **{**cfg["kwargs"], "num_classes": num_classes},
                               pretrained_cfg_overlay=dict(file=str(out / "image_encoder" / "model.safetensors")))
    x = images(cfg["kwargs"]["img_size"])
    with torch.no_grad():
        ours, theirs = kit_image_features(vit, x), loaded.eval().forward_head(loaded.forward_features(x),
                                                                              pre_logits=True)
    assert ours.shape == theirs.shape and (ours - theirs).abs().max().item() <= 1e-5
    assert cfg["kwargs"]["global_pool"] == vit.global_pool and cfg["kwargs"]["in_chans"] == 1
    return cfg, loaded


def assert_same_text_features(out, text_encoder, tokenizer, max_len):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out / "text_encoder"))
    bert = AutoModel.from_pretrained(str(out / "text_encoder")).eval()
    ours = kit_text_features(text_encoder, tokenizer, max_len)
    for padding in ("max_length", True):  # the kit pads to max_len; the longest report is enough
        enc = tok(REPORTS, padding=padding, truncation=True, max_length=max_len, return_tensors="pt")
        with torch.no_grad():
            theirs = bert(**enc).last_hidden_state[:, 0]
        assert (ours - theirs).abs().max().item() <= 1e-5
    assert tok(REPORTS[0])["input_ids"] == encode(tokenizer, [REPORTS[0]], max_len).input_ids[0][:len(
        tok(REPORTS[0])["input_ids"])].tolist()


def test_tiny_checkpoint_exports_to_timm_and_transformers(tmp_path, capsys):
    from cmitm_lib import cli

    preset = get_preset("tiny")
    tokenizer = train_tokenizer(REPORTS * 4, preset.model.vocab_size, min_frequency=1)
    model = build_model(preset, tokenizer, seed=0)
    save_checkpoint(tmp_path / "ckpt", model, preset, tokenizer, {"stage": "stage2"})
    out = tmp_path / "export"
    cli.main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(out)])
    assert "timm" in capsys.readouterr().out
    cfg, _ = assert_same_image_features(out, model.image_encoder)
    assert cfg["architecture"] == "vit_tiny_patch16_224"
    assert {k: cfg["kwargs"][k] for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads")} == \
        {"img_size": 64, "patch_size": 8, "embed_dim": 192, "depth": 6, "num_heads": 3}
    _, classifier = assert_same_image_features(out, model.image_encoder, num_classes=5)
    assert classifier.head.out_features == 5  # a fresh head on the exported E_v
    assert_same_text_features(out, model.text_encoder, tokenizer, preset.model.max_len)
    assert (out / "README.md").is_file()


def test_the_conv_encoder_is_refused_with_one_line(tmp_path, micro_preset, micro_tokenizer, monkeypatch):
    from cmitm_lib import cli

    p = copy.deepcopy(micro_preset)
    p.model.encoder = "cnn"
    save_checkpoint(tmp_path / "cnn", build_model(p, micro_tokenizer, seed=0), p, micro_tokenizer)
    monkeypatch.setattr("sys.argv", ["cmitm", "export", "--checkpoint", str(tmp_path / "cnn"), "--out",
                                     str(tmp_path / "out")])
    monkeypatch.delenv("CMITM_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        cli.entry()
    assert str(exit_info.value).startswith("cmitm: error: E_v is a ConvEncoder, not a timm VisionTransformer")
    assert not (tmp_path / "out" / "image_encoder").exists()


@pytest.mark.slow
def test_paper_encoders_export_to_timm_and_transformers(tmp_path):
    """ViT-B/16 and BERT-base with random weights (building the whole paper CMITM is not needed)."""
    from transformers import BertModel

    from cmitm_lib.export import export_image_encoder, export_text_encoder
    from cmitm_lib.models import bert_config, build_vit

    preset = get_preset("paper")
    tokenizer = train_tokenizer(REPORTS * 4, 500, min_frequency=1)
    preset.model.vocab_size = tokenizer.get_vocab_size()
    torch.manual_seed(0)
    vit, bert = build_vit(preset.model), BertModel(bert_config(preset.model), add_pooling_layer=False)
    export_image_encoder(vit, preset, tmp_path / "image_encoder")
    export_text_encoder(bert, tokenizer, preset.model.max_len, tmp_path / "text_encoder")
    cfg, _ = assert_same_image_features(tmp_path, vit)
    assert cfg["architecture"] == "vit_base_patch16_224" and cfg["kwargs"]["img_size"] == 224
    assert_same_text_features(tmp_path, bert, tokenizer, preset.model.max_len)
