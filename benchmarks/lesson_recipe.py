"""The measurements behind the tiny lesson recipe (SynthCXR lesson level, the paper's ViT shrunk).

    cmitm pretrain --stage 1 --checkpoint-out runs/recipe/s1                     # stage 1 at the preset's defaults
    python benchmarks/lesson_recipe.py stage2 --ckpt runs/recipe/s1 --epochs 12 --lr 1e-3 --save runs/recipe/s2
    python benchmarks/lesson_recipe.py stage2 --ckpt random --epochs 12 --lr 1e-3 --save runs/recipe/s2_scratch
    python benchmarks/lesson_recipe.py stage2 --ckpt runs/lessons/stage1 --epochs 12 --lr 1e-3 --variant locked-text
    python benchmarks/lesson_recipe.py probe --ckpt runs/recipe/s1               # random init and a checkpoint
    python benchmarks/lesson_recipe.py finetune random runs/recipe/s1 runs/recipe/s2 --min-images 1024
    python benchmarks/lesson_recipe.py ceiling                                  # no training: what the data allows
    python benchmarks/lesson_recipe.py sides --ckpt runs/recipe/s2              # which side encodes the findings
    python benchmarks/lesson_recipe.py stage2 --ckpt random --epochs 12 --lr 1e-3 --variant stated-labels
    python benchmarks/lesson_recipe.py tokens random runs/lessons/stage1 runs/lessons/stage2   # token collapse

stage2: stage 2 from a checkpoint (``random``: a fresh model, i.e. CLIP-like with masked images) with
overrides; prints L_c per epoch against 2 ln B, held-out image->report Recall@K before and after against
the chance of a random ranking, then the linear probe of the resulting E_v.
``--variant locked-text | same-findings-positive``: the two stage-2 diagnostics that were tried and not adopted
(E_t locked; same-findings pairs as positives), patched in here so that the library stays as the paper has it;
``--variant stated-labels``: L_c replaced by BCE of a linear head on z_v against the findings each report states
(a perfect text side), i.e. what stage 2's image path can learn at all; ``--no-rep-decoder``: z_v without D_r;
``--stem hmlp`` (with ``--ckpt random``): a patch-local convolutional patch embedding instead of the linear one.
probe: frozen E_v features + logistic regression on the NIH-like task at 1% and 10% of the labels.
finetune: `train.finetune` at 1% of the labels from each init, with an epoch of at least --min-images images.
ceiling: held-out retrieval of oracle embeddings that know each study's drawn findings: how far the data lets
image->report Recall@K go (chance, image-truth labels, the report's own labels, findings with side / lobe /
severity), so that a model's R@5 can be read against it; and how many of stage 2's in-batch negatives state
the same findings as their positive (InfoNCE's false negatives).
tokens: mean cosine between E_v's output tokens of one image (token collapse), unmasked and 75% masked.
sides: linear probes of a checkpoint's projected embeddings: z_t -> the report's stated labels, z_v -> the
image's labels (held-out macro AUC), i.e. which encoder carries the findings into the joint space.
Output and reading: benchmarks/README.md, "Lesson recipe".
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from cmitm_lib import models
from cmitm_lib import train as T
from cmitm_lib.checkpoint import load_checkpoint, save_checkpoint
from cmitm_lib.config import get_preset
from cmitm_lib.data import load_finetune, load_pretrain
from cmitm_lib.data.fractions import fraction_indices
from cmitm_lib.data.datasets import PairData
from cmitm_lib.data.synth import generate_case, generate_cases
from cmitm_lib.lab.recipes import _supervised_link
from cmitm_lib.paths import resolve
from cmitm_lib.evaluate import embed_pairs, encoder_features, image_loader, linear_probe, recall_at_k, retrieval
from cmitm_lib.text import train_tokenizer


def encoder_of(init: str, seed: int) -> dict | None:
    """E_v weights of an init: ``random`` (None), ``supervised`` (trained on the pre-training images' true
    findings for the cascade's epochs, cached in runs/recipe/supervised) or a checkpoint folder."""
    if init == "random":
        return None
    if init == "supervised":
        return _supervised_link(seed, get_preset("tiny"), resolve(f"runs/recipe/supervised_seed{seed}"))
    return T.encoder_state(load_checkpoint(init)[0])


def frozen_head(bn: bool):
    """`models.build_classifier` with E_v frozen (only the linear head trains), behind a BatchNorm without
    affine when ``bn`` (MAE's linear-probe head): the fine-tuning loop as a linear probe."""
    build = T.build_classifier

    def wrapped(cfg, num_classes, state=None):
        net = build(cfg, num_classes, state)
        for p in net.parameters():
            p.requires_grad_(False)
        if bn:
            net.head = torch.nn.Sequential(torch.nn.BatchNorm1d(cfg.embed_dim, affine=False), net.head)
        net.head.requires_grad_(True)
        return net
    return wrapped


def model_from(ckpt: str, seed: int):
    """(model, tokenizer, preset) of a checkpoint folder, or a fresh tiny model for ``random``."""
    if ckpt != "random":
        model, tokenizer, preset, _ = load_checkpoint(ckpt)
        return model, tokenizer, preset
    preset = get_preset("tiny")
    pairs, _ = load_pretrain("synth", "", preset, seed)
    tokenizer = train_tokenizer(pairs.reports, preset.model.vocab_size)
    return T.build_model(preset, tokenizer, seed=seed), tokenizer, preset


def chance_r5(reports: list[str], seed: int = 0, draws: int = 5) -> float:
    """i2t R@5 of random similarity matrices (identical report texts count as hits, as in evaluation)."""
    g = torch.Generator().manual_seed(seed)
    n = len(reports)
    return float(np.mean([recall_at_k(torch.rand(n, n, generator=g), reports=reports)["i2t_R@5"] for _ in range(draws)]))


def probe(state, preset, seed: int) -> dict:
    d = load_finetune("synth", "", preset, seed)
    feats = {s: encoder_features(state, getattr(d, s).images, preset, seed) for s in ("train", "val", "test")}
    out = {}
    for fraction in (0.01, 0.1):
        idx = fraction_indices(len(d.train), fraction, seed, d.train.labels)
        r = linear_probe(feats["train"][idx], d.train.labels[idx], feats["val"], d.val.labels, feats["test"],
                         d.test.labels, d.task, d.metric)
        out[f"{fraction:.0%}"] = round(r["test"], 3)
    return out


def stated_findings(seed: int, preset) -> np.ndarray:
    """(n_pretrain, 7) 0/1: the findings each training pair's report states (hedged ones count as not stated)."""
    d = preset.data
    return generate_cases(d.n_pretrain, seed, d.synth_size, "pretrain", 0, d.synth_level).report_labels.clip(0)


def lock_text_encoder() -> None:
    """Stage 2 with E_t locked (LiT-style): only E_v, D_r and the projection heads train. Tried, not adopted."""
    models.STAGE_MODULES["stage2"] = tuple(m for m in models.STAGE_MODULES["stage2"] if m != "text_encoder")


def same_findings_positive(seed: int, preset) -> None:
    """Stage 2's InfoNCE with the target spread evenly over every in-batch pair whose report states the same
    findings as the positive (MedCLIP's semantic matching: no false negatives). Tried, not adopted."""
    stated = torch.tensor(stated_findings(seed, preset))
    forward, batch_index = models.CMITM.forward, {}

    def remember_index(self, batch, *args, **kwargs):
        batch_index["idx"] = batch["index"].cpu()
        return forward(self, batch, *args, **kwargs)

    def soft_info_nce(z_img, z_txt, temperature=0.07):
        logits = F.normalize(z_img.float(), dim=-1) @ F.normalize(z_txt.float(), dim=-1).T / temperature
        s = stated[batch_index["idx"]]
        same = (s[:, None] == s[None]).all(-1).float().to(logits.device)
        target = same / same.sum(1, keepdim=True)
        return 0.5 * sum(-(target * lg.log_softmax(1)).sum(1).mean() for lg in (logits, logits.T))

    models.CMITM.forward, models.info_nce = remember_index, soft_info_nce


def supervise_image_path(seed: int, preset, model) -> None:
    """Stage 2 with L_c replaced by BCE of a linear head on z_v (stage 2's masked image path: E_v on the visible
    patches, D_r, pooling, h_v) against the findings each training report states: what a perfect E_t could hand
    to the image side. Measures whether the image path, not the contrastive coupling, caps stage 2."""
    stated = torch.tensor(stated_findings(seed, preset)).float()
    model.text_proj = torch.nn.Linear(preset.model.proj_dim, stated.shape[1])  # the head; E_t is not used

    def forward(self, batch, stage, mask_ratio, temperature=0.07, generator=None):
        latent, _, ids_restore = self.encode_image(batch["image"], mask_ratio, generator)
        logits = self.text_proj(self.image_embedding(latent, ids_restore)).float()
        loss = F.binary_cross_entropy_with_logits(logits, stated[batch["index"].cpu()].to(logits.device))
        return {"loss_c": loss, "loss": loss}

    models.CMITM.forward = forward


def use_hmlp_stem() -> None:
    """Every ViT built from here on embeds its patches with a patch-local convolutional stem (hMLP, Touvron et
    al., ECCV 2022): three 2x2 stride-2 convolutions with channel LayerNorm, so no receptive field crosses an
    8-px patch and MAE's masking stays exact. Replaces the linear patch embedding; patch_size 8 only."""
    from timm.layers import LayerNorm2d
    build = models.build_vit

    def build_vit(cfg, num_classes=0):
        vit = build(cfg, num_classes)
        if cfg.patch_size != 8:
            raise ValueError(f"the hMLP stem here is for 8-px patches, not {cfg.patch_size}")
        w, d = cfg.embed_dim // 4, cfg.embed_dim
        vit.patch_embed.proj = torch.nn.Sequential(
            torch.nn.Conv2d(cfg.in_chans, w, 2, 2), LayerNorm2d(w), torch.nn.GELU(),
            torch.nn.Conv2d(w, w, 2, 2), LayerNorm2d(w), torch.nn.GELU(), torch.nn.Conv2d(w, d, 2, 2))
        return vit
    models.build_vit = build_vit


def stage2(a) -> None:
    if a.variant == "stated-labels" and a.save:
        raise SystemExit("--variant stated-labels replaces h_t by a label head: its model is not a CMITM checkpoint; "
                         "drop --save")
    if a.stem == "hmlp":
        if a.ckpt != "random":
            raise SystemExit("--stem hmlp builds a new model: use it with --ckpt random")
        use_hmlp_stem()
    model, tokenizer, preset = model_from(a.ckpt, a.seed)
    if a.variant == "locked-text":
        lock_text_encoder()
    elif a.variant == "same-findings-positive":
        same_findings_positive(a.seed, preset)
    if a.mask is not None:
        preset.stage2.mask_ratio = a.mask
    if a.no_rep_decoder:  # the paper's "- representation decoder" ablation: z_v = h_v(pool(E_v's visible tokens))
        model.cfg.use_rep_decoder = preset.model.use_rep_decoder = False
        m = preset.model
        model.image_proj = models.ProjectionHead(m.embed_dim, m.proj_hidden, m.proj_dim)
    train, held = load_pretrain("synth", "", preset, a.seed)
    print(f"held-out pairs {len(held)}, chance i2t R@5 {chance_r5(held.reports):.4f}", flush=True)
    before = retrieval(model, tokenizer, held, preset)
    if a.variant == "stated-labels":
        supervise_image_path(a.seed, preset, model)
    t0 = time.perf_counter()
    history = T.pretrain(model, tokenizer, train, preset, "stage2", epochs=a.epochs, lr=a.lr, seed=a.seed,
                         progress=False)
    print(f"L_c per epoch {[round(h['loss_c'], 3) for h in history]} (2 ln B = "
          f"{2 * np.log(preset.stage2.batch_size):.2f}), {time.perf_counter() - t0:.0f} s")
    after = before if a.variant == "stated-labels" else retrieval(model, tokenizer, held, preset)
    for k in ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@5"):
        print(f"  {k}: before {before[k]:.3f}  after {after[k]:.3f}")
    if a.save:
        save_checkpoint(a.save, model, preset, tokenizer, {"stage": "stage2", "epochs": a.epochs})
    print(f"linear probe test AUC after stage 2: {probe(T.encoder_state(model), preset, a.seed)}")


def probe_cmd(a) -> None:
    preset = get_preset("tiny")
    torch.manual_seed(a.seed)
    print(f"linear probe test AUC, random init: {probe(None, preset, a.seed)}")
    print(f"linear probe test AUC, {a.ckpt}: {probe(encoder_of(a.ckpt, a.seed), preset, a.seed)}")


def oracle_keys(case) -> tuple:
    """What a report says of a case that an image shows: each finding with its side, lobe, size or severity."""
    named = ("side", "lobe", "size", "severity", "zone")
    return tuple((f, tuple((k, v[k]) for k in named if k in v)) for f, v in sorted(case.findings.items()))


def ceiling(a) -> None:
    preset = get_preset("tiny")
    d = preset.data
    cases = [generate_case(a.seed, d.n_pretrain + i, 32, "pretrain", d.synth_level) for i in range(d.n_heldout)]
    reports = [c.report for c in cases]
    truth = torch.tensor(np.stack([c.labels for c in cases]))
    stated = torch.tensor(np.stack([c.report_labels for c in cases])).clamp(min=0)  # hedged -> not stated
    ids = {k: i for i, k in enumerate(dict.fromkeys(oracle_keys(c) for c in cases))}
    key = torch.tensor([ids[oracle_keys(c)] for c in cases])
    n = len(cases)
    print(f"{n} held-out pairs (seed {a.seed}, level {d.synth_level}): {float((truth.sum(1) == 0).float().mean()):.0%} "
          f"normal, {len(set(reports))} distinct reports, {len(ids)} distinct finding descriptions")
    oracles = {
        "chance (constant embeddings)": torch.zeros(n, n),
        "image-truth labels on both sides": -torch.cdist(truth, truth, p=1),
        "image-truth labels vs the report's stated labels": -torch.cdist(truth, stated, p=1),
        "findings with side / lobe / size / severity": (key[:, None] == key[None]).float() - 0.01 * torch.cdist(truth, truth, p=1),
    }
    g = torch.Generator().manual_seed(a.seed)
    print(f"{'oracle':52s} i2t R@1  i2t R@5  i2t R@10  t2i R@5   (ties broken at random, mean of 5 draws)")
    for name, sim in oracles.items():
        draws = [recall_at_k(sim + 1e-4 * torch.rand(n, n, generator=g), reports=reports) for _ in range(5)]
        row = [float(np.mean([r[k] for r in draws])) for k in ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@5")]
        print(f"{name:52s} " + "  ".join(f"{v:7.3f}" for v in row))
    false_negatives(a.seed, preset)


def false_negatives(seed: int, preset, draws: int = 200) -> None:
    """How many of InfoNCE's in-batch negatives in stage 2 state the very same findings as the positive
    (normal studies, and abnormal ones naming the same set): candidates the loss must push away although
    no report text could tell them apart. Stage-2 batches of the training pairs, drawn at random."""
    b = preset.stage2.batch_size
    stated = stated_findings(seed, preset)
    rng = np.random.default_rng(seed)
    same, any_same, normal_same = [], [], []
    for _ in range(draws):
        s = stated[rng.choice(len(stated), b, replace=False)]
        eq = (s[:, None] == s[None]).all(-1) & ~np.eye(b, dtype=bool)
        same.append(eq.sum(1).mean())
        any_same.append(eq.any(1).mean())
        normal_same.append(eq[s.sum(1) == 0].sum(1).mean())
    print(f"stage-2 batches of {b}: a pair has {np.mean(same):.1f} negatives stating the same findings on average "
          f"({np.mean(any_same):.0%} of pairs have at least one; a normal study has {np.mean(normal_same):.1f})")


def sides(a) -> None:
    """Which side of a checkpoint's joint space encodes the findings: logistic probes of the projected
    embeddings, z_t -> the labels its report states and z_v -> the image's drawn labels (macro AUC), fit on
    the first --n-fit training pairs, C chosen on half of the held-out pairs, scored on the other half."""
    model, tokenizer, preset = model_from(a.ckpt, a.seed)
    d = preset.data
    fit = generate_cases(a.n_fit, a.seed, d.synth_size, "pretrain", 0, d.synth_level)
    held = generate_cases(d.n_heldout, a.seed, d.synth_size, "pretrain", d.n_pretrain, d.synth_level)
    half = d.n_heldout // 2
    z = {k: embed_pairs(model, tokenizer, PairData(b.images, b.reports, b.patient_ids), preset)
         for k, b in (("fit", fit), ("held", held))}  # (z_img, z_txt) per split
    for side, i, labels in (("z_t -> stated labels", 1, "report_labels"), ("z_v -> image labels", 0, "labels")):
        y = {k: np.clip(getattr(b, labels), 0, None) for k, b in (("fit", fit), ("held", held))}  # hedged: not stated
        zf, zh = z["fit"][i].numpy(), z["held"][i].numpy()
        r = linear_probe(zf, y["fit"], zh[:half], y["held"][:half], zh[half:], y["held"][half:], "multilabel", "auc")
        print(f"{a.ckpt}: {side}: macro AUC {r['test']:.3f} (C {r['C']:g})")


def tokens(a) -> None:
    """Token collapse: the mean cosine between E_v's output tokens within one image, and between the pooled
    vectors of different images, on 128 validation images of the NIH-like task, unmasked and 75% masked."""
    preset = get_preset("tiny")
    images = load_finetune("synth", "", preset, a.seed).val.images
    batch = next(iter(image_loader(images, preset, 128)))[0]  # (images, labels, unreadable paths)
    for ckpt in a.ckpts:
        torch.manual_seed(a.seed)
        enc = (models.build_encoder(preset.model) if ckpt == "random" else load_checkpoint(ckpt)[0].image_encoder).eval()
        for mask in (0.0, 0.75):
            with torch.no_grad():
                x = models.encode_visible(enc, batch, mask, torch.Generator().manual_seed(a.seed))[0][:, 1:]
            t, pooled = F.normalize(x, dim=-1), F.normalize(x.mean(1), dim=-1)
            print(f"{ckpt} mask {mask}: token cosine within an image {float((t @ t.transpose(1, 2)).mean()):.3f}, "
                  f"pooled cosine across images {float((pooled @ pooled.T).mean()):.3f}")


def layer_decay_optimizer(decay: float):
    """AdamW with MAE's layer-wise lr decay (timm's param_groups_layer_decay), for `train.finetune`."""
    from timm.optim import param_groups_layer_decay

    def build(model, kind, lr, weight_decay, betas=(0.9, 0.95)):
        groups = param_groups_layer_decay(model, weight_decay=weight_decay, layer_decay=decay)
        for g in groups:
            g["lr"] = lr * g.pop("lr_scale", 1.0)
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    return build


def finetune(a) -> None:
    preset = get_preset("tiny")
    preset.finetune.min_images_per_epoch = a.min_images
    preset.finetune.head_init = a.head_init or preset.finetune.head_init
    if a.layer_decay:
        T.build_optimizer = layer_decay_optimizer(a.layer_decay)
    if a.head != "all":
        T.build_classifier = frozen_head(bn=a.head == "bn-linear")
    d = load_finetune("synth", "", preset, a.seed)
    for init in a.inits:
        state = encoder_of(init, a.seed)
        for fraction in a.fractions:
            t0 = time.perf_counter()
            r = T.finetune(d, preset, state, fraction, lr=a.lr, seed=a.seed, progress=False)
            print(f"{init} at {fraction:.0%} ({a.head}, head init {preset.finetune.head_init}): test AUC {r['test_auc']:.3f}, val {r['val_auc']:.3f}, best "
                  f"epoch {r['best_epoch']}, {r['epochs']} epochs of >= {a.min_images} images, lr {r['lr']:g}, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("stage2")
    p.add_argument("--ckpt", required=True, help="stage-1 checkpoint folder, or 'random'")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--mask", type=float, default=None, help="stage-2 image mask ratio")
    p.add_argument("--save", default="")
    p.add_argument("--no-rep-decoder", action="store_true", help="z_v from E_v's visible tokens, without D_r")
    p.add_argument("--stem", choices=("linear", "hmlp"), default="linear",
                   help="patch embedding of a new model (--ckpt random): the paper's linear one or a patch-local conv stem")
    p.add_argument("--variant", choices=("cmitm", "locked-text", "same-findings-positive", "stated-labels"), default="cmitm",
                   help="diagnostics tried and not adopted: E_t locked; same-findings pairs as positives; "
                        "stated-labels: BCE on z_v against the findings each report states (a perfect text side)")
    p.set_defaults(func=stage2)
    p = sub.add_parser("sides")
    p.add_argument("--ckpt", required=True, help="a stage-1 or stage-2 checkpoint folder")
    p.add_argument("--n-fit", type=int, default=1000, help="training pairs the probes are fit on")
    p.set_defaults(func=sides)
    p = sub.add_parser("tokens")
    p.add_argument("ckpts", nargs="+", help="'random' and/or checkpoint folders")
    p.set_defaults(func=tokens)
    p = sub.add_parser("probe")
    p.add_argument("--ckpt", required=True, help="a checkpoint folder, or 'supervised'")
    p.set_defaults(func=probe_cmd)
    p = sub.add_parser("finetune")
    p.add_argument("inits", nargs="+", help="'random', 'supervised' and/or checkpoint folders")
    p.add_argument("--min-images", type=int, default=1024, help="images per fine-tuning epoch at least")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.01])
    p.add_argument("--head-init", choices=("zero", "probe"), default=None,
                   help="zero: MAE's near-zero head; probe: LP-FT (default: the preset's)")
    p.add_argument("--head", choices=("all", "linear", "bn-linear"), default="all",
                   help="all: every weight (the recipe); linear / bn-linear: E_v frozen, only the head trains "
                        "(bn-linear: behind a BatchNorm without affine, MAE's linear-probe head)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--layer-decay", type=float, default=None, help="MAE's layer-wise lr decay, e.g. 0.75")
    p.set_defaults(func=finetune)
    p = sub.add_parser("ceiling")
    p.set_defaults(func=ceiling)
    for p in sub.choices.values():
        p.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(2)
    a.func(a)


if __name__ == "__main__":
    main()
