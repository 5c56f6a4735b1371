"""`cmitm export`: a checkpoint's encoders for your own code, in the formats timm and transformers load.

    cmitm export --checkpoint runs/paper/stage2 --out runs/paper/export

``OUT/image_encoder/``: E_v as a timm ``VisionTransformer`` state dict (``model.safetensors``) and
``config.json`` with ``architecture`` (a timm model name) and ``kwargs`` (what ``timm.create_model``
needs on top of it: img_size, patch_size, in_chans=1, embed_dim, depth, num_heads, global_pool, ...),
plus the input normalisation. The fixed sin-cos positions are in ``pos_embed``. Load it with::

    cfg = json.load(open("OUT/image_encoder/config.json"))
    vit = timm.create_model(cfg["architecture"], pretrained=True,
                            pretrained_cfg_overlay=dict(file="OUT/image_encoder/model.safetensors"),
                            **{**cfg["kwargs"], "num_classes": K})   # K = 0: pooled features

``OUT/text_encoder/``: E_t (a transformers ``BertModel``) and its tokenizer, written with
``save_pretrained``: ``AutoModel.from_pretrained`` and ``AutoTokenizer.from_pretrained`` load them;
the kit's report embedding is ``last_hidden_state[:, 0]`` (the [CLS] token) before h_t.

Only the paper's ViT exports to timm: the opt-in ``encoder="cnn"`` is refused with an error.
Nothing is pickled and nothing is downloaded.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import timm
import torch
import torch.nn as nn
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from .checkpoint import load_checkpoint
from .paths import resolve

TIMM_NAMES = {192: "vit_tiny_patch16_224", 384: "vit_small_patch16_224", 768: "vit_base_patch16_224",
              1024: "vit_large_patch16_224"}  # by width; the kwargs override every size
PRESET_NAMES = {"paper": "vit_base_patch16_224", "tiny": "vit_tiny_patch16_224"}


def timm_kwargs(vit: nn.Module) -> dict:
    """The `timm.create_model` keyword arguments that rebuild ``vit``, read from the module itself."""
    if not isinstance(vit, VisionTransformer):
        raise ValueError(f"E_v is a {type(vit).__name__}, not a timm VisionTransformer (the opt-in encoder='cnn' "
                         f"has no timm equivalent); export works for checkpoints with the paper's ViT encoder")
    block = vit.blocks[0]
    return {
        "img_size": vit.patch_embed.img_size[0], "patch_size": vit.patch_embed.patch_size[0],
        "in_chans": vit.patch_embed.proj.in_channels, "embed_dim": vit.embed_dim, "depth": len(vit.blocks),
        "num_heads": block.attn.num_heads, "mlp_ratio": block.mlp.fc1.out_features / vit.embed_dim,
        "qkv_bias": block.attn.qkv.bias is not None, "class_token": vit.cls_token is not None,
        "global_pool": vit.global_pool, "fc_norm": not isinstance(vit.fc_norm, nn.Identity),
        "no_embed_class": vit.no_embed_class, "reg_tokens": vit.num_reg_tokens,
        "pre_norm": not isinstance(vit.norm_pre, nn.Identity), "num_classes": 0,
    }


@torch.no_grad()
def check_timm_rebuild(vit: nn.Module, architecture: str, kwargs: dict, state: dict) -> float:
    """Build ``architecture`` with ``kwargs`` in timm, load ``state`` strictly, and return the largest
    difference of the pooled features from ``vit``'s on a random image; ValueError if they differ."""
    rebuilt = timm.create_model(architecture, pretrained=False, **kwargs).eval()
    rebuilt.load_state_dict(state, strict=True)
    size = kwargs["img_size"]
    x = torch.randn(2, kwargs["in_chans"], size, size, generator=torch.Generator().manual_seed(0))
    was_training = vit.training
    vit.eval()
    ours = vit.forward_head(vit.forward_features(x), pre_logits=True)
    vit.train(was_training)
    diff = (rebuilt(x) - ours).abs().max().item()
    if diff > 1e-5:
        raise ValueError(f"timm's {architecture} with {kwargs} gives features {diff:.3g} away from E_v's; E_v is "
                         f"not a plain timm ViT, so it cannot be exported for timm.create_model")
    return diff


def export_image_encoder(vit: nn.Module, preset, out: Path) -> Path:
    """``out/model.safetensors`` + ``out/config.json`` (architecture, kwargs, input normalisation)."""
    kwargs = timm_kwargs(vit)
    architecture = PRESET_NAMES.get(preset.name) or TIMM_NAMES.get(kwargs["embed_dim"], "vit_base_patch16_224")
    state = {k: v.detach().cpu().contiguous() for k, v in vit.state_dict().items() if not k.startswith("head.")}
    check_timm_rebuild(vit, architecture, kwargs, state)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"))
    config = {"architecture": architecture, "kwargs": kwargs,
              "input": {"channels": kwargs["in_chans"], "size": kwargs["img_size"], "range": "[0, 1] grayscale",
                        "mean": preset.data.mean, "std": preset.data.std},
              "pooled_features": f"timm model(x) with num_classes=0: {kwargs['global_pool']} pool of the patch tokens",
              "positions": "fixed 2-D sin-cos, stored in pos_embed",
              "made_by": "cmitm export (cmitm-kit): E_v of a CMITM checkpoint"}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def hf_tokenizer(tokenizer, max_len: int):
    """The kit's `tokenizers.Tokenizer` as a transformers fast tokenizer (BERT special tokens), with
    truncation and padding left to the caller, as for any transformers tokenizer."""
    tok = Tokenizer.from_str(tokenizer.to_str())
    tok.no_truncation()
    tok.no_padding()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=max_len)


def export_text_encoder(text_encoder: nn.Module, tokenizer, max_len: int, out: Path) -> Path:
    """E_t and its tokenizer with ``save_pretrained`` (safetensors weights, JSON config)."""
    out.mkdir(parents=True, exist_ok=True)
    text_encoder.save_pretrained(str(out), safe_serialization=True)
    hf_tokenizer(tokenizer, max_len).save_pretrained(str(out))
    return out


README = """# Encoders exported by `cmitm export` from {checkpoint}

```python
import json, timm
cfg = json.load(open("image_encoder/config.json"))
vit = timm.create_model(cfg["architecture"], pretrained=True, pretrained_cfg_overlay=dict(
    file="image_encoder/model.safetensors"), **{{**cfg["kwargs"], "num_classes": 0}})  # or K classes
feats = vit(x)  # x: (B, 1, {size}, {size}), [0, 1] grayscale normalised with mean {mean}, std {std}
```

```python
from transformers import AutoModel, AutoTokenizer
tok, bert = AutoTokenizer.from_pretrained("text_encoder"), AutoModel.from_pretrained("text_encoder")
enc = tok(["No acute disease."], padding=True, truncation=True, return_tensors="pt")
cls = bert(**enc).last_hidden_state[:, 0]  # the report feature CMITM projects with h_t
```
"""


def export(checkpoint: str | Path, out: str | Path) -> dict:
    """Write ``out/image_encoder`` and ``out/text_encoder`` from a checkpoint folder; returns the paths."""
    model, tokenizer, preset, _ = load_checkpoint(checkpoint)
    model.eval()
    out = resolve(out)
    image = export_image_encoder(model.image_encoder, preset, out / "image_encoder")
    text = export_text_encoder(model.text_encoder, tokenizer, preset.model.max_len, out / "text_encoder")
    d = preset.data
    (out / "README.md").write_text(README.format(checkpoint=resolve(checkpoint), size=preset.model.img_size,
                                                 mean=d.mean, std=d.std))
    return {"image_encoder": str(image), "text_encoder": str(text)}


def main(argv: list[str] | None = None) -> int:
    """Entry point of `cmitm export`."""
    parser = argparse.ArgumentParser(prog="cmitm export", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder (stage 1 or stage 2)")
    parser.add_argument("--out", required=True, help="folder to write image_encoder/ and text_encoder/ to")
    args = parser.parse_args(argv)
    paths = export(args.checkpoint, args.out)
    print(f"image encoder (timm): {paths['image_encoder']}\ntext encoder (transformers): {paths['text_encoder']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
