from pathlib import Path

import torch

from cmitm_lib.text import (encode, load_tokenizer, mask_words, pretrained_tokenizer, save_tokenizer, train_tokenizer,
                            word_token_table, wordpiece_vocab)

REPORTS = ["FINDINGS: Small left pleural effusion. No pneumothorax. IMPRESSION: Left effusion.",
           "FINDINGS: The lungs are clear. Heart size is normal. IMPRESSION: No acute disease.",
           "FINDINGS: Consolidation in the right lower lobe, possibly pneumonia. IMPRESSION: Pneumonia."] * 5


def test_tokenizer_adds_cls_sep_and_pads(tmp_path):
    tok = train_tokenizer(REPORTS, vocab_size=120, min_frequency=1)
    enc = encode(tok, REPORTS[:2], max_len=32)
    assert enc.input_ids.shape == (2, 32)
    assert enc.input_ids[0, 0] == tok.token_to_id("[CLS]")
    n = int(enc.attention_mask[0].sum())
    assert enc.input_ids[0, n - 1] == tok.token_to_id("[SEP]")
    assert torch.all(enc.input_ids[0, n:] == tok.token_to_id("[PAD]"))
    save_tokenizer(tok, tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert torch.equal(encode(again, REPORTS[:2], 32).input_ids, enc.input_ids)


def test_whole_word_masking_half_the_words_never_specials():
    tok = train_tokenizer(REPORTS, vocab_size=60, min_frequency=1)  # small vocab: words split into pieces
    enc = encode(tok, REPORTS[:3], max_len=48)
    table = word_token_table(tok)
    mask_id = tok.token_to_id("[MASK]")
    masked, labels = mask_words(enc, 0.5, mask_id, table, torch.Generator().manual_seed(0))
    specials = {tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]")}
    for i, word_ids in enumerate(enc.word_ids):
        ids = enc.input_ids[i]
        is_masked = labels[i] != -100
        assert not any(int(ids[t]) in specials for t in torch.nonzero(is_masked).flatten())
        assert torch.all(masked[i][is_masked] == mask_id)
        assert torch.equal(masked[i][~is_masked], ids[~is_masked])
        assert torch.equal(labels[i][is_masked], ids[is_masked])
        # whole words: every token of a chosen word is masked
        words = {}
        for t, w in enumerate(word_ids):
            if w is not None:
                words.setdefault(w, []).append(bool(is_masked[t]))
        assert all(all(v) or not any(v) for v in words.values())
        candidates = [w for w, toks in words.items()
                      if any(table[ids[t]] for t, ww in enumerate(word_ids) if ww == w)]
        n_masked = sum(all(words[w]) for w in candidates)
        assert n_masked == max(1, round(0.5 * len(candidates)))
        assert not any(all(v) for w, v in words.items() if w not in candidates)  # punctuation never


def test_pretrained_tokenizer_from_a_local_vocab_txt(tmp_path):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "left", "pleural", "effusion", "eff", "##usion", "."]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = pretrained_tokenizer(tmp_path)
    enc = encode(tok, ["Left pleural effusion."], max_len=8)
    assert enc.input_ids[0].tolist() == [2, 5, 6, 7, 10, 3, 0, 0]
    tok.save(str(tmp_path / "tokenizer.json"))
    assert pretrained_tokenizer(tmp_path).get_vocab() == tok.get_vocab()


def test_pretrained_tokenizer_names_what_is_missing(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="no tokenizer.json or vocab.txt"):
        pretrained_tokenizer(tmp_path)


def test_tokenizer_training_is_the_same_in_every_process(tmp_path):
    """`tokenizers`' own WordPieceTrainer breaks merge ties by hash-map order, which changes per process
    (huggingface/tokenizers#1794); train_tokenizer must not."""
    import subprocess
    import sys
    code = ("import sys; from tests.test_text import REPORTS; from cmitm_lib.text import train_tokenizer; "
            "train_tokenizer(REPORTS, vocab_size=80, min_frequency=1).save(sys.argv[1])")
    outs = []
    for i in range(3):
        out = tmp_path / f"tok{i}.json"
        subprocess.run([sys.executable, "-c", code, str(out)], check=True, cwd=Path(__file__).resolve().parents[1])
        outs.append(out.read_text())
    assert outs[0] == outs[1] == outs[2]


def test_wordpiece_vocab_merges_the_most_frequent_pair_first_ties_alphabetically():
    vocab = wordpiece_vocab({"ab": 3, "cd": 3, "ce": 1}, vocab_size=100, min_frequency=2)
    tokens = list(vocab)
    assert tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert tokens[5:] == ["##b", "##d", "##e", "a", "c", "ab", "cd"]  # "ce" (count 1) is below min_frequency
    tok = train_tokenizer(["Left effusion. Left effusion."], vocab_size=200, min_frequency=1)
    assert tok.encode("left effusion").tokens == ["[CLS]", "left", "effusion", "[SEP]"]


def test_build_model_with_a_seed_starts_from_the_same_weights(micro_preset, micro_tokenizer):
    from cmitm_lib.train import build_model
    a = build_model(micro_preset, micro_tokenizer, seed=3).state_dict()
    torch.rand(100)  # whatever ran in between
    b = build_model(micro_preset, micro_tokenizer, seed=3).state_dict()
    c = build_model(micro_preset, micro_tokenizer, seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
