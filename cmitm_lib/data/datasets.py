"""From records to tensors: the paired 1x/2x views, report tokens with whole-word masking, labels."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ..config import DataConfig, ModelConfig, check_choice
from ..text import encode, mask_words, word_token_table
from .images import ImageReadError, load_image

Images = Union[np.ndarray, Sequence[str]]  # uint8 (N, H, W) in memory, or image file paths


@dataclass
class PairData:
    """Image-report pairs for pre-training."""

    images: Images
    reports: list[str]
    patient_ids: list[str]

    def __len__(self) -> int:
        return len(self.reports)


def first_of_shuffle(pairs: PairData, n: int, seed: int) -> PairData:
    """The first ``n`` pairs of a seeded shuffle, kept in their original order (n = 0: all pairs)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n_train_pairs={n!r} is not valid; use 0 (all pairs) or a positive integer")
    if n > len(pairs):
        raise ValueError(f"n_train_pairs={n} is larger than the {len(pairs)} training pairs; use 0 for all")
    if n == 0:
        return pairs
    idx = np.sort(np.random.default_rng(seed).permutation(len(pairs))[:n])
    images = pairs.images[idx] if isinstance(pairs.images, np.ndarray) else [pairs.images[i] for i in idx]
    return PairData(images, [pairs.reports[i] for i in idx], [pairs.patient_ids[i] for i in idx])


@dataclass
class LabelData:
    """Images with a label matrix (N, K): 0/1 per class (multi-label) or one-hot (multi-class)."""

    images: Images
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class FinetuneData:
    name: str
    classes: list[str]
    task: str  # "multilabel" | "multiclass"
    metric: str  # "auc" | "acc"
    train: LabelData
    val: LabelData
    test: LabelData


def get_image(images: Images, i: int, cache_dir: str | None = None) -> torch.Tensor:
    """(1, H, W) float in [0, 1]."""
    if isinstance(images, np.ndarray):
        return torch.from_numpy(images[i]).float().div_(255).unsqueeze(0)
    return torch.from_numpy(load_image(images[i], cache_dir=cache_dir)).unsqueeze(0)


ON_UNREADABLE = ("skip", "stop")  # what a dataset does with an image file it cannot read


class UnreadableImageError(ValueError):
    """An image could not be read during training and ``on_unreadable="stop"`` asked to stop there."""


class ReadOrReplace:
    """Reads image i of a dataset; with ``on_unreadable="skip"`` an image that cannot be read (corrupt,
    not an image, gone) is replaced by the next readable one in a seeded order of the dataset, and its
    path is handed back so that the training loop can count and list it. ``"stop"`` raises
    `UnreadableImageError` naming the file instead."""

    def __init__(self, images: Images, cache_dir: str | None, on_unreadable: str, seed: int = 0):
        check_choice("on_unreadable", on_unreadable, ON_UNREADABLE)
        self.images, self.cache_dir, self.on_unreadable, self.seed = images, cache_dir, on_unreadable, seed
        self._next: np.ndarray | None = None  # successor of each index in the seeded order, made on first need

    def successor(self, i: int) -> int:
        if self._next is None:
            order = np.random.default_rng(self.seed).permutation(len(self.images))
            self._next = np.empty_like(order)
            self._next[order] = np.roll(order, -1)
        return int(self._next[i])

    def __call__(self, i: int) -> tuple[torch.Tensor, int, list[str]]:
        """(image, index actually read, paths of the unreadable images met on the way)."""
        bad: list[str] = []
        for _ in range(len(self.images)):
            try:
                return get_image(self.images, i, self.cache_dir), i, bad
            except (ImageReadError, FileNotFoundError) as err:
                if self.on_unreadable == "stop":
                    raise UnreadableImageError(
                        f"unreadable image {self.images[i]} ({' '.join(str(err).split())}); fix or remove the "
                        f"file, or leave on_unreadable='skip' (no --stop-on-unreadable) to skip unreadable "
                        f"images, counted and listed") from err
                bad.append(str(self.images[i]))
                i = self.successor(i)
        raise UnreadableImageError(f"none of the {len(self.images)} images could be read, e.g. {bad[:3]}; check "
                                   f"the image files (cmitm data summary --check-images)")


def paired_views(img: torch.Tensor, dcfg: DataConfig, lo: int, train: bool = True):
    """The same random crop at two resolutions: (lo x lo input, hi x hi reconstruction target).

    The 2x target is the crop resized to ``hi_size``; the input is that view resized to ``lo``.
    Both are normalised with the dataset mean/std.
    """
    hi = dcfg.hi_size
    if train:
        i, j, h, w = v2.RandomResizedCrop.get_params(img, scale=list(dcfg.crop_scale), ratio=[3 / 4, 4 / 3])
        hi_img = TF.resized_crop(img, i, j, h, w, [hi, hi], antialias=True)
        if dcfg.hflip > 0 and torch.rand(()) < dcfg.hflip:
            hi_img = TF.horizontal_flip(hi_img)
    else:
        hi_img = TF.resize(img, [hi, hi], antialias=True)
    lo_img = TF.resize(hi_img, [lo, lo], antialias=True)
    return (lo_img - dcfg.mean) / dcfg.std, (hi_img - dcfg.mean) / dcfg.std


def classifier_view(img: torch.Tensor, dcfg: DataConfig, lo: int, crop_scale, train: bool) -> torch.Tensor:
    """Fine-tuning input: random resized crop (train) or plain resize (eval) to lo x lo, normalised."""
    if train:
        i, j, h, w = v2.RandomResizedCrop.get_params(img, scale=list(crop_scale), ratio=[3 / 4, 4 / 3])
        img = TF.resized_crop(img, i, j, h, w, [lo, lo], antialias=True)
    else:
        img = TF.resize(img, [lo, lo], antialias=True)
    return (img - dcfg.mean) / dcfg.std


class PairDataset(Dataset):
    """Items are dicts; an unreadable image is replaced by another pair (`ReadOrReplace`), whose index
    and report the item then carries, and its path is listed under "unreadable"."""

    def __init__(self, data: PairData, dcfg: DataConfig, mcfg: ModelConfig, train: bool = True,
                 cache_dir: str | None = None, on_unreadable: str = "skip", seed: int = 0):
        self.data, self.dcfg, self.lo, self.train, self.cache_dir = data, dcfg, mcfg.img_size, train, cache_dir
        self.read = ReadOrReplace(data.images, cache_dir, on_unreadable, seed)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        img, i, bad = self.read(i)
        lo, hi = paired_views(img, self.dcfg, self.lo, self.train)
        return {"image": lo, "target": hi, "report": self.data.reports[i], "index": i, "unreadable": bad}


class LabelDataset(Dataset):
    """Items are (image, labels, unreadable paths); batch them with ``collate_fn=collate_labels``.
    An unreadable image is replaced by another image with its own labels (`ReadOrReplace`)."""

    def __init__(self, data: LabelData, dcfg: DataConfig, mcfg: ModelConfig, crop_scale=(0.8, 1.0),
                 train: bool = True, cache_dir: str | None = None, on_unreadable: str = "skip", seed: int = 0):
        self.data, self.dcfg, self.lo = data, dcfg, mcfg.img_size
        self.crop_scale, self.train, self.cache_dir = crop_scale, train, cache_dir
        self.read = ReadOrReplace(data.images, cache_dir, on_unreadable, seed)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        img, i, bad = self.read(i)
        x = classifier_view(img, self.dcfg, self.lo, self.crop_scale, self.train)
        return x, torch.as_tensor(self.data.labels[i], dtype=torch.float32), bad


def collate_labels(items: list) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """A `LabelDataset` batch: stacked images, stacked labels, and the unreadable images' paths."""
    xs, ys, bad = zip(*items)
    return torch.stack(xs), torch.stack(ys), [path for paths in bad for path in paths]


class PairCollate:
    """Stacks the views and tokenises the reports: full ids for E_t, masked ids + MLM labels for D_t."""

    def __init__(self, tokenizer, max_len: int, text_mask_ratio: float):
        self.tokenizer, self.max_len, self.ratio = tokenizer, max_len, text_mask_ratio
        self.mask_id = tokenizer.token_to_id("[MASK]")
        self.is_word_token = word_token_table(tokenizer)

    def __call__(self, items: list[dict]) -> dict:
        enc = encode(self.tokenizer, [it["report"] for it in items], self.max_len)
        masked_ids, mlm_labels = mask_words(enc, self.ratio, self.mask_id, self.is_word_token)
        return {
            "image": torch.stack([it["image"] for it in items]),
            "target": torch.stack([it["target"] for it in items]),
            "index": torch.tensor([it["index"] for it in items]),
            "unreadable": [path for it in items for path in it.get("unreadable", [])],
            "input_ids": enc.input_ids, "attention_mask": enc.attention_mask,
            "masked_ids": masked_ids, "mlm_labels": mlm_labels,
        }
