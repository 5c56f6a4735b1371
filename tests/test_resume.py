"""Exact resume: a run killed mid-epoch (SIGKILL) and resumed reaches the uninterrupted run's weights;
a non-finite loss stops the run and keeps the last good checkpoint.

The interrupted run and its resumption are separate processes (tests/resume_worker.py), the reference
runs in the test's process: CPU, one thread, deterministic algorithms, the micro preset, the joint
objective (every module, dropout, masks, crops), 5 epochs of 6 steps, a checkpoint every 5 steps.
"""
import copy
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_post_hook

from cmitm_lib import resume
from cmitm_lib.checkpoint import save_checkpoint
from cmitm_lib.cli import main as cli_main
from cmitm_lib.train import build_model, pretrain

HERE = Path(__file__).resolve().parent
JOB = {"stage": "joint", "epochs": 5, "batch_size": 8, "lr": 1e-3, "seed": 7, "checkpoint_every": 5}
PER_EPOCH = 48 // 8  # micro_pairs has 48 pairs


@pytest.fixture(autouse=True)
def one_thread():
    """Micro models gain nothing from a second thread, and on a shared CPU lose much to it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _worker(job_dir, name, *flags):
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, str(HERE / "resume_worker.py"), str(job_dir), name, *flags], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=120):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]


def _no_timings(history):
    return [{k: v for k, v in h.items() if k not in ("seconds", "samples_per_s")} for h in history]


@pytest.fixture
def job_dir(tmp_path, micro_preset, micro_tokenizer, micro_pairs):
    preset = copy.deepcopy(micro_preset)
    torch.manual_seed(0)
    model = build_model(preset, micro_tokenizer)
    save_checkpoint(tmp_path / "init", model, preset, micro_tokenizer)
    np.savez(tmp_path / "pairs.npz", images=micro_pairs.images)
    (tmp_path / "job.json").write_text(json.dumps({**JOB, "reports": micro_pairs.reports,
                                                   "patient_ids": micro_pairs.patient_ids}))
    return tmp_path


def _uninterrupted(job_dir):
    """The reference run, in this process (while the worker starts), without checkpoints."""
    spec = importlib.util.spec_from_file_location("resume_worker", HERE / "resume_worker.py")
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # one thread: the fixture above
    try:
        worker.run(job_dir, "uninterrupted", checkpoints=False)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    assert not (job_dir / "uninterrupted" / resume.FILE).exists()


def test_killed_and_resumed_run_reaches_the_uninterrupted_weights(job_dir):
    killed = _worker(job_dir, "interrupted", "--sleep", "0.15")
    _uninterrupted(job_dir)
    ckpt = job_dir / "interrupted" / resume.FILE
    deadline = time.time() + 120
    while True:  # kill at the first mid-epoch checkpoint after the first epoch
        assert killed.poll() is None, "the run ended before it could be killed:\n" + killed.communicate()[0][-3000:]
        assert time.time() < deadline, "no mid-epoch checkpoint appeared"
        if ckpt.exists():
            epoch, batch = resume.describe(ckpt)["position"]
            if epoch >= 1 and 0 < batch < PER_EPOCH:
                break
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=30)
    assert killed.returncode == -signal.SIGKILL
    state = resume.describe(ckpt)
    epoch, batch = state["position"]
    assert 0 < batch < PER_EPOCH and state["step"] == epoch * PER_EPOCH + batch < JOB["epochs"] * PER_EPOCH
    assert len(state["history"]) == epoch and not (job_dir / "interrupted" / "final.safetensors").exists()

    resumed = _worker(job_dir, "interrupted", "--resume")
    _finish(resumed)
    want = load_file(str(job_dir / "uninterrupted" / "final.safetensors"))
    got = load_file(str(job_dir / "interrupted" / "final.safetensors"))
    assert set(got) == set(want)
    worst = max((got[k].double() - want[k].double()).abs().max().item() for k in want)
    assert worst == 0.0 and all(torch.equal(got[k], want[k]) for k in want)
    h_want = json.loads((job_dir / "uninterrupted" / "history.json").read_text())
    h_got = json.loads((job_dir / "interrupted" / "history.json").read_text())
    assert len(h_got) == JOB["epochs"] and _no_timings(h_got) == _no_timings(h_want)
    # and the run really trained: the weights moved from the initial ones
    init = load_file(str(job_dir / "init" / "model.safetensors"))
    key = "image_encoder.blocks.0.attn.qkv.weight"
    assert not torch.equal(init[key], got[key])


@pytest.mark.slow
def test_two_process_run_resumes_exactly(job_dir):
    """torchrun, 2 CPU processes (gloo), gradient accumulation: a crash mid-step on every rank and a
    resume from the last (mid-epoch) checkpoint end on the uninterrupted run's weights and history
    (each rank's running loss sums are in the checkpoint)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(port), str(HERE / "resume_worker.py"), str(job_dir),
           "--ddp-check"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    r = json.loads((job_dir / "ddp_result.json").read_text())
    assert r["world_size"] == 2 and r["position"] == [1, 4] and r["epochs"] == JOB["epochs"]
    assert r["max_abs_diff"] == 0.0 and r["history_equal"]


def test_data_order_is_a_function_of_seed_and_epoch_and_splits_over_ranks():
    one = resume.EpochBatches(50, 8, seed=3)
    one.set_epoch(2)
    batches = list(one)
    assert len(batches) == len(one) == 6  # 50 // 8, the partial batch dropped
    again = resume.EpochBatches(50, 8, seed=3)
    again.set_epoch(2, start=4)
    assert list(again) == batches[4:] and len(again) == 2
    other = resume.EpochBatches(50, 8, seed=3)
    other.set_epoch(3)
    assert [i for _, i in other] != [i for _, i in batches]
    flat = [i for _, idx in batches for i in idx]
    assert len(set(flat)) == 48
    for r in range(2):  # two ranks: halves of the same global batches, with their own seeds
        half = resume.EpochBatches(50, 8, seed=3, rank=r, world=2)
        half.set_epoch(2)
        assert [idx for _, idx in half] == [idx[4 * r:4 * r + 4] for _, idx in batches]
    assert len({s for s, _ in batches}) == 6


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, micro_preset, micro_tokenizer,
                                                                          micro_pairs):
    p = copy.deepcopy(micro_preset)
    torch.manual_seed(0)
    model = build_model(p, micro_tokenizer)
    calls = []

    def poison(module, args, out):  # step 9 (epoch 2, batch 3) returns a NaN loss
        calls.append(1)
        return {**out, "loss": out["loss"] * float("nan")} if len(calls) == 9 else out

    hook = model.register_forward_hook(poison)
    ck = tmp_path / "ck"
    with pytest.raises(FloatingPointError) as e:
        pretrain(model, micro_tokenizer, micro_pairs, p, "joint", epochs=3, batch_size=8, lr=1e-3, progress=False,
                 checkpoint_dir=ck, checkpoint_every=4)
    msg = str(e.value)
    for part in ("joint: the loss (nan) became non-finite", "epoch 2", "step 9 of 18", "batch 3 of 6", "lr ",
                 f"The last good checkpoint is {ck / resume.FILE}", "--resume --lr"):
        assert part in msg, (part, msg)
    state = resume.describe(ck)
    assert state["step"] == 8 and state["position"] == [1, 2] and len(state["history"]) == 1
    assert not list(ck.glob("*.tmp"))
    hook.remove()
    # the kept checkpoint is loadable, finite, and a run resumes from it (here with a lower lr)
    weights = load_file(str(ck / resume.FILE))
    assert all(torch.isfinite(v).all() for k, v in weights.items() if k.startswith("model/"))
    fresh = build_model(p, micro_tokenizer)
    hist = pretrain(fresh, micro_tokenizer, micro_pairs, p, "joint", epochs=3, batch_size=8, lr=5e-4, progress=False,
                    checkpoint_dir=ck, resume=True)
    assert [h["epoch"] for h in hist] == [1, 2, 3] and resume.describe(ck)["step"] == 18
    assert hist[1]["lr"] < 5e-4 and all(np.isfinite(h["loss"]) for h in hist)


def test_no_checkpoint_without_finite_weights(tmp_path, micro_preset, micro_tokenizer, micro_pairs):
    """An absurd lr: the first steps have a finite loss but blow the weights up; nothing is written."""
    p = copy.deepcopy(micro_preset)
    model = build_model(p, micro_tokenizer)
    with pytest.raises(FloatingPointError, match=r"became non-finite at epoch 1, step \d+ of 6 .* lr \d"):
        pretrain(model, micro_tokenizer, micro_pairs, p, "joint", epochs=1, batch_size=8, lr=1e30, progress=False,
                 checkpoint_dir=tmp_path, checkpoint_every=1)
    for f in tmp_path.glob("*.safetensors"):
        assert all(torch.isfinite(v).all() for k, v in load_file(str(f)).items() if k.startswith("model/"))


def test_resume_errors_name_the_file_and_the_difference(tmp_path, micro_preset, micro_tokenizer, micro_pairs):
    p = copy.deepcopy(micro_preset)
    model = build_model(p, micro_tokenizer)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'ck' / resume.FILE} does not exist"):
        pretrain(model, micro_tokenizer, micro_pairs, p, "stage2", epochs=1, batch_size=16, progress=False,
                 checkpoint_dir=tmp_path / "ck", resume=True)
    pretrain(model, micro_tokenizer, micro_pairs, p, "stage2", epochs=1, batch_size=16, progress=False,
             checkpoint_dir=tmp_path / "ck")
    with pytest.raises(ValueError, match=r"another run \(config.batch_size: checkpoint 16, now 8\)"):
        pretrain(model, micro_tokenizer, micro_pairs, p, "stage2", epochs=1, batch_size=8, progress=False,
                 checkpoint_dir=tmp_path / "ck", resume=True)
    with pytest.raises(ValueError, match="pass checkpoint_dir"):
        pretrain(model, micro_tokenizer, micro_pairs, p, "stage2", batch_size=16, resume=True)
    with pytest.raises(ValueError, match="checkpoint_every=5 needs checkpoint_dir"):
        pretrain(model, micro_tokenizer, micro_pairs, p, "stage2", batch_size=16, checkpoint_every=5)
    # the CLI checks before it loads any data
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'run' / resume.FILE} does not exist"):
        cli_main(["pretrain", "--stage", "1", "--checkpoint-out", str(tmp_path / "run"), "--resume"])


def test_gradient_accumulation_steps_per_global_batch_with_micro_batch_negatives(monkeypatch, micro_preset,
                                                                                micro_tokenizer, micro_pairs):
    """accum_steps=2 at batch 16: forwards of 8 pairs, InfoNCE over 8 x 8 logits, 3 optimizer steps per
    epoch (the schedule of batch 16), and a result different from one 16-pair step (other negatives)."""
    import cmitm_lib.models as models

    p = copy.deepcopy(micro_preset)
    contrasted, steps = [], []
    real_info_nce = models.info_nce
    monkeypatch.setattr(models, "info_nce", lambda zv, zt, t: contrasted.append(zv.shape[0]) or real_info_nce(zv, zt, t))
    handle = register_optimizer_step_post_hook(lambda *_: steps.append(1))
    try:
        runs = {}
        for k in (1, 2):
            contrasted.clear()
            steps.clear()
            torch.manual_seed(0)
            model = build_model(p, micro_tokenizer)
            hist = pretrain(model, micro_tokenizer, micro_pairs, p, "stage2", epochs=2, batch_size=16, lr=1e-3,
                            progress=False, accum_steps=k)
            runs[k] = (model, hist, list(contrasted), len(steps))
    finally:
        handle.remove()
    assert runs[1][2] == [16] * 6 and runs[2][2] == [8] * 12  # the negatives: the (micro-)batch
    assert runs[1][3] == runs[2][3] == 6  # 48 pairs / 16 per step, 2 epochs
    assert [h["lr"] for h in runs[1][1]] == [h["lr"] for h in runs[2][1]]
    w1, w2 = (dict(m.named_parameters())["image_proj.net.0.weight"] for m, *_ in (runs[1], runs[2]))
    assert not torch.equal(w1, w2)
    with pytest.raises(ValueError, match="batch_size=16 is not divisible by accum_steps=3"):
        pretrain(runs[1][0], micro_tokenizer, micro_pairs, p, "stage2", batch_size=16, accum_steps=3)


def test_resume_with_gradient_accumulation_is_exact(tmp_path, micro_preset, micro_tokenizer, micro_pairs):
    """A run stopped by an exception mid-step (between micro-batches) and resumed ends on the same weights."""
    p = copy.deepcopy(micro_preset)
    args = dict(epochs=2, batch_size=16, lr=1e-3, progress=False, accum_steps=2, checkpoint_every=1)
    torch.manual_seed(0)
    init = build_model(p, micro_tokenizer).state_dict()
    reference = build_model(p, micro_tokenizer)
    reference.load_state_dict(init)
    want = pretrain(reference, micro_tokenizer, micro_pairs, p, "joint", checkpoint_dir=tmp_path / "a", **args)
    crashed = build_model(p, micro_tokenizer)
    crashed.load_state_dict(init)
    calls = []

    def crash(*_):  # the 2nd micro-batch of step 5 (epoch 2, step 2 of 3) never finishes
        calls.append(1)
        if len(calls) == 10:
            raise KeyboardInterrupt

    crashed.register_forward_hook(crash)
    with pytest.raises(KeyboardInterrupt):
        pretrain(crashed, micro_tokenizer, micro_pairs, p, "joint", checkpoint_dir=tmp_path / "b", **args)
    assert resume.describe(tmp_path / "b")["position"] == [1, 1]
    resumed = build_model(p, micro_tokenizer)
    got = pretrain(resumed, micro_tokenizer, micro_pairs, p, "joint", checkpoint_dir=tmp_path / "b", resume=True, **args)
    assert _no_timings(got) == _no_timings(want)
    for name, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name


def test_worker_processes_give_the_same_run(micro_preset, micro_tokenizer, micro_pairs):
    """Crops and word masks are seeded per batch inside whichever process loads it, so worker
    processes change nothing (and a resumed run with workers stays exact)."""
    p = copy.deepcopy(micro_preset)
    torch.manual_seed(0)
    init = build_model(p, micro_tokenizer).state_dict()
    runs = []
    for workers in (0, 2):
        model = build_model(p, micro_tokenizer)
        model.load_state_dict(init)
        hist = pretrain(model, micro_tokenizer, micro_pairs, p, "stage1", epochs=2, batch_size=16, lr=1e-3,
                        progress=False, num_workers=workers)
        runs.append((model.state_dict(), _no_timings(hist)))
    assert runs[0][1] == runs[1][1]
    assert all(torch.equal(runs[0][0][k], runs[1][0][k]) for k in runs[0][0])
