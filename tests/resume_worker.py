"""One pre-training run for tests/test_resume.py, in its own process so that it can be killed.

    python tests/resume_worker.py JOB_DIR RUN_NAME [--resume] [--sleep S]

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("job", type=Path)
    ap.add_argument("name")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--sleep", type=float, default=0.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    run(args.job, args.name, args.resume, args.sleep)


if __name__ == "__main__":
    main()
