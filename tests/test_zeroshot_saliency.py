"""Zero-shot classification, retrieval, saliency maps, SynthCXR finding regions and their overlap."""
import copy

import matplotlib.figure
import numpy as np
import pytest
import torch
import torch.nn as nn

from cmitm_lib import evaluate, saliency, viz
from cmitm_lib.cli import main
from cmitm_lib.data import regions, synth, synth_render
from cmitm_lib.data.catalog import REAL_TASK_INFO
from cmitm_lib.data.datasets import FinetuneData, LabelData
from cmitm_lib.models import build_classifier
from cmitm_lib.train import build_model, finetune


# ------------------------------------------------------------------ retrieval and zero-shot
def test_recall_at_k_on_a_matrix_with_known_ranks():
    n, rng = 20, np.random.default_rng(0)
    ranks = [1] * 5 + [3] * 5 + [7] * 5 + [15] * 5  # rank of the true report of image i
    sim = torch.zeros(n, n)
    for i, r in enumerate(ranks):
        values = torch.linspace(1, 0, n)  # distinct scores, best first
        others = [j for j in rng.permutation(n) if j != i]
        order = others[: r - 1] + [i] + others[r - 1 :]  # column order by decreasing score
        sim[i, order] = values
    out = evaluate.recall_at_k(sim)
    assert (out["i2t_R@1"], out["i2t_R@5"], out["i2t_R@10"]) == (0.25, 0.5, 0.75)
    back = evaluate.recall_at_k(sim.T)  # report->image of sim is image->report of its transpose
    assert all(out[f"t2i_R@{k}"] == back[f"i2t_R@{k}"] and back[f"t2i_R@{k}"] == out[f"i2t_R@{k}"] for k in (1, 5, 10))


def test_zero_shot_auc_is_one_when_prompts_separate_the_labels():
    rng = np.random.default_rng(0)
    k, n = 3, 60
    labels = (rng.random((n, k)) < 0.4).astype(np.float32)
    labels[0], labels[1] = 1, 0  # every class has both values
    eye = torch.eye(2 * k)
    positive, negated = eye[:k], eye[k:]  # class c: positive direction e_c, negated e_{k+c}
    z_img = torch.from_numpy(labels) @ positive + torch.from_numpy(1 - labels) @ negated
    z_img = z_img + 0.05 * torch.randn(n, 2 * k, generator=torch.Generator().manual_seed(0))
    scores = evaluate.zero_shot_scores(z_img, positive, negated).numpy()
    assert scores.shape == (n, k) and ((scores > 0.5) == (labels == 1)).all()
    assert evaluate.macro_auc(labels, scores)[0] == 1.0
    flipped = evaluate.zero_shot_scores(z_img, negated, positive).numpy()  # swapped prompts: AUC 0
    assert evaluate.macro_auc(labels, flipped)[0] == 0.0


def test_prompts_cover_every_class_of_every_dataset():
    tables = {"synth": list(synth.FINDINGS), **{name: classes for name, (classes, _, _) in REAL_TASK_INFO.items()}}
    for name, classes in tables.items():
        prompts = evaluate.prompts_for(name, classes)
        assert list(prompts) == list(classes)
        for c, (pos, neg) in prompts.items():
            assert len(pos) >= 2 and len(neg) >= 2 and not set(pos) & set(neg), (name, c)
    for pos, _ in evaluate.PROMPTS_SYNTH.values():  # positives state the finding: no negation words
        assert not any(w in s.lower().split() for s in pos for w in ("no", "not", "without", "normal"))
    with pytest.raises(ValueError, match="no prompts for|no entry for"):
        evaluate.prompts_for("synth", ["fracture"])
    with pytest.raises(ValueError, match="known: synth"):
        evaluate.prompts_for("padchest", ["Effusion"])


def test_zero_shot_and_prompt_embeddings_on_a_model(micro_preset, micro_pairs, micro_tokenizer):
    p = copy.deepcopy(micro_preset)
    model = build_model(p, micro_tokenizer)
    prompts = {"effusion": (("left pleural effusion.", "small right pleural effusion."), ("no pleural effusion.",)),
               "nodule": (("nodule in the right lower lobe.",), ("no nodule.", "lungs clear."))}
    pos, neg = evaluate.prompt_embeddings(model, micro_tokenizer, prompts, p.model.max_len, "cpu")
    assert pos.shape == neg.shape == (2, p.model.proj_dim)
    assert torch.allclose(pos.norm(dim=-1), torch.ones(2), atol=1e-5)
    labels = np.zeros((len(micro_pairs), 2), dtype=np.float32)
    labels[::3, 0] = labels[1::4, 1] = 1
    out = evaluate.zero_shot(model, micro_tokenizer, micro_pairs.images, labels, ["effusion", "nodule"], prompts, p, "cpu")
    assert 0 <= out["zeroshot_auc"] <= 1 and set(out["zeroshot_per_class"]) == {"effusion", "nodule"}
    z = evaluate.embed_images(model, micro_pairs.images[:5], p, "cpu")
    assert z.shape == (5, p.model.proj_dim)
    table = evaluate.format_evaluation({"random init": {"i2t_R@1": 0.1, "zeroshot_auc": 0.5}})
    assert "zero-shot auc" in table and "0.500" in table


def test_cli_evaluate_explains_what_it_needs():
    with pytest.raises(ValueError, match="--checkpoint DIR"):
        main(["evaluate"])
    with pytest.raises(ValueError, match="dataset='cifar'"):
        main(["evaluate", "--dataset", "cifar", "--random-init"])


# ------------------------------------------------------------------ saliency
def _classifier(p, n_classes=3):
    torch.manual_seed(0)
    net = build_classifier(p.model, n_classes)
    nn.init.normal_(net.head.weight)  # a head that tells the classes apart (the fine-tuning init is ~0)
    return net


def test_record_attention_captures_probabilities_and_restores_fused_attention(micro_preset):
    net = _classifier(micro_preset)
    x = torch.randn(2, 1, 32, 32)
    before = [blk.attn.fused_attn for blk in net.blocks]
    with saliency.record_attention(net.blocks) as attn:
        out = net(x)
    assert [blk.attn.fused_attn for blk in net.blocks] == before
    assert len(attn) == len(net.blocks) and attn[0].shape == (2, micro_preset.model.num_heads, 17, 17)
    assert torch.allclose(attn[0].sum(-1), torch.ones(2, micro_preset.model.num_heads, 17), atol=1e-5)
    assert torch.allclose(out, net(x), atol=1e-5)  # the explicit path computes the same outputs


def test_classifier_saliency_is_a_normalised_map_that_depends_on_the_class(micro_preset):
    net = _classifier(micro_preset)
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    maps = [saliency.classifier_saliency(net, x, k) for k in range(3)]
    for m in maps:
        assert m.shape == (3, 4, 4) and (m >= 0).all()
        assert torch.allclose(m.sum((1, 2)), torch.ones(3), atol=1e-5)
    assert (maps[0] - maps[1]).abs().sum() > 1e-3 and (maps[1] - maps[2]).abs().sum() > 1e-3
    plain = [saliency.classifier_saliency(net, x, k, method="rollout") for k in range(2)]
    assert torch.allclose(plain[0], plain[1])  # plain rollout ignores the target
    with pytest.raises(ValueError, match="class_index=5"):
        saliency.classifier_saliency(net, x, 5)
    with pytest.raises(ValueError, match="method='cam'"):
        saliency.classifier_saliency(net, x, 0, method="cam")


def test_similarity_saliency_follows_the_text_and_matches_the_embedding(micro_preset, micro_pairs, micro_tokenizer):
    p = copy.deepcopy(micro_preset)
    model = build_model(p, micro_tokenizer).eval()
    x = saliency.model_inputs(micro_pairs.images[:4], p)
    assert x.shape == (4, 1, 32, 32)
    with torch.no_grad():  # the unmasked forward_features path equals encode_image at ratio 0
        latent, _, ids = model.encode_image(x, 0.0)
        direct = model.image_embedding(latent, ids)
        feats = model.image_encoder.forward_features(x)
        ordered = model.image_embedding(feats, torch.arange(16).expand(4, -1))
    assert torch.allclose(direct, ordered, atol=1e-4)
    z = evaluate.embed_texts(model, micro_tokenizer, ["left pleural effusion.", "no nodule. lungs clear."],
                             p.model.max_len, "cpu")
    a = saliency.similarity_saliency(model, x, z[0])
    b = saliency.similarity_saliency(model, x, z[1])
    assert a.shape == (4, 4, 4) and torch.allclose(a.sum((1, 2)), torch.ones(4), atol=1e-5)
    assert (a - b).abs().sum() > 1e-3
    direction = saliency.finding_direction(model, micro_tokenizer, evaluate.PROMPTS_SYNTH["effusion"], p.model.max_len)
    assert direction.shape == (p.model.proj_dim,)
    pix = saliency.to_pixels(a, 64)
    assert pix.shape == (4, 64, 64) and np.allclose(pix.sum((1, 2)), 1, atol=1e-5)


def test_finetune_keeps_the_model_for_saliency(micro_preset, micro_pairs):
    p = copy.deepcopy(micro_preset)
    imgs = micro_pairs.images
    labels = np.stack([(imgs.mean((1, 2)) > np.median(imgs.mean((1, 2)))).astype(np.float32)] * 2, 1)
    labels[:, 1] = 1 - labels[:, 0]
    data = FinetuneData("toy", ["bright", "dark"], "multilabel", "auc",
                        LabelData(imgs, labels), LabelData(imgs[:24], labels[:24]), LabelData(imgs[24:], labels[24:]))
    r = finetune(data, p, None, fraction=0.5, epochs=1, batch_size=64, progress=False, keep_model=True)
    explain = saliency.classifier_explainer(r["model"], p, data.classes)
    assert explain(imgs[:2], "dark").shape == (2, 4, 4)


# ------------------------------------------------------------------ regions and overlap
def _case_with(finding: str, domain: str = "pretrain") -> int:
    return next(i for i in range(500) if finding in regions.case_params(0, i, domain)["findings"])


def test_case_params_reproduce_generate_case():
    for i in (0, 7):
        case = synth.generate_case(0, i, 64, "downstream")
        params = regions.case_params(0, i, "downstream")
        assert np.array_equal(params["labels"], case.labels)
        assert np.allclose(synth.render(params, 64), case.image)


def test_regions_are_where_the_finding_was_drawn():
    i = _case_with("nodule")
    params = regions.case_params(0, i)
    masks = regions.finding_regions(params, 128)
    assert set(masks) == set(synth.FINDINGS)
    for name, mask in masks.items():
        assert mask.shape == (128, 128) and mask.dtype == bool
        assert mask.any() == (name in params["findings"]), name  # present: drawn somewhere; absent: empty
    row, col = synth_render.patient_to_pixel(*params["findings"]["nodule"]["centre"], params["acquisition"], 128)
    assert masks["nodule"][int(round(row)), int(round(col))]  # the nodule's centre is inside its region
    assert masks["nodule"].mean() < 0.01  # and the region is small
    j = _case_with("effusion")
    params = regions.case_params(0, j)
    mask = regions.case_regions(0, j, 128)["effusion"]
    cols = np.nonzero(mask)[1]
    side = params["findings"]["effusion"]["side"]  # patient right = image left
    if side == "right":
        assert cols.mean() < 64
    elif side == "left":
        assert cols.mean() > 64
    rows = np.nonzero(mask)[0]
    assert rows.mean() > 64  # fluid collects at the base
    with pytest.raises(ValueError, match="threshold"):
        regions.finding_regions(params, 128, threshold=0)


def test_overlap_metric_on_hand_made_maps():
    mask = np.zeros((10, 10), dtype=bool)
    mask[:2] = True  # 20% of the image
    uniform = np.ones((10, 10))
    assert saliency.mass_in_region(uniform, mask) == pytest.approx((0.2, 0.2))
    inside = mask.astype(float)
    assert saliency.mass_in_region(inside, mask) == pytest.approx((1.0, 0.2))
    half = uniform.copy()
    half[:2] = 4.0  # 80 of 160 units of mass inside
    out = saliency.region_overlap([uniform, inside, half], [mask, mask, mask])
    assert out["mass"] == pytest.approx((0.2 + 1.0 + 0.5) / 3) and out["area"] == pytest.approx(0.2)
    assert out["lift"] == pytest.approx(out["mass"] / 0.2) and out["n"] == 3
    skipped = saliency.region_overlap([uniform, inside], [mask, np.zeros_like(mask)])
    assert skipped["n"] == 1 and skipped["empty"] == 1
    with pytest.raises(ValueError, match="to_pixels"):
        saliency.mass_in_region(np.ones((5, 5)), mask)


def test_overlap_by_finding_figures_and_widget(micro_preset):
    p = copy.deepcopy(micro_preset)
    cases = saliency.synth_cases(0, "pretrain", 0, 24, 64)
    net = _classifier(p, len(synth.FINDINGS))
    explain = saliency.classifier_explainer(net, p, list(synth.FINDINGS))
    present = [f for k, f in enumerate(synth.FINDINGS) if cases["labels"][:, k].any()][:2]
    ov = saliency.overlap_by_finding(explain, cases, present, max_cases=4)
    for name in present:
        assert 0 <= ov[name]["mass"] <= 1 and 0 < ov[name]["area"] < 1 and ov[name]["n"] >= 1
    fig = viz.overlap_figure({"classifier": ov, "other": ov})
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes[0].patches) == 2 * len(present)
    smap = saliency.to_pixels(explain(cases["images"][:1], present[0]), 64)[0]
    fig = viz.saliency_figure(cases["images"][0], {"map": smap}, cases["regions"][0][present[0]])
    assert len(fig.axes) == 2
    pytest.importorskip("ipywidgets")
    calls = []

    def counting(images, finding):
        calls.append(finding)
        return explain(images, finding)

    widget = viz.saliency_widget(cases, {"classifier": counting}, present)
    case, finding, _ = widget.children[0].children
    assert calls == [present[0]]  # drawn once, into the Output widget
    finding.value = present[1]
    assert calls[-1] == present[1] and len(calls) == 2
