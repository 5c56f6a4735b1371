"""The ``cmitm`` console script: the end-to-end demo, pre-training, fine-tuning, data tools.

Flags map one to one onto the notebooks' parameters (``--batch-size`` is ``batch_size``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .config import check_parameters, get_preset
from .paths import resolve


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", help="tiny (CPU, minutes) or paper (ViT-B/16 + BERT)")
    p.add_argument("--dataset", default="synth", help="pre-training data: synth, mimic, openi")
    p.add_argument("--data-root", default="", help="folder with the dataset's official files (not for synth)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=0, help="data loader worker processes")


def demo(args: argparse.Namespace) -> dict:
    """Stage 1 -> stage 2 -> fine-tune at 1% labels from random init, stage-1 init and CMITM init."""
    from .checkpoint import save_checkpoint
    from .data import load_finetune, load_pretrain
    from .text import train_tokenizer
    from .train import build_model, encoder_state, finetune, pretrain, retrieval

    check_parameters(preset=args.preset, dataset=args.dataset, device=args.device, fractions=[args.fraction])
    out = resolve(args.out_dir)
    preset = get_preset(args.preset)
    t0 = time.perf_counter()
    timings = {}
    train_pairs, heldout = load_pretrain(args.dataset, args.data_root, preset, args.seed)
    tokenizer = train_tokenizer(train_pairs.reports, preset.model.vocab_size)
    model = build_model(preset, tokenizer)
    timings["data"] = time.perf_counter() - t0
    history = {}
    for stage in ("stage1", "stage2"):
        t = time.perf_counter()
        epochs = args.stage1_epochs if stage == "stage1" else args.stage2_epochs
        history[stage] = pretrain(model, tokenizer, train_pairs, preset, stage, epochs=epochs, device=args.device,
                                  seed=args.seed, num_workers=args.num_workers)
        history[f"{stage}_retrieval"] = retrieval(model, tokenizer, heldout, preset, args.device)
        save_checkpoint(out / stage, model, preset, tokenizer, {"stage": stage, "history": history[stage]})
        timings[stage] = time.perf_counter() - t
        print(f"{stage}: {timings[stage]:.0f} s, held-out i2t R@1 = {history[f'{stage}_retrieval']['i2t_R@1']:.3f}")
    stage1_encoder = _encoder_from(out / "stage1")
    ft_data = load_finetune(args.dataset if args.dataset == "synth" else "synth", "", preset, args.seed)
    rows = []
    t = time.perf_counter()
    for init, state in (("random", None), ("stage 1 only (MRM-like)", stage1_encoder), ("CMITM", encoder_state(model))):
        r = finetune(ft_data, preset, state, args.fraction, epochs=args.finetune_epochs, device=args.device, seed=args.seed,
                     num_workers=args.num_workers)
        r["init"] = init
        rows.append(r)
    timings["finetune"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    result = {"preset": args.preset, "fraction": args.fraction, "timings_s": timings, "pretrain": history,
              "finetune": rows}
    (out / "demo_metrics.json").write_text(json.dumps(result, indent=2))
    print(format_table(rows, timings))
    print(f"metrics: {out / 'demo_metrics.json'}")
    return result


def _encoder_from(path: Path) -> dict:
    from .checkpoint import load_checkpoint
    from .train import encoder_state

    model, _, _, _ = load_checkpoint(path)
    return encoder_state(model)


def format_table(rows: list[dict], timings: dict | None = None) -> str:
    metric = rows[0]["metric"]
    lines = [f"Fine-tuning on {rows[0]['dataset']} with {rows[0]['fraction']:.0%} of labels "
             f"({rows[0]['n_train']} images), test {metric.upper()} (model chosen on validation):",
             f"{'initialisation':<26}{'val ' + metric:>10}{'test ' + metric:>10}"]
    for r in rows:
        lines.append(f"{r['init']:<26}{r[f'val_{metric}']:>10.3f}{r[f'test_{metric}']:>10.3f}")
    if timings:
        lines.append("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cmitm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="end-to-end demo on the embedded SynthCXR data")
    _common(p)
    p.add_argument("--fraction", type=float, default=0.01, help="label fraction for fine-tuning")
    p.add_argument("--stage1-epochs", type=int, default=None, help="default: the preset's")
    p.add_argument("--stage2-epochs", type=int, default=None, help="default: the preset's")
    p.add_argument("--finetune-epochs", type=int, default=None, help="default: the preset's")
    p.add_argument("--out-dir", default="runs/demo", help="relative paths are taken from the repo root")
    p.set_defaults(func=demo)
    pd = sub.add_parser("data", help="dataset tools: `cmitm data summary --help`, `cmitm data cache --help`")
    pd.add_argument("data_command", choices=("summary", "cache"))
    args, rest = parser.parse_known_args(argv)
    if args.command == "data":  # the data tools parse their own flags
        from .data import cache, summary

        sys.exit((summary if args.data_command == "summary" else cache).main(rest))
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.func(args)


if __name__ == "__main__":
    main()
