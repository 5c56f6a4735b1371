import math

import pytest
import torch
import torch.nn.functional as F

from cmitm_lib.losses import info_nce, masked_patch_mse, masked_token_ce


def test_info_nce_matches_equation_1():
    torch.manual_seed(0)
    zi, zt = torch.randn(6, 8), torch.randn(6, 8)
    tau = 0.07
    a = zi / zi.norm(dim=1, keepdim=True)
    b = zt / zt.norm(dim=1, keepdim=True)
    total = 0.0
    for i in range(6):  # eq. (1), term by term
        s_vt = torch.stack([a[i] @ b[k] for k in range(6)]) / tau
        s_tv = torch.stack([b[i] @ a[k] for k in range(6)]) / tau
        total += math.log(math.exp(s_vt[i]) / torch.exp(s_vt).sum()) + math.log(math.exp(s_tv[i]) / torch.exp(s_tv).sum())
    assert info_nce(zi, zt, tau).item() == pytest.approx(-total / 6, rel=1e-5)


def test_info_nce_is_scale_invariant_and_symmetric():
    zi, zt = torch.randn(5, 4), torch.randn(5, 4)
    assert info_nce(3 * zi, 0.5 * zt).item() == pytest.approx(info_nce(zi, zt).item(), rel=1e-5)
    assert info_nce(zi, zt).item() == pytest.approx(info_nce(zt, zi).item(), rel=1e-5)


def test_info_nce_uniform_value_is_2_ln_b():
    z = torch.ones(8, 4)
    assert info_nce(z, z).item() == pytest.approx(2 * math.log(8), rel=1e-5)


def test_masked_patch_mse_matches_equation_2():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 5, 12), torch.randn(2, 5, 12)
    mask = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 1, 1, 0]], dtype=torch.float)
    per_sample = []
    num, den = 0.0, 0
    for b in range(2):
        for n in range(5):
            if mask[b, n]:
                t = target[b, n]
                t = (t - t.mean()) / torch.sqrt(t.var() + 1e-6)
                num += ((pred[b, n] - t) ** 2).mean().item()
                den += 1
    assert masked_patch_mse(pred, target, mask).item() == pytest.approx(num / den, rel=1e-5)


def test_masked_patch_mse_ignores_visible_patches():
    pred, target = torch.randn(2, 6, 4), torch.randn(2, 6, 4)
    mask = torch.zeros(2, 6)
    mask[:, :3] = 1
    changed = pred.clone()
    changed[:, 3:] += 100.0  # visible patches: no effect
    assert masked_patch_mse(changed, target, mask).item() == pytest.approx(masked_patch_mse(pred, target, mask).item())
    changed[:, 0] += 1.0  # masked patch: effect
    assert masked_patch_mse(changed, target, mask).item() != pytest.approx(masked_patch_mse(pred, target, mask).item())


def test_masked_patch_mse_without_norm_pix_is_plain_mse_on_masked():
    pred, target = torch.randn(1, 4, 3), torch.randn(1, 4, 3)
    mask = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    want = ((pred[0, [1, 3]] - target[0, [1, 3]]) ** 2).mean()
    assert masked_patch_mse(pred, target, mask, norm_pix=False).item() == pytest.approx(want.item(), rel=1e-6)


def test_masked_token_ce_matches_equation_3_and_ignores_unmasked():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.full((2, 5), -100)
    labels[0, 1], labels[1, 3], labels[1, 4] = 3, 7, 0
    want = torch.stack([-F.log_softmax(logits[b, t], -1)[labels[b, t]]
                        for b, t in [(0, 1), (1, 3), (1, 4)]]).mean()
    assert masked_token_ce(logits, labels).item() == pytest.approx(want.item(), rel=1e-6)
    changed = logits.clone()
    changed[0, 0] += 50.0  # an unmasked position: no effect
    assert masked_token_ce(changed, labels).item() == pytest.approx(want.item(), rel=1e-6)
    # the (M, V) form used by the model gives the same value
    sel = labels != -100
    assert masked_token_ce(logits[sel], labels[sel]).item() == pytest.approx(want.item(), rel=1e-6)
