"""The ``cmitm`` console script: the end-to-end demo, pre-training, fine-tuning, data tools.

Flags are named after the notebooks' parameters where both exist (``--batch-size`` is
``batch_size``, ``--dataset`` of ``cmitm finetune`` is ``finetune_dataset``). Bad input ends in one
``cmitm: error: ...`` line that names the problem and the fix; set CMITM_DEBUG=1 for the traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import bench, distributed, export, resume
from .checkpoint import load_checkpoint, save_checkpoint
from .config import ENCODERS, HEAD_INITS, check_choice, get_preset
from .data import FINETUNE_DATASETS, PRETRAIN_DATASETS, cache, load_finetune, load_pretrain, summary
from .device import seed_everything
from .evaluate import PROMPTS, evaluate_model, format_evaluation, retrieval
from .lab import cli as lab_cli
from .lessons import check_parameters, closing_line, format_table, train_stage
from .models import imagenet_encoder_state
from .paths import resolve
from .text import load_tokenizer, pretrained_tokenizer, save_tokenizer, train_tokenizer
from .train import build_model, encoder_state, finetune, pretrain


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", help="tiny (CPU, minutes) or paper (ViT-B/16 + BERT)")
    p.add_argument("--dataset", default="synth", help="synth (embedded) or a real dataset name, see data/README.md")
    p.add_argument("--data-root", default="", help="folder with the dataset's official files (not for synth)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--encoder", default=None, choices=ENCODERS,
                   help="E_v of a new model: vit (the paper's, default) or cnn (opt-in convolutional encoder for CPU "
                        "budgets, not the paper); a checkpoint keeps its own")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=0, help="data loader worker processes")
    p.add_argument("--cache-dir", default="", help="real data: resized copies made by `cmitm data cache`")
    p.add_argument("--reports-root", default="", help="MIMIC-CXR: folder of the extracted reports (default: "
                   "--data-root)")
    p.add_argument("--split-files", default="", help="real data: official / MRM split lists replacing the "
                   "seeded split (see data/README.md)")
    p.add_argument("--uncertain", default="", help="chexpert / csv labels: U-policy for uncertain (-1) labels: "
                   "zeros, ones, or mgca (CheXpert's five classes); default: the reader's (chexpert mgca, csv zeros)")


def _unreadable_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stop-on-unreadable", action="store_true",
                   help="stop at the first image file that cannot be read (default: skip it, another sample takes "
                        "its place; the skipped files are listed at the end of each epoch and in the metrics)")


def _on_unreadable(args: argparse.Namespace) -> str:
    return "stop" if args.stop_on_unreadable else "skip"


def _preset(args: argparse.Namespace):
    """--preset with --encoder applied."""
    preset = get_preset(args.preset)
    if args.encoder:
        preset.model.encoder = args.encoder
    return preset


def _same_encoder(args: argparse.Namespace, saved: str, path) -> str:
    """A checkpoint's E_v kind, refusing an --encoder that asks for another."""
    if args.encoder and args.encoder != saved:
        raise ValueError(f"--encoder {args.encoder}, but {path} holds a {saved!r} image encoder; drop --encoder "
                         f"(a checkpoint keeps its architecture) or pass a {args.encoder} checkpoint")
    return saved


def _reader_options(args: argparse.Namespace) -> dict:
    """--cache-dir / --reports-root / --split-files that were given, as paths for the dataset reader."""
    options = {k: str(resolve(v)) for k, v in (("cache_dir", args.cache_dir), ("reports_root", args.reports_root),
                                               ("split_files", args.split_files)) if v}
    return {**options, "uncertain": args.uncertain} if args.uncertain else options


def demo(args: argparse.Namespace) -> dict:
    """Stage 1 -> stage 2 -> fine-tune at 1% labels from random init, stage-1 init and CMITM init.

    The checkpoints go to ``--out-dir`` (default ``runs/lessons``, where the lessons look for them)."""
    check_parameters(preset=args.preset, dataset=args.dataset, device=args.device, fractions=[args.fraction])
    out = resolve(args.out_dir)
    preset = _preset(args)
    t0 = time.perf_counter()
    timings = {}
    train_pairs, _ = load_pretrain(args.dataset, args.data_root, preset, args.seed, **_reader_options(args))
    tokenizer = train_tokenizer(train_pairs.reports, preset.model.vocab_size)
    model = build_model(preset, tokenizer, seed=args.seed)
    timings["data"] = time.perf_counter() - t0
    history, encoders = {}, {"random": None}
    for stage in ("stage1", "stage2"):
        t = time.perf_counter()
        epochs = args.stage1_epochs if stage == "stage1" else args.stage2_epochs
        meta = train_stage(stage, model, tokenizer, preset, out / stage, dataset=args.dataset, data_root=args.data_root,
                           reader_options=_reader_options(args), seed=args.seed, device=args.device, epochs=epochs,
                           num_workers=args.num_workers, on_unreadable=_on_unreadable(args))
        history[stage], history[f"{stage}_retrieval"] = meta["history"], meta["retrieval"]
        encoders["stage 1 only (MRM-like)" if stage == "stage1" else "CMITM"] = encoder_state(model)
        timings[stage] = time.perf_counter() - t
        print(f"{stage}: {timings[stage]:.0f} s, held-out i2t R@5 = {meta['retrieval']['i2t_R@5']:.3f}")
    ft_data = load_finetune("synth", "", preset, args.seed)  # the embedded task, whatever pre-trained
    rows = []
    t = time.perf_counter()
    for init, state in encoders.items():
        r = finetune(ft_data, preset, state, args.fraction, epochs=args.finetune_epochs, device=args.device, seed=args.seed,
                     num_workers=args.num_workers, on_unreadable=_on_unreadable(args))
        r["init"] = init
        rows.append(r)
    timings["finetune"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    result = {"preset": args.preset, "seed": args.seed, "synth_level": preset.data.synth_level,
              "fraction": args.fraction, "timings_s": timings, "pretrain": history, "finetune": rows}
    (out / "demo_metrics.json").write_text(json.dumps(result, indent=2))
    print(format_table(rows, timings))
    print(closing_line(rows))
    print(f"checkpoints: {out / 'stage1'}, {out / 'stage2'} (the lessons load runs/lessons); "
          f"metrics: {out / 'demo_metrics.json'}")
    return result


def pretrain_cmd(args: argparse.Namespace) -> None:
    """One pre-training stage; starts from --checkpoint-in when given (stage 2 reads stage 1's)."""
    stage = {"1": "stage1", "2": "stage2", "joint": "joint"}[args.stage]
    check_parameters(preset=args.preset, dataset=args.dataset, device=args.device,
                     checkpoint_every=args.checkpoint_every, resume=args.resume, accum_steps=args.accum_steps,
                     **{k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr),
                                          ("mask_ratio", args.mask_ratio)) if v is not None})
    out = resolve(args.checkpoint_out)
    if stage == "stage2" and not args.checkpoint_in and not args.resume:
        print("note: stage 2 without --checkpoint-in starts from random weights: that is the 'CCL only' "
              "ablation, not CMITM (pass --checkpoint-in <stage-1 checkpoint> for the cascade)")
    if args.resume:
        resume.find(out)  # fail before any data is loaded
    preset = _preset(args)
    train_pairs, heldout = load_pretrain(args.dataset, args.data_root, preset, args.seed, **_reader_options(args))
    if args.checkpoint_in:
        model, tokenizer, preset, _ = load_checkpoint(args.checkpoint_in, expect_preset=args.preset)
        _same_encoder(args, preset.model.encoder, args.checkpoint_in)
    else:
        tokenizer = (load_tokenizer(out / "tokenizer.json") if args.resume and (out / "tokenizer.json").is_file()
                     else pretrained_tokenizer(resolve(args.tokenizer)) if args.tokenizer
                     else train_tokenizer(train_pairs.reports, preset.model.vocab_size))
        model = build_model(preset, tokenizer, seed=args.seed)
    checkpoint_dir = out if args.checkpoint_every or args.resume else None
    if checkpoint_dir is not None and not args.resume and distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_tokenizer(tokenizer, out / "tokenizer.json")  # a resumed run reads the same vocabulary
    history = pretrain(model, tokenizer, train_pairs, preset, stage, epochs=args.epochs, batch_size=args.batch_size,
                       lr=args.lr, mask_ratio=args.mask_ratio, device=args.device, seed=args.seed,
                       num_workers=args.num_workers, checkpoint_dir=checkpoint_dir,
                       checkpoint_every=args.checkpoint_every, resume=args.resume, accum_steps=args.accum_steps,
                       on_unreadable=_on_unreadable(args))
    if not distributed.is_main():  # under torchrun rank 0 evaluates and saves
        distributed.cleanup()
        return
    meta = {"stage": stage, "dataset": args.dataset, "history": history,
            "unreadable_images": sorted({p for h in history for p in h.get("unreadable_images", [])}),
            "heldout_retrieval": retrieval(model, tokenizer, heldout, preset, args.device)}
    path = save_checkpoint(args.checkpoint_out, model, preset, tokenizer, meta)
    print(f"{stage}: final loss {history[-1]['loss']:.4f}, held-out i2t R@1 "
          f"{meta['heldout_retrieval']['i2t_R@1']:.3f}; checkpoint: {path}")
    distributed.cleanup()


def finetune_cmd(args: argparse.Namespace) -> None:
    """Fine-tune from --checkpoint-in (or random init) at each --fractions value; writes results JSON."""
    check_parameters(preset=args.preset, finetune_dataset=args.dataset, device=args.device, fractions=args.fractions)
    preset = _preset(args)
    if args.checkpoint_in and args.imagenet_weights:
        raise SystemExit("give --checkpoint-in (a CMITM checkpoint) or --imagenet-weights (a timm ViT), not both")
    encoder = None
    if args.checkpoint_in:  # the classifier takes the checkpoint's E_v architecture
        encoder, kind = _encoder_from(resolve(args.checkpoint_in), args.preset)
        preset.model.encoder = _same_encoder(args, kind, args.checkpoint_in)
    if args.imagenet_weights:
        encoder = imagenet_encoder_state(preset.model, resolve(args.imagenet_weights))
    if args.head_init:
        preset.finetune.head_init = args.head_init
    data = load_finetune(args.dataset, args.data_root, preset, args.seed, **_reader_options(args))
    rows = [finetune(data, preset, encoder, f, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                     device=args.device, seed=args.seed, num_workers=args.num_workers,
                     on_unreadable=_on_unreadable(args)) for f in args.fractions]
    init = f"imagenet:{Path(args.imagenet_weights).name}" if args.imagenet_weights else "random"
    for r in rows:
        r["init"] = args.checkpoint_in or init
    out = resolve(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "finetune_metrics.json").write_text(json.dumps(rows, indent=2))
    print(format_table(rows))
    bad = sorted({p for r in rows for p in r["unreadable_images"]})
    if bad:
        print(f"unreadable images skipped: {len(bad)} (listed under unreadable_images in "
              f"{out / 'finetune_metrics.json'}): {', '.join(bad)}")


def evaluate_cmd(args: argparse.Namespace) -> dict:
    """Held-out Recall@1/5/10 (image->report, report->image) and zero-shot AUC from prompts, no labels used.

    Pair datasets (synth, mimic, openi) give retrieval on the held-out pairs; labelled ones (synth,
    nih, chexpert, rsna, covidx) give zero-shot AUC on the test split. --random-init scores the same
    architecture and vocabulary with fresh weights: the floor the pre-training should rise above.
    """
    check_choice("dataset", args.dataset, tuple(dict.fromkeys(PRETRAIN_DATASETS + tuple(PROMPTS))))
    check_parameters(device=args.device)
    if not args.checkpoint and not args.random_init:
        raise ValueError("cmitm evaluate needs --checkpoint DIR (a pre-trained checkpoint folder) or --random-init")
    if args.checkpoint:
        model, tokenizer, preset, meta = load_checkpoint(args.checkpoint)
        _same_encoder(args, preset.model.encoder, args.checkpoint)
        name = "random init" if args.random_init else f"{meta.get('stage', 'checkpoint')} ({args.checkpoint})"
    else:
        check_parameters(preset=args.preset)
        preset, tokenizer, name = _preset(args), None, "random init"
    options = _reader_options(args)
    train_pairs, pairs = (load_pretrain(args.dataset, args.data_root, preset, args.seed, **options)
                          if args.dataset in PRETRAIN_DATASETS else (None, None))
    labelled = (load_finetune(args.dataset, args.data_root, preset, args.seed, **options)
                if args.dataset in FINETUNE_DATASETS and args.dataset in PROMPTS else None)  # csv: no prompts
    if tokenizer is None:
        if train_pairs is None:
            raise ValueError(f"--random-init without --checkpoint needs report text for a vocabulary; dataset "
                             f"{args.dataset!r} has none. Pass --checkpoint DIR to use its tokenizer")
        tokenizer = train_tokenizer(train_pairs.reports, preset.model.vocab_size)
    if args.random_init:
        seed_everything(args.seed)
        model = build_model(preset, tokenizer)
    result = evaluate_model(model, tokenizer, preset, pairs, labelled, args.dataset, args.device)
    print(f"{args.dataset}: " + ", ".join(part for part in (
        f"retrieval on {len(pairs)} held-out pairs" if pairs is not None else "",
        f"zero-shot on {len(labelled.test)} test images" if labelled is not None else "") if part))
    print(format_evaluation({name: result}))
    if "zeroshot_per_class" in result:
        print("zero-shot AUC per class: " + ", ".join(f"{c} {v:.3f}" for c, v in result["zeroshot_per_class"].items()))
    return result


def _encoder_from(path: Path, preset: str | None = None) -> tuple[dict, str]:
    """E_v's weights in a checkpoint folder, and its kind (``ModelConfig.encoder``)."""
    model, _, saved, _ = load_checkpoint(path, expect_preset=preset)
    return encoder_state(model), saved.model.encoder


def _demo_parser(sub) -> None:
    """`cmitm demo`: stage 1, stage 2 and fine-tuning on the embedded data."""
    p = sub.add_parser("demo", help="end-to-end demo on the embedded SynthCXR data")
    _common(p)
    p.add_argument("--fraction", type=float, default=0.01, help="label fraction for fine-tuning")
    p.add_argument("--stage1-epochs", type=int, default=None, help="default: the preset's")
    p.add_argument("--stage2-epochs", type=int, default=None, help="default: the preset's")
    p.add_argument("--finetune-epochs", type=int, default=None, help="default: the preset's")
    p.add_argument("--out-dir", default="runs/lessons", help="checkpoints and metrics; the lessons load runs/lessons "
                   "(relative paths are taken from the repo root)")
    _unreadable_flag(p)
    p.set_defaults(func=demo)


def _pretrain_parser(sub) -> None:
    """`cmitm pretrain`: one pre-training stage."""
    p = sub.add_parser("pretrain", help="one pre-training stage (runs under torchrun too)")
    _common(p)
    p.add_argument("--stage", required=True, choices=("1", "2", "joint"))
    p.add_argument("--epochs", type=int, default=None, help="default: the preset's for the stage")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--mask-ratio", type=float, default=None)
    p.add_argument("--checkpoint-in", default="", help="start from this checkpoint (stage 2: the stage-1 one)")
    p.add_argument("--checkpoint-out", required=True, help="folder to write the checkpoint to")
    p.add_argument("--tokenizer", default="", help="local BERT folder (tokenizer.json or vocab.txt) to use "
                   "instead of a WordPiece vocabulary trained on the reports")
    p.add_argument("--checkpoint-every", type=int, default=0, help="N > 0: write a resume checkpoint "
                   "(--checkpoint-out/resume.safetensors) every N steps and at the end of each epoch")
    p.add_argument("--resume", action="store_true", help="continue the run from --checkpoint-out/resume.safetensors "
                   "(mid-epoch included; same flags, --lr may change)")
    p.add_argument("--accum-steps", type=int, default=1, help="gradient accumulation over k micro-batches of "
                   "batch-size / k; each micro-batch's contrastive loss sees only its own pairs as negatives")
    _unreadable_flag(p)
    p.set_defaults(func=pretrain_cmd)


def _finetune_parser(sub) -> None:
    """`cmitm finetune`: fine-tuning at label fractions."""
    p = sub.add_parser("finetune", help="fine-tune E_v + linear head at label fractions")
    _common(p)
    p.set_defaults(dataset="synth")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="default: the preset's for the fraction")
    p.add_argument("--head-init", choices=HEAD_INITS, default=None,
                   help="probe: LP-FT, the head starts as the linear probe of the frozen E_v; zero: MAE's near-zero "
                        "head (the paper's protocol). Default: the preset's (tiny: probe, paper: zero)")
    p.add_argument("--checkpoint-in", default="", help="pre-trained checkpoint; empty = random init")
    p.add_argument("--imagenet-weights", default="",
                   help="E_v from a local timm ViT checkpoint (.safetensors), e.g. ImageNet ViT-B/16 for the "
                        "paper preset")
    p.add_argument("--out-dir", default="runs/finetune")
    _unreadable_flag(p)
    p.set_defaults(func=finetune_cmd)


def _evaluate_parser(sub) -> None:
    """`cmitm evaluate`: held-out retrieval and zero-shot AUC."""
    p = sub.add_parser("evaluate", help="held-out Recall@1/5/10 both ways and zero-shot AUC of a checkpoint")
    _common(p)
    p.add_argument("--checkpoint", default="", help="checkpoint folder (stage 1 or stage 2); its preset is used")
    p.add_argument("--random-init", action="store_true",
                   help="fresh weights (the checkpoint's architecture and vocabulary, else --preset's)")
    p.set_defaults(func=evaluate_cmd)


def _tool_parsers(sub) -> None:
    """`cmitm data`, `cmitm bench`, `cmitm export`: tools that parse their own flags."""
    pd = sub.add_parser("data", add_help=False,
                        help="dataset tools: `cmitm data summary --help`, `cmitm data cache --help`")
    pd.add_argument("data_command", nargs="?", choices=("summary", "cache"))
    sub.add_parser("bench", add_help=False,
                   help="time a training step on synthetic inputs: `cmitm bench --help`")
    sub.add_parser("export", add_help=False,
                   help="E_v for timm and E_t + tokenizer for transformers: `cmitm export --checkpoint DIR --out OUT`")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cmitm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_demo_parser, _pretrain_parser, _finetune_parser, lab_cli.add_parser, _evaluate_parser, _tool_parsers):
        add(sub)
    args, rest = parser.parse_known_args(argv)
    if args.command == "export":  # parses its own flags
        export.main(rest)
        return
    if args.command == "bench":  # the benchmark parses its own flags
        bench.main(rest)
        return
    if args.command == "data":  # the data tools parse their own flags
        if args.data_command is None:
            parser.error("cmitm data needs a tool: `cmitm data summary --help` or `cmitm data cache --help`")
        sys.exit((summary if args.data_command == "summary" else cache).main(rest))
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.func(args)


def entry() -> None:
    """The console script: `main`, with bad input reported as one line instead of a traceback."""
    try:
        main()
    except (ValueError, FileNotFoundError, NotADirectoryError) as err:
        if os.environ.get("CMITM_DEBUG"):
            raise
        sys.exit(f"cmitm: error: {_one_line(err)}")


def _one_line(err: Exception) -> str:
    """The message of an error; one raised in a DataLoader worker carries the worker's traceback, of
    which the last line is the message."""
    lines = str(err).strip().splitlines()
    if len(lines) > 1 and lines[0].startswith("Caught ") and "DataLoader worker" in lines[0]:
        return lines[-1].split(": ", 1)[-1]
    return str(err)


if __name__ == "__main__":
    entry()
