"""Where does the encoder look? Relevance maps over the radiograph for the ViT image encoder.

Two targets share one method:

* the fine-tuned classifier's logit for a finding (`classifier_saliency`);
* the image-report similarity cos(z_v, z_t), or the zero-shot score cos(z_v, positive) - cos(z_v,
  negated) of a finding (`similarity_saliency`), through E_v and the representation decoder D_r.

The method is Chefer et al.'s gradient-weighted attention rollout ("Generic attention-model
explainability", ICCV 2021): for every attention layer, the head-averaged positive part of
(gradient of the target x attention probabilities) is accumulated as R <- R + A_bar R, starting from
R = I. Because the gradient comes from the chosen target, the map is specific to the finding or the
report. ``method="rollout"`` gives plain attention rollout (Abnar & Zuidema 2020), which ignores the
target: a useful baseline. Both encoders here pool the MEAN of the patch tokens (not a class token),
so a patch's relevance is its column of R averaged over the patch rows, leaving out what each patch
keeps of itself (the identity for Chefer's rule, the diagonal for plain rollout).

timm computes attention with fused scaled-dot-product attention by default (``Attention.fused_attn``,
set from ``timm.layers.use_fused_attn()``), which never materialises the attention probabilities.
`record_attention` switches the chosen blocks to timm's explicit path (softmax, then ``attn_drop``)
and records the output of ``attn_drop`` with a forward hook; nothing about attention is re-implemented.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from .data import regions, synth
from .data.datasets import classifier_view
from .evaluate import embed_texts

METHODS = ("grad_rollout", "rollout")


@contextlib.contextmanager
def record_attention(blocks):
    """Inside the context every forward pass appends each block's attention probabilities
    (B, heads, T, T) to the yielded list, in call order."""
    attns = [blk.attn for blk in blocks]
    fused = [a.fused_attn for a in attns]
    records: list[torch.Tensor] = []
    handles = [a.attn_drop.register_forward_hook(lambda m, i, out: records.append(out)) for a in attns]
    for a in attns:
        a.fused_attn = False
    try:
        yield records
    finally:
        for a, f in zip(attns, fused):
            a.fused_attn = f
        for h in handles:
            h.remove()


def rollout(attentions: list[torch.Tensor], grads: list[torch.Tensor] | None = None) -> torch.Tensor:
    """(B, T, T) relevance of every input token for every output token after all layers.

    With ``grads``: Chefer's rule R <- R + mean_h(relu(grad * A)) R from R = I. Without: Abnar &
    Zuidema's rollout R <- (0.5 mean_h(A) + 0.5 I, rows renormalised) R.
    """
    b, _, t, _ = attentions[0].shape
    eye = torch.eye(t, device=attentions[0].device).expand(b, t, t)
    r = eye.clone()
    for k, a in enumerate(attentions):
        if grads is not None:
            r = r + (grads[k] * a).clamp(min=0).mean(1) @ r
        else:
            a = 0.5 * a.mean(1) + 0.5 * eye
            r = (a / a.sum(-1, keepdim=True)) @ r
    return r


def _patch_map(attentions, target: torch.Tensor | None, method: str) -> torch.Tensor:
    """(B, g, g) patch relevance, non-negative, each map summing to 1."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not valid; choose one of: {', '.join(METHODS)}")
    grads = None
    if method == "grad_rollout":
        grads = [g.float() for g in torch.autograd.grad(target, attentions)]
    r = rollout([a.detach().float() for a in attentions], grads)
    t = r.shape[-1]
    eye = torch.eye(t, device=r.device)
    # What a token keeps of itself is not evidence: Chefer's R starts from I; plain rollout keeps a
    # large, nearly uniform diagonal through the residual share, which is left out.
    r = r - eye if grads is not None else r * (1 - eye)
    relevance = r[:, 1:, 1:].mean(1).clamp(min=0)  # mean-pooled patch rows; the class token left out
    relevance = relevance + 1e-12  # an all-zero map (no positive evidence) becomes uniform
    g = int(round((t - 1) ** 0.5))
    return (relevance / relevance.sum(-1, keepdim=True)).reshape(-1, g, g)


def _need_attention(encoder) -> None:
    if not hasattr(encoder, "blocks"):
        raise ValueError(f"attention rollout needs the ViT encoder (encoder='vit'); this one is a "
                         f"{type(encoder).__name__}, which has no attention to roll out")


def classifier_saliency(net, images: torch.Tensor, class_index: int, method: str = "grad_rollout") -> torch.Tensor:
    """(B, g, g) map of the fine-tuned classifier (`models.build_classifier`) for class ``class_index``.

    ``images`` are the classifier's normalised inputs (B, 1, H, W)."""
    _need_attention(net)
    net.eval()
    x = images.detach().clone().requires_grad_(True)  # keeps a graph even when the weights are frozen
    with torch.enable_grad(), record_attention(net.blocks) as attentions:
        logits = net(x)
        if not 0 <= class_index < logits.shape[1]:
            raise ValueError(f"class_index={class_index} is not valid; the classifier has {logits.shape[1]} classes")
        attn = list(attentions)
    return _patch_map(attn, logits[:, class_index].sum(), method)


def similarity_saliency(model, images: torch.Tensor, direction: torch.Tensor, method: str = "grad_rollout") -> torch.Tensor:
    """(B, g, g) map of the image-text score normalize(z_v) . direction, through E_v and D_r.

    ``direction`` (D,) or (B, D): a normalised report embedding gives the image-report similarity;
    positive - negated prompt embeddings give the zero-shot score of a finding (`finding_direction`).
    """
    _need_attention(model.image_encoder)
    model.eval()
    blocks = list(model.image_encoder.blocks) + (list(model.rep_decoder.blocks) if model.cfg.use_rep_decoder else [])
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad(), record_attention(blocks) as attentions:
        # E_v without masking, tokens in patch order (timm's forward_features = MAE's encoder at ratio 0)
        latent = model.image_encoder.forward_features(x)
        ids_restore = torch.arange(latent.shape[1] - 1, device=x.device).expand(x.shape[0], -1)
        z = F.normalize(model.image_embedding(latent, ids_restore).float(), dim=-1)
        attn = list(attentions)
    return _patch_map(attn, (z * direction.to(z.device)).sum(), method)


@torch.no_grad()
def finding_direction(model, tokenizer, prompts: tuple, max_len: int) -> torch.Tensor:
    """positive - negated prompt embedding (each the normalised mean of its sentences): the zero-shot
    score's direction in the joint space. ``prompts`` is one entry of `evaluate.PROMPTS[...]`."""
    dev = str(next(model.parameters()).device)
    pos, neg = (F.normalize(F.normalize(embed_texts(model, tokenizer, list(p), max_len, dev), dim=-1).mean(0), dim=0)
                for p in prompts)
    return pos - neg


def to_pixels(maps: torch.Tensor, size: int) -> np.ndarray:
    """(B, g, g) patch maps -> (B, size, size) float arrays (bilinear), each summing to 1."""
    up = F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    up = up.clamp(min=0)
    return (up / up.sum((-2, -1), keepdim=True)).cpu().numpy()


def model_inputs(images: np.ndarray, preset) -> torch.Tensor:
    """uint8 (N, H, W) radiographs -> the encoder's normalised inputs (N, 1, S, S), as at evaluation."""
    x = [classifier_view(torch.from_numpy(np.asarray(im)).float().div(255)[None], preset.data,
                         preset.model.img_size, None, train=False) for im in images]
    return torch.stack(x)


# ---------------------------------------------------------------------------------------------
# Overlap with the ground-truth regions (SynthCXR: `data.regions`)
# ---------------------------------------------------------------------------------------------
def mass_in_region(saliency: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(share of the map's mass inside ``mask``, share of the image ``mask`` covers = the chance level)."""
    if saliency.shape != mask.shape:
        raise ValueError(f"map shape {saliency.shape} differs from mask shape {mask.shape}; "
                         "upsample the map with to_pixels(maps, size) first")
    total = float(saliency.sum())
    if not total > 0:
        raise ValueError("the map has no mass (sum <= 0); pass a non-negative map with a positive sum")
    return float(saliency[mask].sum() / total), float(mask.mean())


def region_overlap(maps: list[np.ndarray], masks: list[np.ndarray]) -> dict:
    """Mean mass inside the region, mean area of the region (chance) and their ratio, over cases.

    Cases whose mask is empty (the finding left no visible trace) are skipped and counted."""
    pairs = [mass_in_region(m, k) for m, k in zip(maps, masks, strict=True) if k.any()]
    if not pairs:
        raise ValueError("no case has a non-empty region; pick cases where the finding is present")
    mass, area = np.mean(pairs, axis=0)
    return {"mass": float(mass), "area": float(area), "lift": float(mass / area), "n": len(pairs),
            "empty": len(masks) - len(pairs)}


def synth_cases(seed: int, domain: str, start: int, n: int, size: int = 128, level: str = "lesson") -> dict:
    """SynthCXR cases start .. start + n - 1 with their images (uint8), labels and finding regions."""
    batch = synth.generate_cases(n, seed=seed, size=size, domain=domain, start=start, level=level)
    masks = [regions.case_regions(seed, start + i, size, domain, level=level) for i in range(n)]
    return {"images": batch.images, "labels": batch.labels, "regions": masks, "findings": list(synth.FINDINGS),
            "reports": batch.reports, "index": list(range(start, start + n))}


def overlap_by_finding(explain, cases: dict, findings: list[str], max_cases: int = 40, batch_size: int = 16) -> dict:
    """For each finding, `region_overlap` over (up to ``max_cases``) cases that have it.

    ``explain(images uint8 (B, H, W), finding) -> (B, g, g)`` computes the maps (see `classifier_explainer`,
    `similarity_explainer`)."""
    size = cases["images"].shape[-1]
    out = {}
    for name in findings:
        k = cases["findings"].index(name)
        idx = np.flatnonzero(cases["labels"][:, k] == 1)[:max_cases]
        if len(idx) == 0:
            raise ValueError(f"no case has {name}; generate more cases")
        maps = []
        for i in range(0, len(idx), batch_size):
            maps.extend(to_pixels(explain(cases["images"][idx[i : i + batch_size]], name), size))
        out[name] = region_overlap(maps, [cases["regions"][j][name] for j in idx])
    return out


def classifier_explainer(net, preset, classes: list[str], method: str = "grad_rollout"):
    """explain(images, finding) for a fine-tuned classifier whose outputs are ``classes``."""
    def explain(images, finding):
        return classifier_saliency(net, model_inputs(images, preset), classes.index(finding), method).detach()

    return explain


def similarity_explainer(model, tokenizer, preset, prompts: dict, method: str = "grad_rollout"):
    """explain(images, finding) for the zero-shot score of a finding (prompts: `evaluate.PROMPTS[...]`)."""
    directions = {}

    def explain(images, finding):
        if finding not in directions:
            directions[finding] = finding_direction(model, tokenizer, prompts[finding], preset.model.max_len)
        return similarity_saliency(model, model_inputs(images, preset), directions[finding], method).detach()

    return explain
