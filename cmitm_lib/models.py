"""The CMITM model (Fig. 1 of the paper) built from timm and transformers blocks.

Names follow the paper: E_v image encoder, D_v image decoder, D_r representation decoder,
E_t text encoder, D_t text token classifier, h_v / h_t projections. Masking follows MAE:
shuffle patch tokens by argsort of uniform noise, keep the first ones, and undo the shuffle
with ``ids_restore``.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file
from timm.models._manipulate import adapt_input_conv
from timm.models.vision_transformer import Block, VisionTransformer, checkpoint_filter_fn, global_pool_nlc
from transformers import BertConfig, BertModel
from transformers.models.bert.modeling_bert import BertPredictionHeadTransform

from .config import ENCODERS, GLOBAL_POOLS, ModelConfig, check_choice
from .losses import info_nce, masked_patch_mse, masked_token_ce


# ---------------------------------------------------------------------------------------------
# Patches, positions and masking
# ---------------------------------------------------------------------------------------------
def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C), patches in row-major order, pixels (p, p, C) inside a patch."""
    b, c, h, w = imgs.shape
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by the patch size {p}")
    x = imgs.reshape(b, c, h // p, p, w // p, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, p: int, c: int = 1) -> torch.Tensor:
    """(B, N, p*p*C) -> (B, C, H, W); the inverse of `patchify` for square images."""
    b, n, _ = x.shape
    g = int(math.isqrt(n))
    if g * g != n:
        raise ValueError(f"{n} patches do not form a square grid")
    x = x.reshape(b, g, g, p, p, c)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(b, c, g * p, g * p)


def masking_indices(b: int, n: int, mask_ratio: float, device=None, generator: torch.Generator | None = None):
    """MAE per-sample random masking by argsort of uniform noise, as indices.

    Returns ids_keep (B, round((1 - r) N)), mask (B, N) with 1 = masked in the original patch order,
    and ids_restore (B, N) that undoes the shuffle.
    """
    len_keep = int(round(n * (1 - mask_ratio)))
    noise = torch.rand(b, n, device=device, generator=generator)
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(b, n, device=device)
    mask[:, :len_keep] = 0
    return ids_shuffle[:, :len_keep], torch.gather(mask, 1, ids_restore), ids_restore


def keep_tokens(x: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
    """(B, N, D) -> (B, N_keep, D), the tokens ``ids_keep`` names, in that order."""
    return torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def random_masking(x: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None):
    """MAE masking of tokens x (B, N, D). Returns x_visible (B, round((1 - r) N), D), mask (B, N) with
    1 = masked in the original patch order, and ids_restore (B, N) that undoes the shuffle.
    """
    ids_keep, mask, ids_restore = masking_indices(x.shape[0], x.shape[1], mask_ratio, x.device, generator)
    return keep_tokens(x, ids_keep), mask, ids_restore


def sincos_pos_embed(dim: int, grid: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sin-cos positions (1, [1 +] grid*grid, dim), MAE's formula (omega = 1/10000^(k/(dim/4)))."""
    if dim % 4:
        raise ValueError(f"embedding dim {dim} must be divisible by 4 for 2-D sin-cos positions")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64),
                            torch.arange(grid, dtype=torch.float64), indexing="ij")

    def embed_1d(pos):
        out = pos.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    emb = torch.cat([embed_1d(xs), embed_1d(ys)], dim=1)  # MAE: first half from w, second from h
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float().unsqueeze(0)


def unshuffle(tokens: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
    """[visible tokens, mask tokens] put back in patch order: (B, N_vis, D) -> (B, N, D)."""
    b, n_vis, d = tokens.shape
    n = ids_restore.shape[1]
    full = torch.cat([tokens, mask_token.expand(b, n - n_vis, d)], dim=1)
    return torch.gather(full, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------
def build_vit(cfg: ModelConfig, num_classes: int = 0) -> VisionTransformer:
    """E_v (num_classes=0) or the fine-tuning classifier: a timm ViT with fixed sin-cos positions.

    Pooling is ``cfg.global_pool`` of the patch tokens after the final LayerNorm (fc_norm=False),
    so the classifier holds exactly E_v's parameters plus a linear head.
    """
    check_choice("global_pool", cfg.global_pool, GLOBAL_POOLS)
    vit = VisionTransformer(
        img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans, num_classes=num_classes,
        global_pool=cfg.global_pool, fc_norm=False, embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio, qkv_bias=True, class_token=True,
    )
    grid = cfg.img_size // cfg.patch_size
    vit.pos_embed.data.copy_(sincos_pos_embed(cfg.embed_dim, grid))
    vit.pos_embed.requires_grad_(False)
    return vit


def pool_tokens(x: torch.Tensor, how: str) -> torch.Tensor:
    """(B, N, D) -> (B, D): timm's pooling of a token set ("avg" or "avgmax"), as E_v's classifier pools."""
    return global_pool_nlc(x, how, num_prefix_tokens=0)


class ConvEncoder(nn.Module):
    """An opt-in E_v with a convolutional prior (``ModelConfig.encoder = "cnn"``); NOT the paper's ViT.

    For CPU budgets, where the tiny ViT learns too slowly (benchmarks/README.md, "Learnability"):
    log2(p) stages of conv3x3-GroupNorm-GELU-maxpool2 (widths 32, 64, 128, ...), then
    a conv3x3 to ``embed_dim``: one token per p x p patch, on the ViT's grid, then a LayerNorm. It
    answers to what the rest of the code asks of the timm ViT: ``forward_features`` gives (B, 1 + N, D)
    with the mean token in the class-token slot, ``forward_head(x, pre_logits)`` mean-pools the patch
    tokens, ``head`` is the linear classifier. GroupNorm, not BatchNorm: pre-training sees masked
    images, probing and fine-tuning whole ones, and batch statistics would carry over between them.
    """

    def __init__(self, cfg: ModelConfig, num_classes: int = 0):
        super().__init__()
        stages = int(math.log2(cfg.patch_size))
        if 2 ** stages != cfg.patch_size:
            raise ValueError(f"encoder='cnn' needs a power-of-two patch size, not {cfg.patch_size}")
        self.patch_size, self.num_classes = cfg.patch_size, num_classes
        widths = [cfg.in_chans] + [32 * 2 ** i for i in range(stages)]
        self.stages = nn.Sequential(*[nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.GroupNorm(8, o), nn.GELU(),
                                                    nn.MaxPool2d(2)) for i, o in zip(widths, widths[1:])])
        self.proj = nn.Conv2d(widths[-1], cfg.embed_dim, 3, padding=1)
        self.norm = nn.LayerNorm(cfg.embed_dim)
        self.head = nn.Linear(cfg.embed_dim, num_classes) if num_classes else nn.Identity()

    def patch_tokens(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, D), one token per patch in `patchify`'s row-major order."""
        return self.norm(self.proj(self.stages(imgs)).flatten(2).transpose(1, 2))

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        x = self.patch_tokens(imgs)
        return torch.cat([x.mean(1, keepdim=True), x], dim=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = x[:, 1:].mean(1)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(imgs))


def build_encoder(cfg: ModelConfig, num_classes: int = 0) -> nn.Module:
    """E_v as ``cfg.encoder`` says: the paper's ViT (`build_vit`) or the opt-in `ConvEncoder`."""
    check_choice("encoder", cfg.encoder, ENCODERS)
    return ConvEncoder(cfg, num_classes) if cfg.encoder == "cnn" else build_vit(cfg, num_classes)


def encode_visible_cnn(enc: ConvEncoder, imgs: torch.Tensor, mask_ratio: float,
                       generator: torch.Generator | None = None):
    """`encode_visible` for the ConvEncoder, leak-free (as SimMIM / ConvMAE): the masked patches are
    zeroed in the image before the convolutions, whose receptive fields cross patch borders, so no
    visible token sees masked content; then only the visible tokens are kept (class slot: their mean)."""
    p = enc.patch_size
    n = (imgs.shape[-2] // p) * (imgs.shape[-1] // p)
    ids_keep, mask, ids_restore = masking_indices(imgs.shape[0], n, mask_ratio, imgs.device, generator)
    hidden = unpatchify(mask.unsqueeze(-1).expand(-1, -1, p * p * imgs.shape[1]), p, imgs.shape[1])
    x = keep_tokens(enc.patch_tokens(imgs * (1 - hidden)), ids_keep)
    return torch.cat([x.mean(1, keepdim=True), x], dim=1), mask, ids_restore


def encode_visible(vit: nn.Module, imgs: torch.Tensor, mask_ratio: float,
                   generator: torch.Generator | None = None):
    """E_v on the visible patches only (MAE). Returns latent (B, 1 + N_vis, D), mask, ids_restore.
    A `ConvEncoder` goes through `encode_visible_cnn`."""
    if isinstance(vit, ConvEncoder):
        return encode_visible_cnn(vit, imgs, mask_ratio, generator)
    x = vit.patch_embed(imgs) + vit.pos_embed[:, 1:]
    x, mask, ids_restore = random_masking(x, mask_ratio, generator)
    cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    x = vit.blocks(vit.norm_pre(x))
    return vit.norm(x), mask, ids_restore


class TokenDecoder(nn.Module):
    """[visible tokens, mask tokens] + fixed positions -> transformer blocks -> all patch tokens.

    Used twice: as D_v with a linear pixel predictor (``out_dim``), and as D_r without one.
    """

    def __init__(self, in_dim: int, dim: int, depth: int, heads: int, grid: int,
                 mlp_ratio: float = 4.0, out_dim: int | None = None):
        super().__init__()
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_pos_embed(dim, grid), persistent=False)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, out_dim) if out_dim else nn.Identity()
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.embed(latent)
        patches = unshuffle(x[:, 1:], self.mask_token, ids_restore)
        x = torch.cat([x[:, :1], patches], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.pred(x[:, 1:])  # drop the class token


class ProjectionHead(nn.Module):
    """h_v / h_t as in the CMITM code: Linear -> BN -> ReLU -> Linear -> BN (no affine)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, out_dim), nn.BatchNorm1d(out_dim, affine=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def bert_config(cfg: ModelConfig) -> BertConfig:
    return BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.text_hidden, num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads, intermediate_size=cfg.text_intermediate,
        max_position_embeddings=max(cfg.max_len, 512 if cfg.text_hidden >= 768 else cfg.max_len),
        attn_implementation="sdpa",
    )


# ---------------------------------------------------------------------------------------------
# CMITM
# ---------------------------------------------------------------------------------------------
MODULES = ("image_encoder", "image_decoder", "rep_decoder", "text_encoder", "text_decoder",
           "image_to_text", "image_proj", "text_proj")

# Which modules each training stage updates (paper, Sec. 2.3).
STAGE_MODULES = {
    "stage1": ("image_encoder", "image_decoder", "text_encoder", "text_decoder", "image_to_text"),
    "stage2": ("image_encoder", "text_encoder", "rep_decoder", "image_proj", "text_proj"),
    "joint": MODULES,
    "mae": ("image_encoder", "image_decoder"),  # baseline: image reconstruction only (MAE)
}


class CMITM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        grid = cfg.img_size // cfg.patch_size
        target_p = cfg.patch_size * cfg.target_scale
        self.image_encoder = build_encoder(cfg)  # E_v
        self.image_decoder = TokenDecoder(cfg.embed_dim, cfg.dec_dim, cfg.dec_depth, cfg.dec_heads, grid,
                                          cfg.mlp_ratio, out_dim=target_p * target_p * cfg.in_chans)  # D_v
        self.rep_decoder = TokenDecoder(cfg.embed_dim, cfg.rep_dim, cfg.rep_depth, cfg.rep_heads, grid,
                                        cfg.mlp_ratio)  # D_r
        bcfg = bert_config(cfg)
        self.text_encoder = BertModel(bcfg, add_pooling_layer=False)  # E_t
        self.text_decoder = nn.Sequential(BertPredictionHeadTransform(bcfg),
                                          nn.Linear(cfg.text_hidden, cfg.vocab_size))  # D_t
        self.image_to_text = nn.Linear(cfg.embed_dim, cfg.text_hidden)  # AvgPool(q_um) -> text width
        rep_width = cfg.rep_dim if cfg.use_rep_decoder else cfg.embed_dim
        self.image_proj = ProjectionHead(rep_width, cfg.proj_hidden, cfg.proj_dim)  # h_v
        self.text_proj = ProjectionHead(cfg.text_hidden, cfg.proj_hidden, cfg.proj_dim)  # h_t

    # -- image branch -------------------------------------------------------------------------
    def encode_image(self, imgs, mask_ratio, generator=None):
        return encode_visible(self.image_encoder, imgs, mask_ratio, generator)

    def reconstruct(self, latent, ids_restore):
        """D_v: predicted 2x patches (B, N, (2p)^2 C)."""
        return self.image_decoder(latent, ids_restore)

    def image_embedding(self, latent, ids_restore):
        """z_v = h_v(AvgPool(D_r([q_um, q_m] + e_p))), or h_v(AvgPool(q_um)) without D_r (pool: cfg.global_pool)."""
        tokens = self.rep_decoder(latent, ids_restore) if self.cfg.use_rep_decoder else latent[:, 1:]
        pooled = pool_tokens(tokens, self.cfg.global_pool)
        return self.image_proj(pooled)

    def eval_image_embedding(self, imgs, mask_ratio: float, n_masks: int = 8, seed: int = 0):
        """z_v of held-out images as stage 2 trained it: the mean of the unit-norm z_v over ``n_masks``
        seeded masks at ``mask_ratio`` (one unmasked pass at 0). Unmasked images fed to a model trained on
        masked ones put D_r and h_v's BatchNorm statistics out of range and give near-constant z_v."""
        if mask_ratio == 0:
            latent, _, ids_restore = self.encode_image(imgs, 0.0)
            return nn.functional.normalize(self.image_embedding(latent, ids_restore).float(), dim=-1)
        total = 0
        for k in range(n_masks):
            g = torch.Generator(imgs.device).manual_seed(seed + k)
            latent, _, ids_restore = self.encode_image(imgs, mask_ratio, g)
            total = total + nn.functional.normalize(self.image_embedding(latent, ids_restore).float(), dim=-1)
        return nn.functional.normalize(total / n_masks, dim=-1)

    # -- text branch --------------------------------------------------------------------------
    def text_embedding(self, input_ids, attention_mask):
        """z_t = h_t(E_t(full report)[CLS])."""
        out = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask)
        return self.text_proj(out.last_hidden_state[:, 0])

    def masked_text_logits(self, latent, masked_ids, attention_mask, mlm_labels):
        """D_t(E_t(q_t + linear(AvgPool(q_um)))) at the masked positions only.

        Returns (logits (M, V), labels (M,)) for the M masked tokens of the batch.
        """
        image_global = self.image_to_text(pool_tokens(latent[:, 1:], self.cfg.global_pool))
        embeds = self.text_encoder.embeddings.word_embeddings(masked_ids) + image_global[:, None, :]
        hidden = self.text_encoder(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
        selected = mlm_labels != -100
        return self.text_decoder(hidden[selected]), mlm_labels[selected]

    # -- the three objectives -----------------------------------------------------------------
    def image_reconstruction_loss(self, batch, latent, mask, ids_restore):
        """L_vr (eq. 2)."""
        p = self.cfg.patch_size * self.cfg.target_scale
        pred = self.reconstruct(latent, ids_restore)
        return masked_patch_mse(pred, patchify(batch["target"], p), mask, self.cfg.norm_pix)

    def text_reconstruction_loss(self, batch, latent):
        """L_tr (eq. 3)."""
        logits, labels = self.masked_text_logits(latent, batch["masked_ids"], batch["attention_mask"],
                                                 batch["mlm_labels"])
        return masked_token_ce(logits, labels)

    def forward(self, batch: dict, stage: str, mask_ratio: float, temperature: float = 0.07,
                generator: torch.Generator | None = None) -> dict:
        """One training step's losses for ``stage`` in {"stage1", "stage2", "joint", "mae"}.

        "mae" is the image-only baseline: L_vr alone, no text.
        """
        latent, mask, ids_restore = self.encode_image(batch["image"], mask_ratio, generator)
        out = {}
        if stage in ("stage1", "joint", "mae"):
            out["loss_vr"] = self.image_reconstruction_loss(batch, latent, mask, ids_restore)
        if stage in ("stage1", "joint"):
            out["loss_tr"] = self.text_reconstruction_loss(batch, latent)
        if stage in ("stage2", "joint"):
            z_v = self.image_embedding(latent, ids_restore)
            z_t = self.text_embedding(batch["input_ids"], batch["attention_mask"])
            out["loss_c"] = info_nce(z_v, z_t, temperature)
        out["loss"] = sum(v for k, v in out.items() if k.startswith("loss_"))
        return out


def set_trainable(model: CMITM, stage: str) -> list[str]:
    """Freeze every module the stage does not train; return the names of the trained ones."""
    if stage not in STAGE_MODULES:
        raise ValueError(f"stage={stage!r} is not valid; choose one of: {', '.join(STAGE_MODULES)}")
    names = [m for m in STAGE_MODULES[stage] if not (m == "rep_decoder" and not model.cfg.use_rep_decoder)]
    for name in MODULES:
        for p in getattr(model, name).parameters():
            p.requires_grad_(name in names)
    if isinstance(model.image_encoder, VisionTransformer):
        model.image_encoder.pos_embed.requires_grad_(False)  # fixed sin-cos
    return names


@torch.no_grad()
def copy_decoder_embedding(model: CMITM) -> bool:
    """Give D_r the token embedding and mask token that stage 1 trained in D_v.

    In the CMITM code D_r reads D_v's embedded tokens (shared ``decoder_embed`` and ``mask_token``),
    so stage 2 starts from an input embedding trained by reconstruction. Here the two decoders own
    separate copies (so stage 2 leaves D_v untouched) and stage 1 ends by copying. Returns False
    when the widths differ (then D_r keeps its own initialisation).
    """
    cfg = model.cfg
    if cfg.rep_dim != cfg.dec_dim:
        return False
    model.rep_decoder.embed.load_state_dict(model.image_decoder.embed.state_dict())
    model.rep_decoder.mask_token.copy_(model.image_decoder.mask_token)
    return True


def build_classifier(cfg: ModelConfig, num_classes: int, encoder_state: dict | None = None) -> nn.Module:
    """The fine-tuning network: E_v (pre-trained weights when given) + a linear head on mean-pooled tokens."""
    vit = build_encoder(cfg, num_classes=num_classes)
    if encoder_state is not None:
        missing, unexpected = vit.load_state_dict(encoder_state, strict=False)
        if unexpected or set(missing) != {"head.weight", "head.bias"}:
            raise ValueError(f"encoder weights do not fit the classifier: missing={missing}, "
                             f"unexpected={unexpected}; was the checkpoint built with another preset?")
    nn.init.trunc_normal_(vit.head.weight, std=2e-5)  # MAE fine-tuning head init, for both inits
    nn.init.zeros_(vit.head.bias)
    return vit


def imagenet_encoder_state(cfg: ModelConfig, path: str, log=print) -> dict:
    """E_v weights from a local timm ViT checkpoint (e.g. ImageNet ``vit_base_patch16_224`` for the paper
    preset), in the form `build_classifier` and `CMITM.image_encoder` load. Nothing is downloaded.

    Adapted with timm's own helpers: RGB patch kernels summed to ``in_chans`` (``adapt_input_conv``),
    patch kernels and learned positions resampled to this preset's patch size and grid
    (``checkpoint_filter_fn``); the learned positions replace E_v's fixed sin-cos ones (they stay
    frozen). A deeper checkpoint gives its first ``cfg.depth`` blocks (said in the log); width and
    heads must match. The classification head is dropped.
    """
    if cfg.encoder != "vit":
        raise ValueError(f"ImageNet weights are for the ViT encoder; this preset has encoder={cfg.encoder!r}")
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no timm weights at {file}; pass the path of a local ViT checkpoint in "
                                f"safetensors form (e.g. the model.safetensors of timm/vit_base_patch16_224."
                                f"augreg2_in21k_ft_in1k from the Hugging Face hub, downloaded beforehand)")
    state = load_file(str(file))
    if "patch_embed.proj.weight" not in state or "pos_embed" not in state:
        raise ValueError(f"{file} is not a timm VisionTransformer state dict (no patch_embed.proj.weight / "
                         f"pos_embed)")
    width = state["patch_embed.proj.weight"].shape[0]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    if width != cfg.embed_dim or depth < cfg.depth:
        raise ValueError(f"{file} holds a ViT of width {width} and depth {depth}; this preset's E_v has width "
                         f"{cfg.embed_dim} and depth {cfg.depth} (the paper preset matches ViT-B/16: 768, 12)")
    if depth > cfg.depth:
        log(f"{file.name}: using the first {cfg.depth} of its {depth} blocks")
        state = {k: v for k, v in state.items() if not k.startswith("blocks.") or int(k.split(".")[1]) < cfg.depth}
    state = {k: v for k, v in state.items() if not k.startswith("head")}
    state["patch_embed.proj.weight"] = adapt_input_conv(cfg.in_chans, state["patch_embed.proj.weight"])
    vit = build_vit(cfg)
    state = checkpoint_filter_fn(state, vit)
    missing, unexpected = vit.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{file} does not fit E_v: missing={missing}, unexpected={unexpected} (heads or MLP "
                         f"ratio differ from the preset's?)")
    return {k: v.detach().clone() for k, v in vit.state_dict().items()}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_table(model: CMITM) -> dict[str, int]:
    """Parameters per module (millions are easier to read: divide by 1e6)."""
    return {name: count_parameters(getattr(model, name)) for name in MODULES}
