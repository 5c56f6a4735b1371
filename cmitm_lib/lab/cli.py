"""`cmitm experiment`: the embedded benchmark's command (the `cmitm` console script hands it over)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..paths import resolve
from .recipes import EXPERIMENTS, EXTRA_EXPERIMENTS, PROTOCOLS, SCALES
from .report import write_docs, write_report
from .runner import run


def add_parser(sub) -> None:
    """The ``experiment`` subcommand of the ``cmitm`` parser."""
    p = sub.add_parser("experiment", help="the embedded benchmark: Table 1, Table 2, Fig. 2, Fig. 3 in miniature")
    p.add_argument("experiment", choices=(*EXPERIMENTS, "all"),
                   help="all: " + ", ".join(n for n in EXPERIMENTS if n not in EXTRA_EXPERIMENTS) + "; calibration: "
                        "random init at 1/10/100%% on every task (use with --protocol finetune); claim: random "
                        "init, stage 1 and CMITM only; ratios: CMITM at stage-2 mask ratios 0-0.75 against random "
                        "init on every task; reference: random init and an E_v supervised with the pre-training "
                        "images' findings (not the paper's)")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--quick", action="store_true", help="same as --scale quick")
    scale.add_argument("--scale", default=None, choices=tuple(SCALES),
                       help="default full. " + "; ".join(f"{name}: {s.about}" for name, s in SCALES.items()))
    p.add_argument("--seeds", type=int, default=None, help="default: the scale's")
    p.add_argument("--first-seed", type=int, default=0,
                   help="run seeds FIRST_SEED .. FIRST_SEED+SEEDS-1 (default 0): fresh seeds to confirm a result; "
                        "their tables get a section of their own (e.g. claim_seeds5-9)")
    p.add_argument("--protocol", default="linear", choices=PROTOCOLS,
                   help="linear: frozen E_v + logistic regression (CPU); finetune: every weight (GPU)")
    p.add_argument("--out", default="runs/experiments", help="results, checkpoints and plots; re-running resumes")
    p.add_argument("--fractions", type=float, nargs="+", default=None,
                   help="label fractions instead of the experiment's (e.g. 0.01 to fine-tune on a CPU)")
    p.add_argument("--docs", default="", help="also write this markdown file (e.g. docs/RESULTS.md)")
    p.add_argument("--imagenet-weights", default="",
                   help="table1 gains an 'ImageNet init' row: E_v from this local timm ViT checkpoint (.safetensors)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=experiment_cmd)


def experiment_cmd(args: argparse.Namespace) -> None:
    """Run (or resume) the grid of one experiment, or all four; write CSV, plots and markdown."""
    scale = "quick" if args.quick else args.scale or "full"
    names = [n for n in EXPERIMENTS if n not in EXTRA_EXPERIMENTS] if args.experiment == "all" else [args.experiment]
    seeds = SCALES[scale].seeds if args.seeds is None else args.seeds
    fractions = f" --fractions {' '.join(f'{f:g}' for f in args.fractions)}" if args.fractions else ""
    weights = f" --imagenet-weights {args.imagenet_weights}" if args.imagenet_weights else ""
    first = f" --first-seed {args.first_seed}" if args.first_seed else ""
    for name in names:
        table1 = name == "table1"  # the ImageNet row belongs to Table 1 only (also under "all")
        rows = run(name, scale, seeds, args.out, args.protocol, args.device, fractions=args.fractions,
                   imagenet_weights=(args.imagenet_weights or None) if table1 else None,
                   first_seed=args.first_seed)
        command = (f"cmitm experiment {name} --scale {scale} --seeds {seeds}{first} --protocol {args.protocol}"
                   f"{fractions}{weights if table1 else ''}")
        paths = write_report(name, rows, resolve(args.out) / scale, command)
        print(Path(paths["markdown"]).read_text())
        print("written: " + ", ".join(paths.values()))
    if args.docs:
        write_docs(resolve(args.out) / scale, resolve(args.docs),
                   f"cmitm experiment {args.experiment} --scale {scale} --seeds {seeds}{first} --protocol "
                   f"{args.protocol}{fractions}{weights} --docs {args.docs}")
        print(f"written: {resolve(args.docs)}")
