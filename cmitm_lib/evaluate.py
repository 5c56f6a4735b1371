"""Metrics: macro AUC / accuracy for fine-tuning, Recall@K for image<->report retrieval."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score


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
