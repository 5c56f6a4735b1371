"""One pre-training run for tests/test_resume.py, in its own process so that it can be killed.

    python tests/resume_worker.py JOB_DIR RUN_NAME [--resume] [--sleep S]
    torchrun --nproc_per_node 2 tests/resume_worker.py JOB_DIR --ddp-check

Reads the initial checkpoint (JOB_DIR/init: weights, preset, tokenizer) and the pairs
(JOB_DIR/pairs.npz, JOB_DIR/job.json), pre-trains with checkpoints every job["checkpoint_every"]
steps into JOB_DIR/RUN_NAME, and writes the final weights (JOB_DIR/RUN_NAME/final.safetensors) and
the history (JOB_DIR/RUN_NAME/history.json). --sleep S pauses S seconds in every forward pass (the
numbers are unchanged), so that the test has time to kill the run mid-epoch. The test runs the
uninterrupted reference in its own process through `run` (one thread, deterministic algorithms).
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from cmitm_lib.checkpoint import load_checkpoint
from cmitm_lib.data.datasets import PairData
from cmitm_lib.train import pretrain


def run(job_dir: Path, name: str, resume: bool = False, sleep: float = 0.0, checkpoints: bool = True) -> None:
    job = json.loads((job_dir / "job.json").read_text())
    pairs = PairData(np.load(job_dir / "pairs.npz")["images"], job["reports"], job["patient_ids"])
    model, tokenizer, preset, _ = load_checkpoint(job_dir / "init")
    if sleep:
        model.register_forward_hook(lambda *_: time.sleep(sleep))
    out = job_dir / name
    history = pretrain(model, tokenizer, pairs, preset, job["stage"], epochs=job["epochs"],
                       batch_size=job["batch_size"], lr=job["lr"], seed=job["seed"], device="cpu", progress=False,
                       checkpoint_dir=out if checkpoints else None,
                       checkpoint_every=job["checkpoint_every"] if checkpoints else 0, resume=resume)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "final.safetensors"))
    (out / "history.json").write_text(json.dumps(history))


class Crash(Exception):
    pass


def ddp_check(job_dir: Path) -> None:
    """Under torchrun: the job uninterrupted, then the same job crashed on every rank in the middle of
    a step (gradient accumulation over 2 micro-batches) and resumed in the same processes from its
    last checkpoint; rank 0 writes JOB_DIR/ddp_result.json."""
    from cmitm_lib import distributed, resume

    job = json.loads((job_dir / "job.json").read_text())
    pairs = PairData(np.load(job_dir / "pairs.npz")["images"], job["reports"], job["patient_ids"])

    def train(crash_at=0, **kw):
        model, tokenizer, preset, _ = load_checkpoint(job_dir / "init")
        calls = []

        def hook(*_):
            calls.append(1)
            if len(calls) == crash_at:
                raise Crash

        model.register_forward_hook(hook)
        history = pretrain(model, tokenizer, pairs, preset, job["stage"], epochs=job["epochs"],
                           batch_size=job["batch_size"], lr=job["lr"], seed=job["seed"], device="cpu",
                           progress=False, accum_steps=2, **kw)
        return model.state_dict(), [{k: v for k, v in h.items() if k not in ("seconds", "samples_per_s")}
                                    for h in history]

    want, h_want = train()
    ck = job_dir / "ddp"
    try:
        train(crash_at=2 * 10 + 1, checkpoint_dir=ck, checkpoint_every=job["checkpoint_every"])  # micro 1, step 11
    except Crash:
        pass
    distributed.barrier()
    position = resume.describe(ck)["position"]
    got, h_got = train(checkpoint_dir=ck, checkpoint_every=job["checkpoint_every"], resume=True)
    if distributed.is_main():
        diff = max((got[k].double() - want[k].double()).abs().max().item() for k in want)
        (job_dir / "ddp_result.json").write_text(json.dumps({
            "world_size": distributed.get_world_size(), "position": position, "max_abs_diff": diff,
            "history_equal": h_got == h_want, "epochs": len(h_got)}))
    distributed.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("job", type=Path)
    ap.add_argument("name", nargs="?", default="run")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--ddp-check", action="store_true", help="run `ddp_check` (under torchrun)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    if args.ddp_check:
        ddp_check(args.job)
    else:
        run(args.job, args.name, args.resume, args.sleep)


if __name__ == "__main__":
    main()
