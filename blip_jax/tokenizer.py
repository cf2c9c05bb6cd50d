"""BLIP text tokenizer: bert-base-uncased WordPiece plus BLIP's [DEC]/[ENC] tokens.

Built on the Rust `tokenizers` library so that `transformers` is not a runtime
dependency; ids match transformers' `BertTokenizer(vocab, do_lower_case=True)` after
BLIP adds `bos_token='[DEC]'` and `additional_special_tokens=['[ENC]']`.
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Sequence

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

VOCAB_SIZE = 30524
PAD_ID = 0
UNK_ID = 100
CLS_ID = 101
SEP_ID = 102
MASK_ID = 103
DEC_ID = 30522  # decoder bos: replaces [CLS] for captioning / answer generation
ENC_ID = 30523  # replaces [CLS] for the image-grounded (ITM) text encoder

_VOCAB_FILE = "bert-base-uncased-vocab.txt"
_BERT_SPECIALS = {"[PAD]": PAD_ID, "[UNK]": UNK_ID, "[CLS]": CLS_ID, "[SEP]": SEP_ID, "[MASK]": MASK_ID}
_SPECIAL_IDS = frozenset([*_BERT_SPECIALS.values(), DEC_ID, ENC_ID])
# BertTokenizer's default clean_up_tokenization_spaces=True: glue punctuation and
# English contractions back onto the preceding word. Order matters (" ' " first).
_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
            (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def pre_caption(caption: str, max_words: int = 50) -> str:
    """BLIP's caption cleaning (data/utils.py in salesforce/BLIP), kept bit-for-bit so
    that fine-tuning and evaluation see the same text distribution as the checkpoints.

    Note BLIP (unlike ALBEF) keeps '-' and '/'; the BERT pre-tokenizer splits them off
    as punctuation. An empty result is returned as "" and left to the caller.
    """
    caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption)  # only runs of 2+: a lone '\t' stays, as in BLIP
    caption = caption.rstrip("\n").strip(" ")
    words = caption.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else caption


def pre_question(question: str, max_words: int = 50) -> str:
    """BLIP's question cleaning (data/utils.py): lower-case, drop . ! " ( ) * # : ; ~ (unlike
    pre_caption, '?' and ',' stay and nothing becomes a space), strip trailing spaces, keep at
    most max_words words (split on ' ')."""
    question = re.sub(r"[.!\"()*#:;~]", "", question.lower()).rstrip(" ")
    words = question.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else question


def _read_vocab(vocab_file: str | None) -> tuple[list[str], str]:
    if vocab_file is None:
        res = importlib.resources.files(__package__ or "blip_jax") / "assets" / _VOCAB_FILE
        where = str(res)
        try:  # read_text (not a filesystem path) so zipped installs work too
            text = res.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FileNotFoundError(f"packaged BLIP vocabulary missing: {where} (broken install?)") from None
    else:
        where = str(vocab_file)
        try:
            with open(vocab_file, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"BLIP vocabulary file not found: {where}") from None
    lines = text.split("\n")  # not splitlines(): it would also split on \x1c, \u2028, ...
    if lines and lines[-1] == "":
        lines.pop()
    # [DEC]/[ENC] ids are fixed by BLIP checkpoints, so only the stock vocab is accepted.
    if len(lines) != DEC_ID or any(lines[i] != t for t, i in _BERT_SPECIALS.items()):
        raise ValueError(f"{where}: expected the {DEC_ID}-entry bert-base-uncased vocabulary, got {len(lines)} lines")
    return lines, where


class BlipTokenizer:
    """bert-base-uncased WordPiece with BLIP's extra [DEC] (30522) and [ENC] (30523)."""

    def __init__(self, vocab_file: str | None = None) -> None:
        lines, self.vocab_file = _read_vocab(vocab_file)
        vocab = {t: i for i, t in enumerate(lines)}  # line number is the id
        tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        # strip_accents=None follows lowercase, i.e. accents are stripped as in BERT uncased.
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)])
        tok.decoder = decoders.WordPiece(prefix="##")
        # Registered as special so that literal "[SEP]", "[DEC]", ... in raw text map to
        # their ids unsplit, as transformers does; [DEC]/[ENC] are appended at 30522/30523.
        tok.add_special_tokens([AddedToken(t, special=True) for t in [*_BERT_SPECIALS, "[DEC]", "[ENC]"]])
        assert tok.token_to_id("[DEC]") == DEC_ID and tok.token_to_id("[ENC]") == ENC_ID
        self._tok = tok
        self._id_to_token = [*lines, "[DEC]", "[ENC]"]

    @property
    def vocab_size(self) -> int:
        return len(self._id_to_token)

    def encode(self, texts: Sequence[str], max_length: int, *, bos_id: int | None = None,
               add_eos: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Batch-encode to ([CLS]|bos) tokens ([SEP]), right-padded with 0 to max_length.

        Over-long texts lose their tail but keep [SEP] last (BertTokenizer truncation).
        add_eos=False drops [SEP], as BLIP does for generation prompts.
        Returns (input_ids, attention_mask), both int32 [len(texts), max_length].
        """
        if isinstance(texts, str):  # a bare str is a Sequence[str] of characters
            raise TypeError("encode expects a sequence of strings, not a single str")
        n_special = 2 if add_eos else 1
        if max_length < n_special:
            raise ValueError(f"max_length={max_length} leaves no room for the special tokens")
        ids = np.zeros((len(texts), max_length), np.int32)
        mask = np.zeros_like(ids)
        for row, enc in enumerate(self._tok.encode_batch(list(texts))):
            body = enc.ids[1:-1][: max_length - n_special]  # strip template's [CLS] .. [SEP]
            seq = [CLS_ID if bos_id is None else bos_id, *body, *([SEP_ID] if add_eos else [])]
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1  # not ids != 0: a literal "[PAD]" in text is attended
        return ids, mask

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Ids -> text, same string as BertTokenizer.decode with its default cleanup."""
        flat = np.asarray(ids, dtype=np.int64).reshape(-1).tolist()
        bad = [i for i in flat if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids out of range [0, {self.vocab_size}): {bad[:5]}")
        tokens = [self._id_to_token[i] for i in flat if not (skip_special_tokens and i in _SPECIAL_IDS)]
        text = " ".join(tokens).replace(" ##", "").strip()
        for old, new in _CLEANUP:
            text = text.replace(old, new)
        return text

    def batch_decode(self, ids: np.ndarray | list, skip_special_tokens: bool = True) -> list[str]:
        """Decode each row up to (excluding) its first [SEP] or [PAD], e.g. generator output."""
        out = []
        for row in ids:
            row = np.asarray(row).reshape(-1)
            stop = np.flatnonzero((row == SEP_ID) | (row == PAD_ID))
            out.append(self.decode(row[: stop[0]] if stop.size else row, skip_special_tokens))
        return out
