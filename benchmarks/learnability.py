"""Can the tiny ViT learn SynthCXR's findings at CPU budgets at all? Eight checks, tiny preset.

    python benchmarks/learnability.py                      # all eight, ~55 min on 2 CPU cores
    python benchmarks/learnability.py --only supervised --sup-epochs 4 --sup-lr 1e-4
    python benchmarks/learnability.py --only cnn oracle contrastive-cnn

1. supervised: fine-tune E_v + head from random init on 100% of the `synth` task's labels
   (`train.finetune`); per epoch the training BCE against the base-rate BCE (the loss of predicting
   each finding's prevalence, i.e. of learning nothing from the image) and validation macro AUC.
2. probe: a linear probe (`evaluate.linear_probe`) on the same random-init encoder's frozen
   features, 100% of the labels -- what the benchmark's random-init row rests on.
3. contrastive: CLIP-like pre-training from scratch (`train.pretrain` stage 2, no image masking, no
   D_r) on the 4000 pre-training pairs; per epoch L_c against its chance level 2 ln B, and held-out
   Recall@1 against chance 1 / N.

4. cnn: the same supervised recipe as (1) (AdamW, warm-up + cosine, clipping, crops) for a plain
   4-block CNN (conv-BN-ReLU-maxpool, 0.32 M weights, 1/8 of E_v): are the findings learnable
   from these 64 px images at all in this budget?
5. oracle: CLIP-like training whose image side is the ground-truth finding vector (a linear map of
   the 7 labels) instead of an image: how low L_c gets when the image side is perfect, i.e. whether
   the text side, the projection heads and InfoNCE learn at this budget.
6. contrastive-cnn: CLIP-like training with the CNN of (4) as image encoder: does report
   supervision teach an image encoder that can learn the findings?
7. frozen: as (5), but the image side is a linear map of frozen E_v features (mean-pooled tokens of
   the whole image) from `--checkpoint` (a pre-training checkpoint folder; default: random init):
   can the contrastive objective use what an encoder already holds, if E_v is not trained?
8. transfer-cnn: the benchmark's claim asked of the CNN of (4): CLIP-like pre-training as in (6) for
   `--transfer-epochs`, against random init, each probed linearly on the four downstream tasks at
   1 / 10 / 100% of the labels, `--seeds` seeds, paired by seed (~30 min for 3 seeds).

The CNN and the oracle are diagnostics only (defined here, not in cmitm_lib): the benchmark's E_v
stays the paper's ViT.

If (1) stays near the base-rate loss, the encoder cannot pick up the findings from gradient
training within that budget, with labels or without, and no pre-training method can be expected
to beat random init in it (output and reading: benchmarks/README.md, "Learnability").
"""
from __future__ import annotations

import argparse
import math
import platform
import time
import types

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from cmitm_lib.checkpoint import load_checkpoint
from cmitm_lib.config import get_preset
from cmitm_lib.data import SYNTH_TASKS, _synth_batch, load_finetune, load_pretrain
from cmitm_lib.data.datasets import LabelDataset, collate_labels
from cmitm_lib.data.fractions import fraction_indices
from cmitm_lib.device import resolve_device, seed_everything
from cmitm_lib.evaluate import (embed_batches, encoder_features, image_loader, linear_probe, predict, retrieval,
                                score)
from cmitm_lib.lab.report import compare, comparison_table
from cmitm_lib.losses import info_nce
from cmitm_lib.text import train_tokenizer
from cmitm_lib.train import build_model, build_optimizer, encoder_state, finetune, pretrain, warmup_cosine


def base_rate_bce(labels: np.ndarray) -> float:
    """Mean BCE of predicting each column's prevalence for every image."""
    p = labels.mean(0).clip(1e-6, 1 - 1e-6)
    return float(np.mean(-(p * np.log(p) + (1 - p) * np.log(1 - p))))


def supervised(preset, epochs: int, lr: float) -> None:
    d = load_finetune("synth", "", preset, 0)
    t0 = time.perf_counter()
    r = finetune(d, preset, None, 1.0, epochs=epochs, lr=lr, progress=False)
    print(f"[supervised] random init, 100% of {len(d.train)} labels, AdamW lr {lr:g}, {epochs} epochs "
          f"({time.perf_counter() - t0:.0f} s); base-rate BCE {base_rate_bce(d.train.labels):.4f}")
    for h in r["history"]:
        print(f"  epoch {h['epoch']:>2}  train BCE {h['loss']:.4f}  val AUC {h['val_auc']:.3f}")
    print(f"  test AUC of the best-val epoch ({r['best_epoch']}): {r['test_auc']:.3f}")


def probe(preset) -> None:
    d = load_finetune("synth", "", preset, 0)
    feats = [encoder_features(None, s.images, preset, 0) for s in (d.train, d.val, d.test)]
    r = linear_probe(feats[0], d.train.labels, feats[1], d.val.labels, feats[2], d.test.labels, d.task, d.metric)
    print(f"[probe] random-init frozen features, 100% labels: val AUC {r['val']:.3f}, test AUC {r['test']:.3f} "
          f"(C={r['C']:g})")


def contrastive(preset, epochs: int, lr: float) -> None:
    model, tokenizer, pairs, held = _clip_model(preset)
    _clip_train("contrastive", "CLIP-like from scratch", model, tokenizer, pairs, held, preset, epochs, lr)


class SmallCNN(nn.Module):
    """4 x (conv3x3-BN-ReLU-maxpool2): 64 px -> a 4 x 4 grid of `width`-d tokens, mean-pooled for a head."""

    def __init__(self, num_classes: int = 0, width: int = 192):
        super().__init__()
        chans = (1, 32, 64, 128, width)
        self.features = nn.Sequential(*[nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                                                      nn.MaxPool2d(2)) for i, o in zip(chans, chans[1:])])
        self.head = nn.Linear(width, num_classes) if num_classes else nn.Identity()
        self.register_buffer("pos_embed", torch.zeros(1), persistent=False)  # set_trainable touches it

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1 + 16, width): the mean token first, like E_v's class-token slot."""
        t = self.features(x).flatten(2).transpose(1, 2)
        return torch.cat([t.mean(1, keepdim=True), t], dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = x[:, 1:].mean(1)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.tokens(x))


def cnn(preset, epochs: int, lr: float) -> None:
    """train.finetune's recipe (100% labels) for SmallCNN instead of E_v."""
    d, cfg = load_finetune("synth", "", preset, 0), preset.finetune
    seed_everything(0)
    train = DataLoader(LabelDataset(d.train, preset.data, preset.model, cfg.crop_scale, train=True),
                       batch_size=cfg.batch_size, shuffle=True, collate_fn=collate_labels)
    val = DataLoader(LabelDataset(d.val, preset.data, preset.model, train=False), batch_size=256,
                     collate_fn=collate_labels)
    net = SmallCNN(len(d.classes))
    opt = build_optimizer(net, cfg.optimizer, lr, cfg.weight_decay)
    sched = warmup_cosine(opt, epochs * len(train), int(cfg.warmup * epochs * len(train)))
    t0 = time.perf_counter()
    print(f"[cnn] SmallCNN ({sum(p.numel() for p in net.parameters()) / 1e6:.2f} M weights), 100% of {len(d.train)} "
          f"labels, AdamW lr {lr:g}, {epochs} epochs; base-rate BCE {base_rate_bce(d.train.labels):.4f}")
    for epoch in range(epochs):
        net.train()
        losses = []
        for x, y, _ in train:
            loss = F.binary_cross_entropy_with_logits(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            losses.append(loss.item())
        auc = score(d.metric, *predict(net, val, torch.device("cpu"), d.task))
        print(f"  epoch {epoch + 1:>2}  train BCE {np.mean(losses):.4f}  val AUC {auc:.3f}")
    print(f"  ({time.perf_counter() - t0:.0f} s)")


def _clip_model(preset, seed: int = 0):
    """A CLIP-like CMITM (no D_r, image_proj on mean-pooled E_v tokens) and its tokenizer."""
    pairs, held = load_pretrain("synth", "", preset, 0)
    tokenizer = train_tokenizer(pairs.reports, preset.model.vocab_size)
    preset.model.use_rep_decoder = False
    seed_everything(seed)
    return build_model(preset, tokenizer), tokenizer, pairs, held


def _clip_train(tag, what, model, tokenizer, pairs, held, preset, epochs, lr, seed: int = 0) -> None:
    """Stage 2 without image masking; per epoch L_c against its chance level 2 ln B; held-out recall."""
    t0 = time.perf_counter()
    history = pretrain(model, tokenizer, pairs, preset, "stage2", epochs=epochs, lr=lr, mask_ratio=0.0,
                       seed=seed, progress=False)
    b = preset.stage2.batch_size
    print(f"[{tag}] {what}, {len(pairs)} pairs, batch {b}, lr {lr:g}, {epochs} epochs "
          f"({time.perf_counter() - t0:.0f} s); chance L_c = 2 ln {b} = {2 * math.log(b):.3f}")
    for h in history:
        print(f"  epoch {h['epoch']:>2}  L_c {h['loss_c']:.3f}")
    if held is not None:
        r = retrieval(model, tokenizer, held, preset)
        print(f"  held-out ({len(held)} pairs) i2t R@1 {r['i2t_R@1']:.3f}, R@10 {r['i2t_R@10']:.3f}; "
              f"t2i R@1 {r['t2i_R@1']:.3f}, R@10 {r['t2i_R@10']:.3f} (chance R@1 {1 / len(held):.3f})")


def _fixed_image_side(model, vectors: torch.Tensor) -> None:
    """Make the image embedding h_v(Linear(vectors[i])) for pair i: no image, no E_v."""
    model.image_encoder = nn.Linear(vectors.shape[1], model.cfg.embed_dim)
    model.image_encoder.register_buffer("pos_embed", torch.zeros(1), persistent=False)

    def forward(self, batch, stage, mask_ratio, temperature=0.07, generator=None):
        z_v = self.image_proj(self.image_encoder(vectors.to(batch["index"].device)[batch["index"]]))
        loss = info_nce(z_v, self.text_embedding(batch["input_ids"], batch["attention_mask"]), temperature)
        return {"loss_c": loss, "loss": loss}

    model.forward = types.MethodType(forward, model)


def oracle(preset, epochs: int, lr: float) -> None:
    """CLIP-like training whose image embedding is h_v(Linear(ground-truth finding labels))."""
    model, tokenizer, pairs, _ = _clip_model(preset)
    d = preset.data
    _fixed_image_side(model, torch.as_tensor(_synth_batch(d.n_pretrain, 0, d.synth_size, "pretrain", 0)[1]).float())
    _clip_train("oracle", "image side = true labels", model, tokenizer, pairs, None, preset, epochs, lr)


def frozen(preset, epochs: int, lr: float, checkpoint: str) -> None:
    """As `oracle`, with frozen E_v features of ``checkpoint`` (random init when empty) as the image side."""
    model, tokenizer, pairs, _ = _clip_model(preset)
    state = encoder_state(load_checkpoint(checkpoint)[0]) if checkpoint else None
    feats = torch.as_tensor(encoder_features(state, pairs.images, preset, 0, "cpu"))
    _fixed_image_side(model, (feats - feats.mean(0)) / feats.std(0).clamp_min(1e-6))
    _clip_train("frozen", f"image side = frozen E_v features ({checkpoint or 'random init'})", model, tokenizer,
                pairs, None, preset, epochs, lr)


def contrastive_cnn(preset, epochs: int, lr: float, seed: int = 0) -> SmallCNN:
    """CLIP-like training of a SmallCNN image encoder; returns the trained CNN."""
    model, tokenizer, pairs, held = _clip_model(preset, seed)
    model.image_encoder = SmallCNN()
    model.encode_image = types.MethodType(lambda self, imgs, ratio, generator=None:
                                          (self.image_encoder.tokens(imgs), None, None), model)
    _clip_train("contrastive-cnn", f"CLIP-like, SmallCNN image encoder, seed {seed}", model, tokenizer, pairs, held,
                preset, epochs, lr, seed)
    return model.image_encoder


def net_features(net: nn.Module, images, preset) -> np.ndarray:
    """``net.forward_head(net.forward_features(x), pre_logits=True)`` of every image on the CPU, eval mode."""
    dev = resolve_device("cpu")
    net = net.to(dev).eval()
    embed = lambda b, i: (net.forward_head(net.forward_features(b["image"]), pre_logits=True),)  # noqa: E731
    return embed_batches(image_loader(images, preset, 256), embed, dev,
                         "each featurised as another image of the set")[0].numpy()


def transfer_cnn(preset, epochs: int, lr: float, seeds: int) -> None:
    """The benchmark's claim with a convolutional prior: CLIP-like SmallCNN against random-init SmallCNN,
    linear probe (`evaluate.linear_probe`) on the four tasks at 1 / 10 / 100%, paired by seed."""
    tasks = {t: load_finetune(t, "", preset, 0) for t in SYNTH_TASKS}
    rows = []
    t0 = time.perf_counter()
    for seed in range(seeds):
        seed_everything(seed)
        for method in ("random", "clip"):
            net = SmallCNN() if method == "random" else contrastive_cnn(preset, epochs, lr, seed)
            for task, d in tasks.items():
                train, val, test = (net_features(net, s.images, preset) for s in (d.train, d.val, d.test))
                for fraction in (0.01, 0.1, 1.0):
                    idx = fraction_indices(len(d.train), fraction, seed, d.train.labels)
                    r = linear_probe(train[idx], d.train.labels[idx], val, d.val.labels, test, d.test.labels,
                                     d.task, d.metric)
                    rows.append({"method": method, "task": task, "fraction": fraction, "seed": seed, **r})
    print(f"[transfer-cnn] linear probe of SmallCNN features, CLIP-like ({epochs} epochs, lr {lr:g}) vs random "
          f"init, {seeds} seeds ({time.perf_counter() - t0:.0f} s); test metric x 100, mean over seeds:")
    for method in ("random", "clip"):
        cells = [f"{t} {f:g}: {100 * np.mean([r['test'] for r in rows if r['method'] == method and r['task'] == t and r['fraction'] == f]):.1f}"
                 for t in tasks for f in (0.01, 0.1, 1.0)]
        print(f"  {method:>6}  " + ", ".join(cells))
    print("  CLIP-like - random, paired by seed (mean ± 95% CI half-width; > / < when the CI excludes 0):")
    print(comparison_table(compare(rows, "clip", "random")))


CHECKS = ("supervised", "probe", "contrastive", "cnn", "oracle", "contrastive-cnn", "frozen", "transfer-cnn")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=CHECKS, nargs="+", default=list(CHECKS))
    ap.add_argument("--sup-epochs", type=int, default=8)
    ap.add_argument("--sup-lr", type=float, default=5e-4)
    ap.add_argument("--clip-epochs", type=int, default=12)
    ap.add_argument("--clip-lr", type=float, default=1e-3)
    ap.add_argument("--cnn-epochs", type=int, default=4, help="cnn: supervised epochs (at --sup-lr)")
    ap.add_argument("--oracle-epochs", type=int, default=4)
    ap.add_argument("--clip-cnn-epochs", type=int, default=6)
    ap.add_argument("--checkpoint", default="", help="frozen: pre-training checkpoint folder (default: random init)")
    ap.add_argument("--transfer-epochs", type=int, default=12, help="transfer-cnn: CLIP-like epochs per seed")
    ap.add_argument("--seeds", type=int, default=3, help="transfer-cnn: seeds")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"{platform.machine()}, {a.threads} threads, torch {torch.__version__}")
    if "supervised" in a.only:
        supervised(get_preset("tiny"), a.sup_epochs, a.sup_lr)
    if "probe" in a.only:
        probe(get_preset("tiny"))
    if "contrastive" in a.only:
        contrastive(get_preset("tiny"), a.clip_epochs, a.clip_lr)
    if "cnn" in a.only:
        cnn(get_preset("tiny"), a.cnn_epochs, a.sup_lr)
    if "oracle" in a.only:
        oracle(get_preset("tiny"), a.oracle_epochs, a.clip_lr)
    if "contrastive-cnn" in a.only:
        contrastive_cnn(get_preset("tiny"), a.clip_cnn_epochs, a.clip_lr)
    if "frozen" in a.only:
        frozen(get_preset("tiny"), a.oracle_epochs, a.clip_lr, a.checkpoint)
    if "transfer-cnn" in a.only:
        transfer_cnn(get_preset("tiny"), a.transfer_epochs, a.clip_lr, a.seeds)


if __name__ == "__main__":
    main()
