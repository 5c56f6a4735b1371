"""Report text: a WordPiece tokenizer trained on the report corpus, and whole-word masking.

The tokenizer is a `tokenizers.Tokenizer` (BERT normaliser and pre-tokeniser, ``[CLS] ... [SEP]``);
it is saved as ``tokenizer.json`` next to the model weights so a checkpoint is self-contained.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _bert_tokenizer(vocab: dict[str, int], lowercase: bool = True) -> Tokenizer:
    """A BERT-style WordPiece tokenizer (BERT normaliser and pre-tokeniser, ``[CLS] ... [SEP]``) over ``vocab``."""
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[(t, vocab[t]) for t in ("[CLS]", "[SEP]")])
    return tok


def _merge(parts: list[str], pair: tuple[str, str], merged: str) -> list[str]:
    out, i = [], 0
    while i < len(parts):
        if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
            out.append(merged)
            i += 2
        else:
            out.append(parts[i])
            i += 1
    return out


def wordpiece_vocab(word_counts: dict[str, int], vocab_size: int, min_frequency: int = 2) -> dict[str, int]:
    """WordPiece vocabulary by BPE-style merges (as `tokenizers`' WordPieceTrainer learns it), with ties
    between equally frequent pairs broken lexicographically, so the same corpus always gives the same
    vocabulary. (`tokenizers`' trainer breaks them by hash-map order, which changes from process to
    process: huggingface/tokenizers#1794.) Words start as characters, later characters prefixed "##"."""
    split = {w: [w[0]] + ["##" + c for c in w[1:]] for w in word_counts if w}
    vocab = list(SPECIAL_TOKENS) + sorted({p for parts in split.values() for p in parts} - set(SPECIAL_TOKENS))
    known = set(vocab)
    while len(vocab) < vocab_size:
        pairs: Counter = Counter()
        for w, parts in split.items():
            for pair in zip(parts, parts[1:]):
                pairs[pair] += word_counts[w]
        if not pairs:
            break
        pair, count = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        if count < min_frequency:
            break
        merged = pair[0] + pair[1][2:]
        split = {w: _merge(parts, pair, merged) for w, parts in split.items()}
        if merged not in known:
            vocab.append(merged)
            known.add(merged)
    return {t: i for i, t in enumerate(vocab)}


def train_tokenizer(texts: list[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """WordPiece vocabulary learned from the reports (as MRM does), lower-cased, BERT-style; deterministic
    (`wordpiece_vocab`)."""
    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    counts = Counter(word for text in texts
                     for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    return _bert_tokenizer(wordpiece_vocab(counts, vocab_size, min_frequency))


def pretrained_tokenizer(path: str | Path, lowercase: bool = True) -> Tokenizer:
    """A BERT WordPiece tokenizer from a local folder (e.g. a downloaded clinical BERT): its
    ``tokenizer.json`` when present, else its ``vocab.txt``. Nothing is fetched from a hub; use this
    instead of `train_tokenizer` when E_t should start from that model's vocabulary."""
    path = Path(path)
    if (path / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(path / "tokenizer.json"))
    if not (path / "vocab.txt").is_file():
        raise FileNotFoundError(f"no tokenizer.json or vocab.txt in {path}; pass the folder of a BERT model "
                                "saved locally (e.g. with save_pretrained), or train one with train_tokenizer")
    vocab = {line.rstrip("\n"): i for i, line in enumerate((path / "vocab.txt").read_text(encoding="utf-8").splitlines(True))}
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"{path / 'vocab.txt'} lacks the BERT special tokens {missing}")
    return _bert_tokenizer(vocab, lowercase)


def save_tokenizer(tok: Tokenizer, path: str | Path) -> None:
    tok.save(str(path))


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} not found; a checkpoint folder holds "
                                "model.safetensors, config.json and tokenizer.json")
    return Tokenizer.from_file(str(path))


@dataclass
class EncodedReports:
    input_ids: torch.Tensor  # (B, L) long
    attention_mask: torch.Tensor  # (B, L) long
    word_ids: list[list[int | None]]  # per token: index of its word, None for special/pad tokens


def encode(tok: Tokenizer, texts: list[str], max_len: int) -> EncodedReports:
    """Tokenise, truncate and pad to ``max_len``."""
    tok.enable_truncation(max_len)
    tok.enable_padding(pad_id=tok.token_to_id("[PAD]"), pad_token="[PAD]", length=max_len)
    encs = tok.encode_batch(texts)
    return EncodedReports(
        input_ids=torch.tensor([e.ids for e in encs], dtype=torch.long),
        attention_mask=torch.tensor([e.attention_mask for e in encs], dtype=torch.long),
        word_ids=[e.word_ids for e in encs],
    )


def word_token_table(tok: Tokenizer) -> torch.Tensor:
    """(V,) bool: True for tokens that hold a letter or digit. Words made only of punctuation are
    never masked (predicting a full stop teaches nothing about the image)."""
    vocab = tok.get_vocab()
    table = torch.zeros(len(vocab), dtype=torch.bool)
    for token, idx in vocab.items():
        table[idx] = token not in SPECIAL_TOKENS and any(ch.isalnum() for ch in token)
    return table


def mask_words(enc: EncodedReports, ratio: float, mask_id: int, is_word_token: torch.Tensor,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-word masking: round(ratio * n_words) words per report (at least one) have every token
    replaced by [MASK]. [CLS], [SEP], [PAD] and punctuation are never masked.

    Returns (masked_ids, labels) with labels = original id at masked positions and -100 elsewhere.
    """
    masked = enc.input_ids.clone()
    labels = torch.full_like(enc.input_ids, -100)
    for i, word_ids in enumerate(enc.word_ids):
        ids = enc.input_ids[i]
        words = sorted({w for t, w in enumerate(word_ids) if w is not None and is_word_token[ids[t]]})
        if not words:
            continue
        n_mask = max(1, int(round(ratio * len(words))))
        pick = torch.randperm(len(words), generator=generator)[:n_mask]
        chosen = {words[j] for j in pick.tolist()}
        positions = torch.tensor([t for t, w in enumerate(word_ids) if w in chosen], dtype=torch.long)
        labels[i, positions] = ids[positions]
        masked[i, positions] = mask_id
    return masked, labels
