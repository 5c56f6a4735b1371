"""Zero-shot AUC, Recall@K and where the encoder looks, on the embedded SynthCXR data (tiny preset).

    OMP_NUM_THREADS=1 python benchmarks/zeroshot_saliency.py                 # trains stage 1 + 2 first
    OMP_NUM_THREADS=1 python benchmarks/zeroshot_saliency.py --checkpoints runs/lessons_full   # reuses them

1. Pre-trains the tiny preset with `train.pretrain` at the preset's defaults (stage 1, then stage 2;
   or loads <checkpoints>/stage1 and <checkpoints>/stage2), and builds a random-init model with the
   same vocabulary.
2. For the three encoders: image->report and report->image Recall@1/5/10 on the 500 held-out pairs,
   and zero-shot macro AUC from `evaluate.PROMPTS["synth"]` on the 1000 downstream test images.
3. Fine-tunes a classifier from the stage-2 encoder (`train.finetune`) and measures, per finding, the
   share of the attention-rollout map's mass inside the region the generator drew (`data.regions`),
   against the region's share of the image (chance), on downstream test cases; the same for the
   stage-2 image-prompt similarity. Figures go to --out.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cmitm_lib import saliency, viz  # noqa: E402
from cmitm_lib.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from cmitm_lib.config import get_preset  # noqa: E402
from cmitm_lib.data import load_finetune, load_pretrain  # noqa: E402
from cmitm_lib.evaluate import PROMPTS, evaluate_model, format_evaluation  # noqa: E402
from cmitm_lib.paths import resolve  # noqa: E402
from cmitm_lib.text import train_tokenizer  # noqa: E402
from cmitm_lib.train import build_model, encoder_state, finetune, pretrain, seed_everything  # noqa: E402


def encoders(args, preset, train_pairs):
    """{"random init": ..., "stage 1 only": ..., "stage 2 (CMITM)": ...} -> (model, tokenizer)."""
    out = resolve(args.out)
    if args.checkpoints:
        s1, tok, preset, _ = load_checkpoint(resolve(args.checkpoints) / "stage1", expect_preset="tiny")
        s2, _, _, _ = load_checkpoint(resolve(args.checkpoints) / "stage2", expect_preset="tiny")
    else:
        seed_everything(args.seed)
        tok = train_tokenizer(train_pairs.reports, preset.model.vocab_size)
        s1 = build_model(preset, tok)
        t = time.perf_counter()
        history = pretrain(s1, tok, train_pairs, preset, "stage1", seed=args.seed, progress=False)
        save_checkpoint(out / "stage1", s1, preset, tok, {"stage": "stage1", "history": history})
        s2, _, _, _ = load_checkpoint(out / "stage1")
        history = pretrain(s2, tok, train_pairs, preset, "stage2", seed=args.seed, progress=False)
        save_checkpoint(out / "stage2", s2, preset, tok, {"stage": "stage2", "history": history})
        print(f"pre-training (stage 1 + stage 2, tiny defaults): {time.perf_counter() - t:.0f} s; stage-2 L_c per "
              f"epoch {[round(h['loss_c'], 3) for h in history]} (chance 2 ln B = "
              f"{2 * np.log(preset.stage2.batch_size):.3f})")
    seed_everything(args.seed)
    return preset, tok, {"random init": build_model(preset, tok), "stage 1 only": s1, "stage 2 (CMITM)": s2}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", default="", help="folder with stage1/ and stage2/ checkpoints; empty: train them")
    ap.add_argument("--out", default="runs/zeroshot_saliency", help="checkpoints, figures, results.json")
    ap.add_argument("--fraction", type=float, default=0.1, help="label fraction for the classifier")
    ap.add_argument("--finetune-epochs", type=int, default=10)
    ap.add_argument("--finetune-lr", type=float, default=None, help="default: the tiny preset's for the fraction")
    ap.add_argument("--cases", type=int, default=400, help="downstream test cases for the overlap")
    ap.add_argument("--max-per-finding", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    out = resolve(args.out)
    out.mkdir(parents=True, exist_ok=True)
    preset = get_preset("tiny")
    train_pairs, heldout = load_pretrain("synth", "", preset, args.seed)
    labelled = load_finetune("synth", "", preset, args.seed)
    preset, tok, models = encoders(args, preset, train_pairs)

    results = {name: evaluate_model(m, tok, preset, heldout, labelled, "synth", "cpu") for name, m in models.items()}
    print(f"\nRetrieval on {len(heldout)} held-out pairs (identical reports count as hits), zero-shot AUC on "
          f"{len(labelled.test)} downstream test images:")
    print(format_evaluation(results))
    counts = {r: heldout.reports.count(r) for r in set(heldout.reports)}
    print(f"chance R@1 = {np.mean([counts[r] / len(heldout) for r in heldout.reports]):.3f}, chance AUC = 0.5")
    for name, r in results.items():
        print(f"  {name}: " + ", ".join(f"{c} {v:.2f}" for c, v in r["zeroshot_per_class"].items()))

    t = time.perf_counter()
    ft = finetune(labelled, preset, encoder_state(models["stage 2 (CMITM)"]), args.fraction,
                  epochs=args.finetune_epochs, lr=args.finetune_lr, device="cpu", seed=args.seed, progress=False,
                  keep_model=True)
    print(f"\nclassifier from the stage-2 encoder, {args.fraction:.0%} labels, {args.finetune_epochs} epochs, "
          f"lr {ft['lr']:g}: val AUC per epoch {[round(h['val_auc'], 3) for h in ft['history']]}, "
          f"test AUC {ft['test_auc']:.3f} ({time.perf_counter() - t:.0f} s)")
    d = preset.data
    start = d.n_finetune[0] + d.n_finetune[1]  # the downstream test split, as data.load_finetune lays it out
    cases = saliency.synth_cases(args.seed, "downstream", start, args.cases, d.synth_size)
    if not np.array_equal(cases["labels"], labelled.test.labels[: args.cases]):
        raise RuntimeError("the regenerated cases differ from the test split; data.load_finetune changed its layout")
    findings = cases["findings"]
    explainers = {
        "classifier, grad rollout": saliency.classifier_explainer(ft["model"], preset, labelled.classes),
        "classifier, plain rollout": saliency.classifier_explainer(ft["model"], preset, labelled.classes, "rollout"),
        "stage-2 prompt similarity": saliency.similarity_explainer(models["stage 2 (CMITM)"], tok, preset,
                                                                    PROMPTS["synth"]),
    }
    overlaps = {name: saliency.overlap_by_finding(e, cases, findings, args.max_per_finding)
                for name, e in explainers.items()}
    print(f"\nShare of the map's mass inside the finding's region (downstream test cases {start}..{start + args.cases - 1},"
          f" up to {args.max_per_finding} per finding); chance = the region's share of the image:")
    names = list(overlaps)
    print(f"{'finding':<15}{'n':>4}{'chance':>8}" + "".join(f"{n:>28}" for n in names))
    for f in findings:
        o = overlaps[names[0]][f]
        print(f"{f:<15}{o['n']:>4}{o['area']:>8.3f}" + "".join(
            f"{overlaps[n][f]['mass']:>16.3f} (x{overlaps[n][f]['lift']:.2f})" for n in names))
    viz.overlap_figure(overlaps).savefig(out / "overlap.png", dpi=100)
    for f in ("effusion", "cardiomegaly", "pneumothorax"):
        i = int(np.flatnonzero(cases["labels"][:, findings.index(f)])[0])
        maps = {n.split(",")[0] if "," in n else "similarity": saliency.to_pixels(e(cases["images"][i : i + 1], f),
                                                                                  d.synth_size)[0]
                for n, e in explainers.items() if "plain" not in n}
        viz.saliency_figure(cases["images"][i], maps, cases["regions"][i][f], f"{f}, case {start + i}").savefig(
            out / f"saliency_{f}.png", dpi=100)
    ft.pop("model")
    summary = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.platform(),
               "torch": torch.__version__, "args": vars(args), "encoders": results, "finetune": ft,
               "overlap": overlaps, "seconds": time.perf_counter() - t0}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"\nfigures and results.json in {out} ({time.perf_counter() - t0:.0f} s in all)")


if __name__ == "__main__":
    main()
