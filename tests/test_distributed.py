"""Distributed training: the contrastive loss sees the global batch, and 2 processes = 1 process.

The two-process run is a real ``torchrun --nproc_per_node 2`` on the CPU (gloo) with the micro
preset; the worker is tests/ddp_worker.py (its docstring says how masking, dropout and BatchNorm
are made identical to the one-process run).
"""
import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cmitm_lib import distributed as D
from cmitm_lib.data.datasets import PairCollate, PairDataset
from cmitm_lib.models import CMITM

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
B = 4  # pairs per rank; the global batch is 2 * B


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_job(tmp_path, preset, tokenizer, pairs, stage="stage2", mask_ratio=0.75):
    preset = copy.deepcopy(preset)
    preset.model.vocab_size = tokenizer.get_vocab_size()
    torch.manual_seed(0)
    model = CMITM(preset.model)
    items = [PairDataset(pairs, preset.data, preset.model, train=False)[i] for i in range(2 * B)]
    batch = PairCollate(tokenizer, preset.model.max_len, 0.5)(items)
    (tmp_path / "preset.json").write_text(json.dumps(preset.to_dict()))
    (tmp_path / "job.json").write_text(json.dumps({"stage": stage, "mask_ratio": mask_ratio, "seed": 123}))
    torch.save(model.state_dict(), tmp_path / "state.pt")
    torch.save(batch, tmp_path / "batch.pt")
    n = (preset.model.img_size // preset.model.patch_size) ** 2
    return n


def _torchrun(tmp_path, nproc=2):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(HERE / "ddp_worker.py"),
           str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def test_masking_noise_stream_splits_by_rows():
    """The worker's premise: B rows drawn after skipping r*B rows equal rows r*B.. of one 2B-row draw."""
    n = 16
    full = torch.rand(2 * B, n, generator=torch.Generator().manual_seed(123))
    g = torch.Generator().manual_seed(123)
    torch.rand(B, n, generator=g)
    assert torch.equal(torch.rand(B, n, generator=g), full[B:])


def test_single_process_is_a_no_op(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert D.init_distributed() == (0, 1, 0)
    assert not torch.distributed.is_initialized()
    assert D.is_main() and D.all_reduce_mean(2.5) == 2.5
    model = torch.nn.Linear(2, 2)
    assert D.wrap_ddp(model, torch.device("cpu")) is model
    assert D.per_rank_batch(256, 4) == 64
    with pytest.raises(ValueError, match="not divisible"):
        D.per_rank_batch(10, 4)
    D.barrier()
    D.cleanup()


def test_two_processes_match_one_process_on_the_global_batch(tmp_path, micro_preset, micro_tokenizer, micro_pairs):
    _write_job(tmp_path, micro_preset, micro_tokenizer, micro_pairs)
    _torchrun(tmp_path, nproc=2)
    r0 = torch.load(tmp_path / "result_w2_r0.pt")
    r1 = torch.load(tmp_path / "result_w2_r1.pt")
    # the one-process reference: same worker code, whole global batch, no process group
    ref = _import_worker().run(tmp_path)

    assert (r0["world_size"], r1["world_size"], ref["world_size"]) == (2, 2, 1)
    assert r0["is_main"] and not r1["is_main"] and ref["is_main"]
    assert r0["wrapped"] == "DistributedDataParallel" and ref["wrapped"] == "CMITM"
    # (a) each rank has B rows (its own pairs) and 2B logit columns (the global batch), both directions
    assert r0["columns"] == r1["columns"] == [(B, 2 * B), (B, 2 * B)]
    assert ref["columns"] == [(2 * B, 2 * B), (2 * B, 2 * B)]
    # (b) the mean of the per-rank losses is the global-batch loss ...
    mean = (r0["loss"] + r1["loss"]) / 2
    assert r0["loss"] != pytest.approx(r1["loss"])  # the ranks really saw different pairs
    assert r0["loss_mean"] == pytest.approx(mean, rel=1e-12) and r1["loss_mean"] == pytest.approx(mean, rel=1e-12)
    assert mean == pytest.approx(ref["loss"], rel=1e-5)
    # ... and the DDP-averaged gradients are the global-batch gradients, identical on both ranks
    assert set(r0["grads"]) == set(ref["grads"]) == set(r1["grads"])
    assert any(k.startswith("rep_decoder.") for k in ref["grads"]) and not any(
        k.startswith("image_decoder.") for k in ref["grads"])  # stage 2 trains D_r, not D_v
    # tolerance relative to the largest gradient entry: some gradients are exactly 0 in exact
    # arithmetic (the attention key bias cancels in the softmax) and hold only rounding noise
    scale = max(g.abs().max().item() for g in ref["grads"].values())
    worst = 0.0
    for name, g in ref["grads"].items():
        assert torch.equal(r0["grads"][name], r1["grads"][name]), name
        worst = max(worst, (r0["grads"][name] - g).abs().max().item() / scale)
        torch.testing.assert_close(r0["grads"][name], g, rtol=1e-4, atol=1e-5 * scale, msg=name)
    print(f"loss 2 procs {mean:.8f} vs 1 proc {ref['loss']:.8f}; worst grad diff / max|grad| = {worst:.2e}")
    assert worst < 1e-4
    # the DistributedSampler gives each rank its own disjoint shard


def _import_worker():
    import importlib.util

    spec = importlib.util.spec_from_file_location("ddp_worker", HERE / "ddp_worker.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
