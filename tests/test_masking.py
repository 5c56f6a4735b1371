import pytest
import torch

from cmitm_lib.models import patchify, random_masking, sincos_pos_embed, unpatchify, unshuffle


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.75, 0.9])
@pytest.mark.parametrize("n", [16, 49, 196])
def test_visible_count_is_round_of_kept_fraction(ratio, n):
    x = torch.randn(3, n, 8)
    visible, mask, ids_restore = random_masking(x, ratio, torch.Generator().manual_seed(0))
    keep = round((1 - ratio) * n)
    assert visible.shape == (3, keep, 8)
    assert mask.shape == (3, n)
    assert torch.all(mask.sum(1) == n - keep)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}


def test_visible_tokens_are_the_unmasked_ones_and_ids_restore_inverts():
    x = torch.randn(4, 64, 5)
    visible, mask, ids_restore = random_masking(x, 0.75, torch.Generator().manual_seed(1))
    # every visible token is an original token at an unmasked position, in shuffled order
    for b in range(4):
        kept = x[b][mask[b] == 0]
        assert torch.equal(torch.sort(visible[b], dim=0).values, torch.sort(kept, dim=0).values)
    # putting the visible tokens back with zeros for masked ones restores x at unmasked positions
    restored = unshuffle(visible, torch.zeros(1, 1, 5), ids_restore)
    assert torch.equal(restored[mask == 0], x[mask == 0])
    assert torch.all(restored[mask == 1] == 0)


def test_ids_restore_is_the_inverse_permutation():
    x = torch.arange(10.0).reshape(1, 10, 1).repeat(2, 1, 1)
    _, _, ids_restore = random_masking(x, 0.0, torch.Generator().manual_seed(3))
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    assert torch.equal(torch.gather(ids_shuffle, 1, ids_restore), torch.arange(10).expand(2, 10))


def test_masking_is_reproducible_with_a_generator_and_differs_per_sample():
    x = torch.randn(2, 49, 4)
    a = random_masking(x, 0.75, torch.Generator().manual_seed(7))[1]
    b = random_masking(x, 0.75, torch.Generator().manual_seed(7))[1]
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])


@pytest.mark.parametrize("c,p,side", [(1, 8, 64), (3, 16, 224), (1, 16, 32)])
def test_patchify_round_trip(c, p, side):
    imgs = torch.randn(2, c, side, side)
    patches = patchify(imgs, p)
    assert patches.shape == (2, (side // p) ** 2, p * p * c)
    assert torch.equal(unpatchify(patches, p, c), imgs)


def test_patchify_orders_patches_row_major():
    img = torch.zeros(1, 1, 4, 4)
    img[0, 0, :2, 2:] = 1.0  # top-right 2x2 patch
    patches = patchify(img, 2)
    assert patches[0, 1].sum() == 4 and patches.sum() == 4


def test_patchify_rejects_indivisible_size():
    with pytest.raises(ValueError, match="not divisible"):
        patchify(torch.zeros(1, 1, 10, 10), 4)


def test_sincos_positions_match_mae_formula():
    dim, grid = 16, 4
    pe = sincos_pos_embed(dim, grid)[0]
    assert pe.shape == (1 + grid * grid, dim)
    assert torch.all(pe[0] == 0)  # class token
    # patch (row h=1, col w=2) -> index 1*4+2; first half encodes w, second half h
    k = torch.arange(dim // 4, dtype=torch.float64)
    omega = 1.0 / 10000 ** (k / (dim / 4))
    want_w = torch.cat([torch.sin(2 * omega), torch.cos(2 * omega)])
    want_h = torch.cat([torch.sin(1 * omega), torch.cos(1 * omega)])
    assert torch.allclose(pe[1 + 6], torch.cat([want_w, want_h]).float(), atol=1e-6)
