"""Text tokenizers: a multilingual Unigram (SentencePiece-style, as in XLM-R) trained on the corpus
with Hugging Face ``tokenizers``, or any Hugging Face tokenizer by hub name or local folder.

Special ids follow XLM-R / open_clip's ``pool_type="eos"`` convention: <pad>=0, <s>=1, </s>=2, <unk>=3.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import torch

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)


def train_tokenizer(texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = 8000) -> Path:
    """Train a Unigram tokenizer (NFKC + lowercase, Metaspace) and save it as a HF tokenizer folder."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, unk_token="<unk>", show_progress=False
    )
    texts = sorted(set(texts))
    n_chars = len({c for t in texts for c in tok.normalizer.normalize_str(t)})
    if vocab_size < n_chars + len(SPECIAL_TOKENS) + 2:
        raise ValueError(f"vocab_size {vocab_size} cannot hold the {n_chars} distinct characters of this corpus: "
                         f"use --vocab-size {n_chars + len(SPECIAL_TOKENS) + 2} or more")
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", BOS_ID), ("</s>", EOS_ID)]
    )
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [PAD_ID, BOS_ID, EOS_ID, UNK_ID]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    out_dir = Path(out_dir)
    fast.save_pretrained(out_dir)
    return out_dir


class TextTokenizer:
    """Callable ``texts -> LongTensor (B, context_length)``, padded with the pad id after </s>.

    Wraps ``transformers.AutoTokenizer`` so a hub name (``xlm-roberta-base``) or a local folder works.
    """

    def __init__(self, name_or_path: str | os.PathLike, context_length: int):
        from transformers import AutoTokenizer

        try:
            self.hf = AutoTokenizer.from_pretrained(str(name_or_path))
        except (OSError, ValueError) as e:
            raise FileNotFoundError(
                f"cannot load a tokenizer from {str(name_or_path)!r}: give a local folder with tokenizer.json "
                f"(see `python -m brivl tokenizer --help`) or a Hugging Face name available offline ({e})"
            ) from e
        self.name_or_path = str(name_or_path)
        self.context_length = context_length
        self.pad_id = self.hf.pad_token_id if self.hf.pad_token_id is not None else 0
        self.eos_id = self.hf.eos_token_id if self.hf.eos_token_id is not None else self.hf.sep_token_id

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        enc = self.hf(
            list(texts), padding="max_length", truncation=True, max_length=self.context_length, return_tensors="pt"
        )
        return enc["input_ids"]  # (B, L)

    def save_pretrained(self, out_dir: str | os.PathLike) -> None:
        self.hf.save_pretrained(str(out_dir))


# --------------------------------------------------------------------------- measuring a vocabulary


def script_of(texts: Iterable[str]) -> str:
    """The Unicode script most letters of ``texts`` belong to (the first word of the character names:
    LATIN, CYRILLIC, ARABIC, CJK, HIRAGANA, HANGUL, ...; Japanese kana and kanji count as JAPANESE)."""
    import unicodedata
    from collections import Counter

    counts: Counter = Counter()
    for t in texts:
        for c in t:
            if c.isalpha():
                name = unicodedata.name(c, "UNKNOWN")
                word = name.split()[0]
                counts["JAPANESE" if word in ("HIRAGANA", "KATAKANA") else word] += 1
    if not counts:
        return "UNKNOWN"
    top, _ = counts.most_common(1)[0]
    return "JAPANESE" if top == "CJK" and counts["JAPANESE"] > 0.1 * sum(counts.values()) else top


def tokenizer_stats(tokenizer_dir: str | os.PathLike, texts_by_lang: dict[str, list[str]]) -> dict[str, dict]:
    """Per language: pieces per whitespace word, pieces per character and the unknown-character rate (the
    share of characters that fall into ``<unk>`` pieces) of a tokenizer folder on the given texts."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    unk = tok.token_to_id("<unk>")
    out = {}
    for lang, texts in texts_by_lang.items():
        pieces = words = chars = unk_chars = 0
        for enc, text in zip(tok.encode_batch(texts, add_special_tokens=False), texts):
            pieces += sum(1 for t in enc.tokens if t != "▁")  # a bare word boundary is no piece of the text
            words += len(text.split())
            chars += sum(1 for c in text if not c.isspace())
            unk_chars += sum(e - s for i, (s, e) in zip(enc.ids, enc.offsets) if i == unk)
        out[lang] = {"script": script_of(texts), "pieces_per_word": pieces / max(words, 1),
                     "pieces_per_char": pieces / max(chars, 1), "unk_char_rate": unk_chars / max(chars, 1),
                     "texts": len(texts)}
    return out
