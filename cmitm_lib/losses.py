"""The three losses of the paper, each a direct transcription of its equation.

- `info_nce`          eq. (1), symmetric image<->report InfoNCE (negatives from every rank under DDP)
- `masked_patch_mse`  eq. (2), pixel MSE on masked patches only, per-patch normalised target
- `masked_token_ce`   eq. (3), cross entropy on masked report tokens only
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.nn.functional import all_gather


def gather_with_grad(z: torch.Tensor) -> torch.Tensor:
    """Concatenate ``z`` from every rank, keeping the gradient path to each rank's own rows."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z
    return torch.cat(all_gather(z), dim=0)


def info_nce(z_img: torch.Tensor, z_txt: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Eq. (1): -1/B sum_i [log softmax_k(s_ik^vt / tau)_i + log softmax_k(s_ik^tv / tau)_i].

    Inputs are L2-normalised here. Under torch.distributed the columns (the candidates k) are the
    global batch gathered from all ranks, the rows this rank's pairs; DDP's gradient averaging then
    gives exactly the gradient of the global-batch loss.
    """
    z_img = F.normalize(z_img.float(), dim=-1)
    z_txt = F.normalize(z_txt.float(), dim=-1)
    all_img, all_txt = gather_with_grad(z_img), gather_with_grad(z_txt)
    offset = dist.get_rank() * z_img.shape[0] if all_img.shape[0] != z_img.shape[0] else 0
    targets = torch.arange(z_img.shape[0], device=z_img.device) + offset
    logits_vt = z_img @ all_txt.T / temperature
    logits_tv = z_txt @ all_img.T / temperature
    return F.cross_entropy(logits_vt, targets) + F.cross_entropy(logits_tv, targets)


def normalize_patches(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """MAE's per-patch target normalisation: (t - mean) / sqrt(var + eps) over the patch's pixels."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)  # unbiased, as MAE
    return (target - mean) / (var + eps) ** 0.5


def masked_patch_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                     norm_pix: bool = True) -> torch.Tensor:
    """Eq. (2): pred/target (B, N, P), mask (B, N) with 1 = masked.

    The squared error is averaged over the P values of each patch, then over masked patches only.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if norm_pix:
        target = normalize_patches(target)
    per_patch = ((pred.float() - target.float()) ** 2).mean(dim=-1)
    mask = mask.float()
    return (per_patch * mask).sum() / mask.sum().clamp(min=1)


def masked_token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. (3): cross entropy over masked tokens only; ``labels`` is -100 wherever nothing was masked.

    Accepts (B, L, V) logits with (B, L) labels, or the already-selected (M, V) with (M,).
    The mean runs over all masked tokens of the batch (never over padding or visible tokens).
    """
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)
