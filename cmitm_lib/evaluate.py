"""Evaluation: metrics (macro AUC, accuracy, Recall@K), embeddings, retrieval, zero-shot, predictions,
and the linear probe of a frozen E_v."""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader

from .config import Preset
from .data.datasets import LabelData, LabelDataset, PairCollate, PairData, PairDataset, collate_labels
from .device import autocast, resolve_device, seed_everything, to_device
from .models import build_classifier
from .text import encode


def macro_auc(labels: np.ndarray, scores: np.ndarray) -> tuple[float, list[str]]:
    """Mean ROC AUC over classes. Classes with only one label value in ``labels`` have no AUC; they
    are left out of the mean and returned by index so the caller can report them."""
    aucs, skipped = [], []
    for k in range(labels.shape[1]):
        if len(np.unique(labels[:, k])) < 2:
            skipped.append(str(k))
            continue
        aucs.append(roc_auc_score(labels[:, k], scores[:, k]))
    if not aucs:
        raise ValueError("no class has both positive and negative examples; AUC is undefined")
    return float(np.mean(aucs)), skipped


def accuracy(labels_onehot: np.ndarray, scores: np.ndarray) -> float:
    return float((labels_onehot.argmax(1) == scores.argmax(1)).mean())


def score(metric: str, labels: np.ndarray, scores: np.ndarray) -> float:
    return macro_auc(labels, scores)[0] if metric == "auc" else accuracy(labels, scores)


def similarity(z_img: torch.Tensor, z_txt: torch.Tensor) -> torch.Tensor:
    """Cosine similarity matrix (images x reports)."""
    return F.normalize(z_img.float(), dim=-1) @ F.normalize(z_txt.float(), dim=-1).T


def recall_at_k(sim: torch.Tensor, ks=(1, 5, 10), reports: list[str] | None = None) -> dict[str, float]:
    """Image->report (i2t) and report->image (t2i) Recall@K; pair i is the match of row i.

    With ``reports`` given, any report whose text equals the true report also counts as a hit
    (normal studies often share a report word for word, and retrieving the twin is not an error).
    """
    n = sim.shape[0]
    truth = torch.eye(n, dtype=torch.bool)
    if reports is not None:
        ids = {t: i for i, t in enumerate(dict.fromkeys(reports))}
        code = torch.tensor([ids[t] for t in reports])
        truth = code[:, None] == code[None, :]
    out = {}
    for name, s, t in (("i2t", sim, truth), ("t2i", sim.T, truth.T)):
        order = s.argsort(dim=1, descending=True)
        hits = torch.gather(t, 1, order)
        for k in ks:
            out[f"{name}_R@{k}"] = float(hits[:, :k].any(dim=1).float().mean())
    return out


# ---------------------------------------------------------------------------------------------
# Zero-shot classification: no labels, only sentences. For each class a few sentences that state the
# finding and a few that negate it are embedded with E_t + h_t; an image's score for the class is the
# softmax over (positive, negated) of its cosine similarities / tau (CLIP-style prompt ensembling:
# the sentences of one side are averaged after L2 normalisation).
# ---------------------------------------------------------------------------------------------
PROMPTS_SYNTH = {  # in the style of the SynthCXR report sentences (cmitm_lib.data.synth)
    "cardiomegaly": (("Moderate cardiomegaly.", "The heart is markedly enlarged.",
                      "The cardiac silhouette is mildly enlarged."),
                     ("Heart size is normal.", "The cardiac silhouette is normal in size.",
                      "Cardiomediastinal silhouette is within normal limits.")),
    "effusion": (("There is a right pleural effusion.", "Small left pleural effusion.",
                  "Moderate bilateral pleural effusions."),
                 ("No pleural effusion.", "The costophrenic angles are sharp.", "No pleural effusion or pneumothorax.")),
    "consolidation": (("Right lower lobe consolidation.", "Patchy consolidation in the left upper lobe.",
                       "Airspace opacity in the right middle lobe consistent with consolidation."),
                      ("No focal consolidation.", "No focal airspace disease.", "The lungs are clear.")),
    "pneumothorax": (("Small right pneumothorax.", "There is a large left apical pneumothorax.",
                      "A small left pneumothorax is present with a visible pleural line."),
                     ("No pneumothorax.", "No pleural effusion or pneumothorax.", "The lungs are clear.")),
    "nodule": (("8 mm right upper lung nodule.", "Nodule in the left mid lung, 12 mm.",
                "Rounded 10 mm nodular opacity in the right lower lung zone."),
               ("No pulmonary nodules.", "The lungs are clear.", "Lungs are clear without focal opacity.")),
    "edema": (("Moderate pulmonary edema.", "Mild perihilar haziness consistent with pulmonary edema.",
               "Bilateral perihilar opacities in keeping with severe interstitial edema."),
              ("No pulmonary edema.", "Pulmonary vasculature is normal.", "The lungs are clear.")),
    "atelectasis": (("Right basilar atelectasis.", "Plate-like atelectasis at the left lung base.",
                     "Linear opacity at the right base consistent with subsegmental atelectasis."),
                    ("No atelectasis.", "Lungs are clear without focal opacity.", "The lungs are clear.")),
}

_REAL = {  # findings sentences as radiologists write them (MIMIC-CXR style), by finding
    "atelectasis": (("Bibasilar atelectasis.", "Linear opacity at the lung base consistent with atelectasis.",
                     "Subsegmental atelectasis in the left lower lobe."),
                    ("No atelectasis.", "The lungs are clear.", "Lungs are well expanded and clear.")),
    "cardiomegaly": (("Cardiomegaly.", "The heart is enlarged.", "The cardiac silhouette is moderately enlarged."),
                     ("Heart size is normal.", "The cardiac silhouette is normal in size.",
                      "Cardiomediastinal silhouette is within normal limits.")),
    "effusion": (("Small right pleural effusion.", "There is a moderate left pleural effusion.",
                  "Bilateral pleural effusions."),
                 ("No pleural effusion.", "The costophrenic angles are sharp.", "No pleural effusion or pneumothorax.")),
    "infiltration": (("Patchy infiltrate in the right lower lobe.", "Diffuse bilateral infiltrates.",
                      "Interstitial infiltrates in both lungs."),
                     ("No infiltrate.", "The lungs are clear.", "No focal airspace disease.")),
    "mass": (("There is a mass in the right upper lobe.", "Large left hilar mass.",
              "A 4 cm mass in the left lung."),
             ("No mass.", "No pulmonary mass or nodule.", "The lungs are clear.")),
    "nodule": (("Right upper lobe pulmonary nodule.", "There is an 8 mm nodule in the left lung.",
                "Rounded nodular opacity in the right mid lung."),
               ("No pulmonary nodules.", "No pulmonary mass or nodule.", "The lungs are clear.")),
    "pneumonia": (("Right lower lobe pneumonia.", "Airspace opacity consistent with pneumonia.",
                   "Consolidation in the left lower lobe concerning for pneumonia."),
                  ("No evidence of pneumonia.", "No focal consolidation.", "The lungs are clear.")),
    "pneumothorax": (("Small right apical pneumothorax.", "There is a large left pneumothorax.",
                      "A pneumothorax is present with a visible pleural line."),
                     ("No pneumothorax.", "No pleural effusion or pneumothorax.", "The lungs are clear.")),
    "consolidation": (("Right lower lobe consolidation.", "Dense consolidation in the left lower lobe.",
                       "Airspace consolidation in the right middle lobe."),
                      ("No focal consolidation.", "No focal airspace disease.", "The lungs are clear.")),
    "edema": (("Moderate pulmonary edema.", "Mild interstitial edema.", "Perihilar haziness consistent with edema."),
              ("No pulmonary edema.", "Pulmonary vasculature is normal.", "No vascular congestion.")),
    "emphysema": (("Emphysema.", "The lungs are hyperinflated with emphysematous changes.",
                   "Flattened diaphragms consistent with emphysema."),
                  ("No emphysema.", "Lung volumes are normal.", "The lungs are clear.")),
    "fibrosis": (("Pulmonary fibrosis.", "Reticular opacities consistent with fibrosis.",
                  "Chronic fibrotic changes at both lung bases."),
                 ("No fibrosis.", "No interstitial lung disease.", "The lungs are clear.")),
    "pleural thickening": (("Pleural thickening.", "Apical pleural thickening on the right.",
                            "Biapical pleural thickening."),
                           ("No pleural thickening.", "The pleural surfaces are smooth.",
                            "No pleural abnormality.")),
    "hernia": (("Hiatal hernia.", "There is a large hiatal hernia.", "Retrocardiac hiatal hernia."),
               ("No hernia.", "No hiatal hernia.", "The mediastinum is normal.")),
    "normal": (("No acute cardiopulmonary process.", "Normal chest radiograph.", "The lungs are clear."),
               ("Bilateral airspace opacities.", "Focal consolidation.", "Abnormal chest radiograph.")),
    "covid-19": (("Bilateral peripheral ground-glass opacities consistent with COVID-19 pneumonia.",
                  "Multifocal patchy opacities in both lower lungs, viral pneumonia.",
                  "Diffuse bilateral hazy opacities compatible with COVID-19."),
                 ("No airspace opacities.", "The lungs are clear.", "No acute cardiopulmonary process.")),
}

PROMPTS = {
    "synth": PROMPTS_SYNTH,
    "nih": {c: _REAL[c.lower().replace("_", " ")] for c in (
        "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
        "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")},
    "chexpert": {"Atelectasis": _REAL["atelectasis"], "Cardiomegaly": _REAL["cardiomegaly"],
                 "Consolidation": _REAL["consolidation"], "Edema": _REAL["edema"],
                 "Pleural Effusion": _REAL["effusion"]},
    "rsna": {"Pneumonia": _REAL["pneumonia"]},
    "covidx": {"normal": _REAL["normal"], "pneumonia": _REAL["pneumonia"], "COVID-19": _REAL["covid-19"]},
}


def prompts_for(dataset: str, classes: list[str]) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """The prompts of ``dataset``'s table (``PROMPTS``) for ``classes``, in their order."""
    if dataset not in PROMPTS:
        raise ValueError(f"no zero-shot prompts for dataset={dataset!r}; known: {', '.join(PROMPTS)}. "
                         "Add a dict class -> (positive sentences, negated sentences) to evaluate.PROMPTS")
    return select_prompts(PROMPTS[dataset], classes)


def select_prompts(prompts: dict, classes: list[str]) -> dict:
    """``prompts`` restricted to ``classes``, in their order; fails naming any class without prompts."""
    missing = [c for c in classes if c not in prompts]
    if missing:
        raise ValueError(f"the prompts have no entry for classes {missing}; give (positive sentences, "
                         "negated sentences) for each, see evaluate.PROMPTS")
    return {c: prompts[c] for c in classes}


def warn_unreadable(paths: list[str], effect: str) -> None:
    """A warning naming the unreadable images an evaluation met (none: nothing)."""
    if paths:
        warnings.warn(f"{len(paths)} unreadable image(s), {effect}: {', '.join(sorted(set(paths)))}", stacklevel=3)


@torch.no_grad()
def embed_batches(loader: DataLoader, embed, dev: torch.device, effect: str) -> list[torch.Tensor]:
    """The one embedding loop: ``embed(batch, i)`` of every batch ``i`` (a dict with "image" on ``dev``), a
    tuple of tensors, each concatenated over the batches on the CPU. `LabelDataset` batches become
    {"image", "labels", "unreadable"}; unreadable images met are named in a warning that says ``effect``."""
    outs, bad = [], []
    for i, batch in enumerate(loader):
        if not isinstance(batch, dict):
            batch = dict(zip(("image", "labels", "unreadable"), batch))
        bad += batch.pop("unreadable")
        with autocast(dev):
            outs.append([t.float().cpu() for t in embed(to_device(batch, dev), i)])
    warn_unreadable(bad, effect)
    return [torch.cat(column) for column in zip(*outs)]


def image_loader(images, preset: Preset, batch_size: int, num_workers: int = 0) -> DataLoader:
    """Unlabelled images (uint8 (N, H, W) or file paths) in order, eval transform (`LabelDataset`)."""
    dummy = LabelData(images, np.zeros((len(images), 1), dtype=np.float32))
    return DataLoader(LabelDataset(dummy, preset.data, preset.model, train=False), batch_size=batch_size,
                      num_workers=num_workers, collate_fn=collate_labels)


@torch.no_grad()
def embed_texts(model, tokenizer, texts: list[str], max_len: int, device: str = "auto",
                batch_size: int = 128) -> torch.Tensor:
    """z_t = h_t(E_t(text)[CLS]) for each text, model in eval mode."""
    dev = resolve_device(device)
    model.to(dev).eval()
    out = []
    for i in range(0, len(texts), batch_size):
        enc = encode(tokenizer, texts[i : i + batch_size], max_len)
        with autocast(dev):
            out.append(model.text_embedding(enc.input_ids.to(dev), enc.attention_mask.to(dev)).float().cpu())
    return torch.cat(out)


def embed_images(model, images, preset: Preset, device: str = "auto", batch_size: int = 128,
                 mask_ratio: float | None = None) -> torch.Tensor:
    """z_v of images (uint8 (N, H, W) or file paths) as stage 2 sees them: `CMITM.eval_image_embedding`
    at ``mask_ratio`` (default the preset's stage-2 ratio; 0 = unmasked)."""
    dev = resolve_device(device)
    ratio = preset.stage2.mask_ratio if mask_ratio is None else mask_ratio
    model.to(dev).eval()
    embed = lambda b, i: (model.eval_image_embedding(b["image"], ratio, seed=1000 * i),)  # noqa: E731
    return embed_batches(image_loader(images, preset, batch_size), embed, dev, "each embedded as another image of the set")[0]


def embed_pairs(model, tokenizer, data: PairData, preset: Preset, device: str = "auto",
                batch_size: int = 128, mask_ratio: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_img, z_txt) for every pair, model in eval mode. Images are embedded as stage 2 sees them
    (`CMITM.eval_image_embedding` at ``mask_ratio``, default the preset's stage-2 ratio; 0 = unmasked)."""
    dev = resolve_device(device)
    ratio = preset.stage2.mask_ratio if mask_ratio is None else mask_ratio
    loader = DataLoader(PairDataset(data, preset.data, preset.model, train=False), batch_size=batch_size,
                        collate_fn=PairCollate(tokenizer, preset.model.max_len, 0.5))
    model.to(dev).eval()

    def embed(b, i):
        return (model.eval_image_embedding(b["image"], ratio, seed=1000 * i),
                model.text_embedding(b["input_ids"], b["attention_mask"]))
    z_img, z_txt = embed_batches(loader, embed, dev, "their pairs were replaced by others")
    return z_img, z_txt


def retrieval(model, tokenizer, data: PairData, preset: Preset, device: str = "auto") -> dict:
    """Recall@1/5/10 both ways on ``data`` (identical report texts count as matches)."""
    z_img, z_txt = embed_pairs(model, tokenizer, data, preset, device)
    return recall_at_k(similarity(z_img, z_txt), reports=data.reports)


def encoder_features(encoder_state: dict | None, images, preset: Preset, seed: int,
                     device: str = "auto", batch_size: int = 256) -> np.ndarray:
    """Frozen E_v features of every image as the fine-tuning classifier pools them (eval transform);
    ``encoder_state`` None: a random-init E_v, a function of ``seed``."""
    seed_everything(seed)  # the random-init encoder depends on the seed
    dev = resolve_device(device)
    return classifier_features(build_classifier(preset.model, 1, encoder_state).to(dev), images, preset, dev,
                               batch_size)


def classifier_features(net: nn.Module, images, preset: Preset, dev: torch.device, batch_size: int = 256) -> np.ndarray:
    """The pooled features a `models.build_classifier` network's head reads, for every image (eval transform)."""
    net.eval()
    embed = lambda b, i: (net.forward_head(net.forward_features(b["image"]), pre_logits=True),)  # noqa: E731
    return embed_batches(image_loader(images, preset, batch_size), embed, dev,
                         "each featurised as another image of the set")[0].numpy()


@torch.no_grad()
def predict(net: nn.Module, loader: DataLoader, dev: torch.device, task: str,
            unreadable: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores) over a `LabelDataset` loader; unreadable images met are appended to ``unreadable``."""
    net.eval()
    labels, scores = [], []
    for x, y, bad in loader:
        if unreadable is not None:
            unreadable += bad
        with autocast(dev):
            logits = net(x.to(dev)).float()
        scores.append((torch.sigmoid(logits) if task == "multilabel" else logits.softmax(-1)).cpu())
        labels.append(y)
    return torch.cat(labels).numpy(), torch.cat(scores).numpy()


def prompt_embeddings(model, tokenizer, prompts: dict, max_len: int, device: str = "auto"):
    """(positive (K, D), negated (K, D)): per class the mean of its normalised sentence embeddings, renormalised."""
    sides = []
    for side in (0, 1):
        rows = [F.normalize(embed_texts(model, tokenizer, list(p[side]), max_len, device), dim=-1).mean(0)
                for p in prompts.values()]
        sides.append(F.normalize(torch.stack(rows), dim=-1))
    return sides[0], sides[1]


def zero_shot_scores(z_img: torch.Tensor, positive: torch.Tensor, negated: torch.Tensor,
                     temperature: float = 0.07) -> torch.Tensor:
    """(N, K) probability of the positive sentence against the negated one, per image and class."""
    z = F.normalize(z_img.float(), dim=-1)
    logits = torch.stack([z @ positive.T, z @ negated.T], dim=-1) / temperature
    return logits.softmax(-1)[..., 0]


def zero_shot(model, tokenizer, images, labels: np.ndarray, classes: list[str], prompts: dict, preset,
              device: str = "auto", task: str = "multilabel") -> dict:
    """Zero-shot macro AUC (and accuracy for multi-class data) of ``model`` on labelled images."""
    pos, neg = prompt_embeddings(model, tokenizer, select_prompts(prompts, classes), preset.model.max_len, device)
    scores = zero_shot_scores(embed_images(model, images, preset, device), pos, neg).numpy()
    auc, skipped = macro_auc(labels, scores)
    per_class = {c: float(roc_auc_score(labels[:, k], scores[:, k])) for k, c in enumerate(classes)
                 if str(k) not in skipped}
    out = {"zeroshot_auc": auc, "zeroshot_per_class": per_class}
    if task == "multiclass":
        out["zeroshot_acc"] = accuracy(labels, scores)
    return out


def evaluate_model(model, tokenizer, preset, pairs=None, labelled=None, dataset: str = "synth",
                   device: str = "auto") -> dict:
    """Held-out retrieval (Recall@1/5/10 both ways) on ``pairs`` (a PairData) and zero-shot AUC on
    ``labelled`` (a FinetuneData: its test split, its classes, prompts from ``PROMPTS[dataset]``)."""
    if pairs is None and labelled is None:
        raise ValueError("nothing to evaluate: pass held-out pairs (retrieval) and/or labelled data (zero-shot)")
    out = {}
    if pairs is not None:
        out.update(retrieval(model, tokenizer, pairs, preset, device))
    if labelled is not None:
        prompts = prompts_for(dataset, labelled.classes)
        out.update(zero_shot(model, tokenizer, labelled.test.images, labelled.test.labels, labelled.classes,
                             prompts, preset, device, labelled.task))
    return out


def format_evaluation(results: dict[str, dict]) -> str:
    """A table: one row per model, Recall@K both ways and zero-shot AUC (the columns present)."""
    keys = [k for k in ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10",
                        "zeroshot_auc", "zeroshot_acc") if k in next(iter(results.values()))]
    width = max(len(n) for n in results) + 2
    lines = [f"{'model':<{width}}" + "".join(f"{k.replace('zeroshot_', 'zero-shot '):>15}" for k in keys)]
    for name, r in results.items():
        lines.append(f"{name:<{width}}" + "".join(f"{r[k]:>15.3f}" for k in keys))
    return "\n".join(lines)


def linear_probe(train_x, train_y, val_x, val_y, test_x, test_y, task: str, metric: str,
                 cs=(0.01, 0.1, 1.0, 10.0)) -> dict:
    """Logistic regression per class on standardised features; C picked on validation (`fit_probe`)."""
    fit = fit_probe(train_x, train_y, val_x, val_y, task, metric, cs)
    test = score(metric, test_y, fit["predict"](np.asarray(test_x, dtype=np.float64)))
    return {"val": fit["val"], "test": float(test), "C": fit["C"]}


def fit_probe(train_x, train_y, val_x, val_y, task: str, metric: str, cs=(0.01, 0.1, 1.0, 10.0)) -> dict:
    """The linear probe's fit: {"val", "C", "predict" (raw features -> scores), "weight" (K, D), "bias" (K,)},
    where weight and bias act on the raw features (the standardisation folded in), so that
    ``sigmoid`` (multilabel) or ``softmax`` (multiclass) of ``x @ weight.T + bias`` is ``predict(x)``.

    Solved with Newton-Cholesky (exact Hessian; a few iterations for a few hundred features) on float64
    features: the Hessian of collinear float32 features is too ill-conditioned for a float32 Cholesky.
    A class with one label value in the training fraction gets a constant score (zero weights); a class
    missing from a multiclass fraction gets probability 0 (a bias of -30).
    """
    train_x, val_x = (np.asarray(x, dtype=np.float64) for x in (train_x, val_x))  # Cholesky needs it
    scaler = StandardScaler().fit(train_x)
    tx = scaler.transform(train_x)
    n_classes = train_y.shape[1]

    def fit(c):  # (coef (K, D), intercept (K,)) on standardised features
        coef, bias = np.zeros((n_classes, tx.shape[1])), np.zeros(n_classes)
        if task == "multiclass":
            clf = LogisticRegression(C=c, solver="newton-cholesky", max_iter=200).fit(tx, train_y.argmax(1))
            bias[:] = -30.0
            if len(clf.classes_) == 2:  # sklearn keeps one row for two classes: logit of class 1 vs class 0
                coef[clf.classes_[1]], bias[clf.classes_] = clf.coef_[0], (0.0, clf.intercept_[0])
            else:
                coef[clf.classes_], bias[clf.classes_] = clf.coef_, clf.intercept_
            return coef, bias
        for k in range(n_classes):
            y = train_y[:, k]
            if y.min() == y.max():  # one label value in the training fraction: a constant score
                bias[k] = 30.0 if y[0] > 0.5 else -30.0
            else:
                m = LogisticRegression(C=c, solver="newton-cholesky", max_iter=200).fit(tx, y)
                coef[k], bias[k] = m.coef_[0], m.intercept_[0]
        return coef, bias

    def as_head(coef, bias):  # standardisation folded into the weights
        weight = coef / scaler.scale_
        return weight, bias - weight @ scaler.mean_

    def predictor(weight, bias):
        def predict(x):
            logits = np.asarray(x, dtype=np.float64) @ weight.T + bias
            if task == "multiclass":
                e = np.exp(logits - logits.max(1, keepdims=True))
                return e / e.sum(1, keepdims=True)
            return 1.0 / (1.0 + np.exp(-logits))
        return predict

    best = None
    for c in cs:
        weight, bias = as_head(*fit(c))
        val = score(metric, val_y, predictor(weight, bias)(val_x))
        if best is None or val > best["val"]:
            best = {"val": float(val), "C": c, "weight": weight, "bias": bias}
    best["predict"] = predictor(best["weight"], best["bias"])
    return best
