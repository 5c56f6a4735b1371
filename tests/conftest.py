import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from cmitm_lib.config import get_preset
from cmitm_lib.data.datasets import PairData
from cmitm_lib.text import train_tokenizer

torch.set_num_threads(2)

WORDS = ("heart size normal lungs clear no pleural effusion left right consolidation in the lower lobe "
         "mild moderate small pneumothorax nodule edema atelectasis").split()


@pytest.fixture(scope="session")
def micro_preset():
    """The tiny preset, shrunk further so a training step takes milliseconds."""
    p = get_preset("tiny")
    m = p.model
    m.img_size, m.patch_size, m.embed_dim, m.depth, m.num_heads = 32, 8, 32, 2, 2
    m.dec_dim, m.dec_depth, m.dec_heads, m.rep_dim, m.rep_depth, m.rep_heads = 32, 1, 2, 32, 1, 2
    m.proj_hidden, m.proj_dim = 64, 16
    m.text_hidden, m.text_layers, m.text_heads, m.text_intermediate, m.max_len = 32, 1, 2, 64, 24
    p.data.hi_size = 64
    return p


@pytest.fixture(scope="session")
def micro_pairs():
    rng = np.random.default_rng(0)
    n = 48
    images = (rng.random((n, 64, 64)) * 255).astype(np.uint8)
    reports = [" ".join(rng.choice(WORDS, 12)) + "." for _ in range(n)]
    return PairData(images, reports, [f"p{i}" for i in range(n)])


@pytest.fixture(scope="session")
def micro_tokenizer(micro_pairs):
    return train_tokenizer(micro_pairs.reports, vocab_size=200, min_frequency=1)
