"""The step benchmark runs, counts FLOPs right, and names GPU peaks correctly."""
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from cmitm_lib import bench as B
from cmitm_lib.config import get_preset
from cmitm_lib.models import CMITM


@pytest.fixture(autouse=True)
def one_thread():
    """The test machine is small and shared: one thread avoids oversubscription stalls."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("stage", B.BENCH_STAGES)
def test_micro_bench_runs_two_steps_on_cpu(micro_preset, stage):
    r = B.bench(micro_preset, stage, batch_size=4, steps=2, warmup=1, device="cpu")
    assert r["stage"] == stage and r["batch_size"] == 4 and r["steps"] == 2
    for key in ("samples_per_s", "ms_per_step", "ms_per_step_median", "gflops_per_sample", "achieved_tflops"):
        assert r[key] > 0, key
    assert r["peak_mem_mb"] >= 0 and r["mem_kind"].startswith("peak RSS growth")  # a high-water mark: may not grow
    assert r["mfu"] is None and r["peak_tflops"] is None and r["precision"] == "fp32"
    assert r["params_trained"] > 0
    assert r["ms_per_step"] == pytest.approx(1e3 * 4 / r["samples_per_s"])


def test_cli_prints_json(capsys):
    rows = B.main(["--preset", "tiny", "--stage", "finetune", "--batch-size", "2", "--steps", "1", "--warmup", "0",
                   "--device", "cpu", "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert printed == rows and rows[0]["preset"] == "tiny" and rows[0]["samples_per_s"] > 0
    assert "samples/s" in B.format_table(rows)


def test_bench_rejects_bad_arguments(micro_preset):
    with pytest.raises(ValueError, match="stage="):
        B.bench(micro_preset, "stage3", 2, 1, 0, "cpu")
    with pytest.raises(ValueError, match="batch_size"):
        B.bench(micro_preset, "stage2", 1, 1, 0, "cpu")


def test_synthetic_batch_layout(micro_preset):
    m = micro_preset.model
    b = B.synthetic_batch(micro_preset, 3, "cpu")
    assert b["image"].shape == (3, 1, m.img_size, m.img_size)
    assert b["target"].shape == (3, 1, micro_preset.data.hi_size, micro_preset.data.hi_size)
    assert b["input_ids"].shape == (3, m.max_len) and b["input_ids"].max() < m.vocab_size
    masked = b["mlm_labels"] != -100
    assert torch.equal(masked, b["masked_ids"] == 4)  # [MASK]
    assert torch.equal(b["mlm_labels"][masked], b["input_ids"][masked])
    assert not masked[:, 0].any() and not masked[:, -1].any()  # never [CLS] / [SEP]
    assert (masked.sum(1) == round(0.5 * (m.max_len - 2))).all()


def test_paper_encoder_flops_match_the_closed_form():
    """E_v of the paper preset on the 25% visible patches: FlopCounterMode vs the hand count."""
    cfg = get_preset("paper").model
    with torch.device("meta"):
        model = CMITM(cfg)
    model = model.to_empty(device="cpu")
    n = (cfg.img_size // cfg.patch_size) ** 2  # 196
    t = 1 + round(n * 0.25)  # class token + 49 visible
    d = cfg.embed_dim
    macs = n * cfg.patch_size ** 2 * cfg.in_chans * d + cfg.depth * (12 * d * d * t + 2 * t * t * d)
    with torch.no_grad(), B.sdpa_kernel(B.SDPBackend.MATH), FlopCounterMode(display=False) as c:
        model.encode_image(torch.zeros(1, 1, cfg.img_size, cfg.img_size), 0.75)
    assert c.get_total_flops() == 2 * macs  # FLOPs = 2 x MACs
    assert 2 * macs / 1e9 == pytest.approx(8.66, abs=0.01)  # ~ 0.25 x ViT-B/16's 17.6 GMACs, x2


def test_paper_stage1_flops_per_sample_are_plausible():
    """Counted: 121.04 GFLOPs per sample (forward 40.37 = E_v 8.66 + D_v 12.00 + E_t 17.36 + D_t 2.36,
    backward about twice that)."""
    flops = B.count_flops("paper", "stage1")
    assert 110e9 < flops < 135e9, flops / 1e9


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("Tesla V100-SXM2-16GB", 125.0), ("NVIDIA L4", 121.0),
    ("NVIDIA GeForce RTX 4090", 165.0), ("NVIDIA L40S", None), ("Quadro P1000", None),
])
def test_peak_table(name, peak):
    assert B.peak_tflops(name) == peak


def test_loader_bench(micro_preset, micro_pairs):
    r = B.bench_loader(micro_preset, batch_size=8, steps=2, num_workers=0, data=micro_pairs)
    assert r["samples_per_s"] > 0 and r["ms_per_step"] > 0
