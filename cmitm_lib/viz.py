"""Figures and widgets for the lessons. Each figure function returns a matplotlib Figure (tested
headless); each widget wraps one figure function with sliders/pickers for JupyterLab."""
from __future__ import annotations

import ipywidgets as w
import matplotlib.pyplot as plt
import numpy as np
import torch

from .models import CMITM, patchify, random_masking, unpatchify
from .saliency import to_pixels


def _gray(ax, img, title: str):
    ax.imshow(np.asarray(img), cmap="gray")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def masked_view(img: torch.Tensor, mask: torch.Tensor, p: int, fill: float | None = None) -> torch.Tensor:
    """(C, H, W) image with the masked patches (mask (N,) with 1 = masked) painted ``fill`` (default: min)."""
    patches = patchify(img[None], p)[0].clone()
    patches[mask.bool()] = img.min() if fill is None else fill
    return unpatchify(patches[None], p, img.shape[0])[0]


def masking_figure(images: torch.Tensor, mask_ratio: float, patch_size: int, seed: int = 0):
    """Row per image: the input, and what the encoder sees after MAE random masking."""
    gen = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    fig, axes = plt.subplots(n, 2, figsize=(4.4, 2.2 * n), squeeze=False)
    for i in range(n):
        tokens = patchify(images[i : i + 1], patch_size)
        visible, mask, _ = random_masking(tokens, mask_ratio, gen)
        _gray(axes[i, 0], images[i, 0], "input")
        _gray(axes[i, 1], masked_view(images[i], mask[0], patch_size)[0],
              f"visible {visible.shape[1]}/{tokens.shape[1]} patches")
    fig.tight_layout()
    return fig


@torch.no_grad()
def reconstruct_sample(model: CMITM, image: torch.Tensor, target: torch.Tensor, mask_ratio: float, seed: int = 0):
    """Run E_v + D_v on one sample. Returns dict of (H, W) arrays: input, masked input, reconstruction
    (prediction on masked patches, the true pixels on visible ones, in the target's pixel scale), target."""
    model.eval()
    cfg = model.cfg
    dev = next(model.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(seed)
    latent, mask, ids_restore = model.encode_image(image[None].to(dev), mask_ratio, gen)
    pred = model.reconstruct(latent, ids_restore).float().cpu()
    p2 = cfg.patch_size * cfg.target_scale
    tgt = patchify(target[None], p2)
    if cfg.norm_pix:  # undo the per-patch normalisation with the target patch's own statistics
        pred = pred * (tgt.var(-1, keepdim=True) + 1e-6) ** 0.5 + tgt.mean(-1, keepdim=True)
    mask = mask.cpu()
    pasted = torch.where(mask[..., None].bool(), pred, tgt)
    return {
        "input": image[0].numpy(),
        "masked input": masked_view(image, mask[0], cfg.patch_size)[0].numpy(),
        "reconstruction": unpatchify(pasted, p2, cfg.in_chans)[0, 0].numpy(),
        "2x target": target[0].numpy(),
        "mask": mask[0].numpy(),
    }


def reconstruction_figure(model: CMITM, images: torch.Tensor, targets: torch.Tensor, mask_ratio: float, seed: int = 0):
    """Row per sample: input, masked input, reconstruction, the 2x target."""
    n = images.shape[0]
    fig, axes = plt.subplots(n, 4, figsize=(8.8, 2.3 * n), squeeze=False)
    for i in range(n):
        out = reconstruct_sample(model, images[i], targets[i], mask_ratio, seed + i)
        vmin, vmax = out["2x target"].min(), out["2x target"].max()
        for j, key in enumerate(["input", "masked input", "reconstruction", "2x target"]):
            axes[i, j].imshow(out[key], cmap="gray", vmin=vmin, vmax=vmax)
            axes[i, j].set_title(key, fontsize=9)
            axes[i, j].axis("off")
    fig.tight_layout()
    return fig


def similarity_figure(sim: torch.Tensor, title: str = "image-report cosine similarity", n: int = 16):
    """Heat map of the first ``n`` images (rows) against their reports (columns); the diagonal holds the pairs."""
    s = sim[:n, :n].numpy()
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    im = ax.imshow(s, cmap="viridis")
    ax.set_xlabel("report")
    ax.set_ylabel("image")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def retrieval_figure(results: dict[str, dict[str, float]]):
    """Grouped bars: Recall@K for each named model (e.g. {"after stage 1": ..., "after stage 2": ...})."""
    keys = [k for k in next(iter(results.values())) if k.endswith(("R@1", "R@5"))]
    x = np.arange(len(keys))
    width = 0.8 / len(results)
    fig, ax = plt.subplots(figsize=(6, 3))
    for i, (name, r) in enumerate(results.items()):
        ax.bar(x + i * width, [r[k] for k in keys], width, label=name)
    ax.set_xticks(x + width * (len(results) - 1) / 2, keys)
    ax.set_ylabel("recall")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def loss_figure(history: list[dict], keys: list[str] | None = None, uniform: float | None = None):
    """Training curves per epoch; ``uniform`` draws the chance level of the contrastive loss (2 ln B)."""
    keys = keys or [k for k in history[0] if k.startswith("loss")]
    fig, ax = plt.subplots(figsize=(5, 3))
    epochs = [h["epoch"] for h in history]
    for k in keys:
        ax.plot(epochs, [h[k] for h in history], marker="o", label=k)
    if uniform is not None:
        ax.axhline(uniform, ls="--", c="gray", label="chance (2 ln B)")
    ax.set_xlabel("epoch")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def finetune_figure(results: list[dict]):
    """Test metric against the label fraction, one line per initialisation."""
    fig, ax = plt.subplots(figsize=(5, 3))
    for init in dict.fromkeys(r["init"] for r in results):
        rs = sorted((r for r in results if r["init"] == init), key=lambda r: r["fraction"])
        metric = rs[0]["metric"]
        ax.plot([r["fraction"] * 100 for r in rs], [r[f"test_{metric}"] for r in rs], marker="o", label=init)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training data (%)")
    ax.set_ylabel(f"test {results[0]['metric']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Widgets (JupyterLab). Each redraws one of the figures above.
# ---------------------------------------------------------------------------------------------
def show(fig):
    """Display a figure once and free it (works whatever matplotlib backend is active)."""
    from IPython.display import display  # optional: present wherever a notebook kernel runs

    display(fig)
    plt.close(fig)


def masking_widget(images: torch.Tensor, patch_size: int, mask_ratio: float = 0.75):
    """Mask-ratio slider (starting at ``mask_ratio``) and sample picker over ``images`` (N, 1, H, W)."""
    def draw(sample: int, mask_ratio: float, seed: int):
        show(masking_figure(images[sample : sample + 1], mask_ratio, patch_size, seed))

    return w.interactive(draw, sample=w.IntSlider(0, 0, images.shape[0] - 1, description="sample"),
                         mask_ratio=w.FloatSlider(value=mask_ratio, min=0.05, max=0.95, step=0.05,
                                                  description="mask ratio"),
                         seed=w.IntSlider(0, 0, 20, description="mask seed"))


def reconstruction_widget(model: CMITM, images: torch.Tensor, targets: torch.Tensor, mask_ratio: float = 0.75):
    """Pick a sample and a mask ratio (starting at ``mask_ratio``); see input, masked input,
    reconstruction and 2x target."""
    def draw(sample: int, mask_ratio: float, seed: int):
        show(reconstruction_figure(model, images[sample : sample + 1], targets[sample : sample + 1], mask_ratio, seed))

    return w.interactive(draw, sample=w.IntSlider(0, 0, images.shape[0] - 1, description="sample"),
                         mask_ratio=w.FloatSlider(value=mask_ratio, min=0.05, max=0.95, step=0.05,
                                                  description="mask ratio"),
                         seed=w.IntSlider(0, 0, 20, description="mask seed"))


def similarity_widget(sims: dict[str, torch.Tensor], reports: list[str]):
    """Choose a model (e.g. before / after stage 2) and an image; see the similarity matrix and the
    top-3 reports retrieved for that image."""
    def draw(model: str, image: int):
        sim = sims[model]
        show(similarity_figure(sim, f"{model}: image-report similarity"))
        top = sim[image].argsort(descending=True)[:3].tolist()
        print(f"true report of image {image}: {reports[image]}\n")
        for rank, j in enumerate(top, 1):
            print(f"#{rank} (sim {sim[image, j]:.2f}){' [match]' if reports[j] == reports[image] else ''}: {reports[j]}")

    return w.interactive(draw, model=w.Dropdown(options=list(sims), description="model"),
                         image=w.IntSlider(0, 0, min(len(reports), sims[next(iter(sims))].shape[0]) - 1,
                                           description="image"))


# ---------------------------------------------------------------------------------------------
# Where does the encoder look? (maps from `cmitm_lib.saliency`, regions from `cmitm_lib.data.regions`)
# ---------------------------------------------------------------------------------------------
def _overlay(ax, image, smap, mask=None, title: str = ""):
    _gray(ax, image, title)
    if smap is not None:
        ax.imshow(smap / smap.max(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
    if mask is not None and mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors="white", linewidths=0.8)


def saliency_figure(image: np.ndarray, maps: dict[str, np.ndarray], mask: np.ndarray | None = None,
                    title: str = "radiograph"):
    """The radiograph (ground-truth region outlined in white), then each named map over it."""
    fig, axes = plt.subplots(1, 1 + len(maps), figsize=(2.4 * (1 + len(maps)), 2.6), squeeze=False)
    _overlay(axes[0, 0], image, None, mask, title)
    for ax, (name, smap) in zip(axes[0, 1:], maps.items()):
        inside = f", {smap[mask].sum() / smap.sum():.0%} inside" if mask is not None and mask.any() else ""
        _overlay(ax, image, smap, mask, f"{name}{inside}")
    fig.tight_layout()
    return fig


def overlap_figure(overlaps: dict[str, dict[str, dict]]):
    """Per finding and model: the share of the map's mass inside the finding region divided by the
    region's share of the image ("lift"; 1 = a uniform map, the dashed line). The regions cover a few
    percent of the image, so raw mass shares would all sit near 0 on a [0, 1] axis."""
    findings = list(next(iter(overlaps.values())))
    x = np.arange(len(findings))
    width = 0.8 / len(overlaps)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(findings), 3))
    for i, (name, per_finding) in enumerate(overlaps.items()):
        ax.bar(x + i * width, [per_finding[f]["lift"] for f in findings], width, label=name)
    ax.axhline(1.0, color="k", linestyle="--", linewidth=1, label="uniform map (chance)")
    ax.set_xticks(x + width * (len(overlaps) - 1) / 2, findings)
    ax.set_ylabel("mass in region / region area")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def saliency_widget(cases: dict, explainers: dict, findings: list[str] | None = None):
    """Dropdowns for a case (those with a finding), a finding and a model; the map is drawn into an
    Output widget when a choice changes (and once for the first choice).

    ``cases``: `saliency.synth_cases(...)`; ``explainers``: name -> explain(images, finding)
    (`saliency.classifier_explainer`, `saliency.similarity_explainer`)."""
    findings = findings or cases["findings"]
    options = [(f"case {cases['index'][i]}: " + ", ".join(f for k, f in enumerate(cases["findings"])
                                                        if cases["labels"][i, k] and f in findings), i)
               for i in range(len(cases["images"])) if any(cases["labels"][i, cases["findings"].index(f)] for f in findings)]
    if not options:
        raise ValueError("none of the cases has one of the findings; pass more cases")
    case = w.Dropdown(options=options, description="case")
    finding = w.Dropdown(options=findings, description="finding")
    model = w.Dropdown(options=list(explainers), description="model")
    out = w.Output()

    def draw(_=None):
        i, name = case.value, finding.value
        smap = to_pixels(explainers[model.value](cases["images"][i : i + 1], name), cases["images"].shape[-1])[0]
        fig = saliency_figure(cases["images"][i], {f"{model.value}: {name}": smap}, cases["regions"][i][name],
                              f"case {cases['index'][i]}")
        out.clear_output(wait=True)
        with out:
            show(fig)

    for control in (case, finding, model):
        control.observe(draw, names="value")
    draw()
    return w.VBox([w.HBox([case, finding, model]), out])
