"""ImageNet init from a local timm checkpoint: channel, patch, grid and depth adaptation, and errors.

The "checkpoint" is a randomly initialised RGB timm ViT saved to safetensors, so nothing is downloaded.
"""
import copy

import pytest
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from cmitm_lib.models import build_classifier, build_vit, imagenet_encoder_state


def _timm_checkpoint(tmp_path, cfg, patch, img, depth, width=None):
    torch.manual_seed(0)
    src = VisionTransformer(img_size=img, patch_size=patch, in_chans=3, num_classes=10, embed_dim=width or cfg.embed_dim,
                            depth=depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=True)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    return src, path


def test_same_patch_size_sums_rgb_kernels_and_keeps_blocks(tmp_path, micro_preset):
    cfg = micro_preset.model  # 32 px, patch 8, width 32, depth 2
    src, path = _timm_checkpoint(tmp_path, cfg, patch=8, img=64, depth=cfg.depth)
    state = imagenet_encoder_state(cfg, path, log=lambda *_: None)
    assert state["patch_embed.proj.weight"].shape == (cfg.embed_dim, 1, 8, 8)
    torch.testing.assert_close(state["patch_embed.proj.weight"], src.patch_embed.proj.weight.sum(1, keepdim=True))
    torch.testing.assert_close(state["blocks.1.mlp.fc2.weight"], src.blocks[1].mlp.fc2.weight)
    torch.testing.assert_close(state["cls_token"], src.cls_token)
    grid = cfg.img_size // cfg.patch_size
    assert state["pos_embed"].shape == (1, 1 + grid * grid, cfg.embed_dim)  # 8x8 grid resampled to 4x4
    assert not any(k.startswith("head") for k in state)
    net = build_classifier(cfg, 3, state)
    torch.testing.assert_close(net.pos_embed, state["pos_embed"])  # learned positions replace sin-cos
    assert not net.pos_embed.requires_grad
    assert net(torch.randn(2, 1, cfg.img_size, cfg.img_size)).shape == (2, 3)


def test_deeper_checkpoint_and_other_patch_size(tmp_path, micro_preset):
    cfg = micro_preset.model
    src, path = _timm_checkpoint(tmp_path, cfg, patch=16, img=64, depth=cfg.depth + 2)
    said = []
    state = imagenet_encoder_state(cfg, path, log=said.append)
    assert "first 2 of its 4 blocks" in said[0]
    assert state["patch_embed.proj.weight"].shape == (cfg.embed_dim, 1, 8, 8)  # 16 -> 8 (FlexiViT resample)
    torch.testing.assert_close(state["blocks.0.attn.qkv.weight"], src.blocks[0].attn.qkv.weight)
    assert set(state) == set(build_vit(cfg).state_dict())


def test_errors_name_the_problem(tmp_path, micro_preset):
    cfg = micro_preset.model
    with pytest.raises(FileNotFoundError, match="no timm weights"):
        imagenet_encoder_state(cfg, tmp_path / "missing.safetensors")
    _, path = _timm_checkpoint(tmp_path, cfg, patch=8, img=32, depth=cfg.depth, width=2 * cfg.embed_dim)
    with pytest.raises(ValueError, match="width 64 and depth 2"):
        imagenet_encoder_state(cfg, path)
    shallow = copy.deepcopy(cfg)
    shallow.depth = 1
    _, path = _timm_checkpoint(tmp_path, shallow, patch=8, img=32, depth=1)
    with pytest.raises(ValueError, match="depth 1"):
        imagenet_encoder_state(cfg, path)
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a timm VisionTransformer"):
        imagenet_encoder_state(cfg, tmp_path / "other.safetensors")
