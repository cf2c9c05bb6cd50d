"""BlipTokenizer must reproduce BLIP's transformers BertTokenizer id-for-id."""

from __future__ import annotations

import hashlib
import re
import importlib.resources

import numpy as np
import pytest

from blip_jax.tokenizer import (CLS_ID, DEC_ID, ENC_ID, PAD_ID, SEP_ID, UNK_ID, VOCAB_SIZE, BlipTokenizer,
                                pre_caption)

VOCAB_MD5 = "64800d5d8528ce344256daf115d4965e"

CAPTIONS = [
    "A man riding a wave on top of a surfboard.",
    "Two dogs, playing!! in the (snow) -- near #5; really? yes: ~maybe~ *ok*",
    "Café naïve Zoë, résumé & façade",
    "there are 3 cats, 12.5% of 1,000 birds and 2024-01-01",
    "a sign that says 中国 北京",
    "a birthday cake 🎂 with a smiley 😀",
    "it's a dog's life, isn't it? they're sure we've been there, i'm told",
    "t-shirt and jeans / slash\\back",
    "",
    "   leading and trailing spaces\t\n",
    "unaffable antidisestablishmentarianism supercalifragilisticexpialidocious",
    "x" * 150,  # longer than WordPiece's 100-char limit -> a single [UNK]
    "literal [SEP] and [DEC] markers",
    " ".join(["a very long caption that will not fit"] * 12),
]


def _bert_tokenizer(cls, vocab_file):
    tok = cls(vocab_file, do_lower_case=True)
    # exactly BLIP's init_tokenizer()
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


@pytest.fixture(scope="module")
def tok() -> BlipTokenizer:
    return BlipTokenizer()


@pytest.fixture(scope="module")
def references(tok):
    """transformers' BertTokenizer, plus the pure-Python one where it is a separate class (v5+)."""
    transformers = pytest.importorskip("transformers")
    refs = [_bert_tokenizer(transformers.BertTokenizer, tok.vocab_file)]
    try:
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy
    except ImportError:
        pass
    else:
        refs.append(_bert_tokenizer(BertTokenizerLegacy, tok.vocab_file))
    return refs


@pytest.fixture(scope="module")
def slow_reference(references):
    """Python BertTokenizer (BLIP used it through transformers 4.x): its decode is the target,
    since transformers 5's Rust-backed decode no longer re-attaches "'s", "n't", ..."""
    slow = [r for r in references if not getattr(r, "is_fast", False)]
    if not slow:
        pytest.skip("no pure-Python BertTokenizer in this transformers version")
    return slow[0]


def test_special_ids_match_transformers(tok, references):
    assert tok.vocab_size == VOCAB_SIZE == 30524
    for ref in references:
        assert len(ref) == VOCAB_SIZE
        got = ref.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[DEC]", "[ENC]"])
        assert got == [PAD_ID, UNK_ID, CLS_ID, SEP_ID, DEC_ID, ENC_ID]
        assert ref.bos_token_id == DEC_ID


@pytest.mark.parametrize("max_length", [30, 35, 64])
def test_encode_matches_bert_tokenizer(tok, references, max_length):
    ids, mask = tok.encode(CAPTIONS, max_length)
    assert ids.shape == mask.shape == (len(CAPTIONS), max_length)
    assert ids.dtype == mask.dtype == np.int32
    for ref in references:
        enc = ref(CAPTIONS, padding="max_length", truncation=True, max_length=max_length)
        np.testing.assert_array_equal(ids, np.array(enc["input_ids"]), err_msg=type(ref).__name__)
        np.testing.assert_array_equal(mask, np.array(enc["attention_mask"]), err_msg=type(ref).__name__)


def test_encode_truncation_keeps_sep(tok):
    ids, mask = tok.encode([CAPTIONS[-1], ""], 30)
    assert mask[0].all() and ids[0, 0] == CLS_ID and ids[0, -1] == SEP_ID
    assert ids[1, :2].tolist() == [CLS_ID, SEP_ID] and mask[1].sum() == 2 and not ids[1, 2:].any()


def test_encode_bos_and_no_eos(tok, references):
    ref = references[0]
    ids, _ = tok.encode(CAPTIONS, 30)
    dec, dec_mask = tok.encode(CAPTIONS, 30, bos_id=DEC_ID)
    assert (dec[:, 0] == DEC_ID).all()
    np.testing.assert_array_equal(dec[:, 1:], ids[:, 1:])
    # BLIP's captioning prompt: tokenizer(prompt).input_ids[:, :-1], with [CLS] -> [DEC].
    prompt, prompt_mask = tok.encode(["a picture of "], 8, bos_id=DEC_ID, add_eos=False)
    want = [DEC_ID, *ref("a picture of ")["input_ids"][1:-1]]
    assert prompt[0].tolist() == want + [PAD_ID] * (8 - len(want))
    assert prompt_mask[0].tolist() == [1] * len(want) + [0] * (8 - len(want))
    # without [SEP] the text may use the slot it would have taken
    short, _ = tok.encode([CAPTIONS[-1]], 10, add_eos=False)
    np.testing.assert_array_equal(short[0], ref(CAPTIONS[-1])["input_ids"][:10])


def test_encode_rejects_bad_input(tok):
    with pytest.raises(TypeError):
        tok.encode("a single string", 10)
    with pytest.raises(ValueError):
        tok.encode(["x"], 1)


@pytest.mark.parametrize("skip", [True, False])
def test_decode_matches_bert_tokenizer(tok, slow_reference, skip):
    ids, _ = tok.encode(CAPTIONS, 64, bos_id=DEC_ID)
    ids[:, -1] = ENC_ID  # an [ENC] mid-stream must be skipped like any special token
    for row in ids:
        assert tok.decode(row, skip_special_tokens=skip) == slow_reference.decode(
            row.tolist(), skip_special_tokens=skip)


def test_decode_examples(tok):
    ids, _ = tok.encode(["It's a dog's toy, isn't it? Yes!", "Café naïve Zoë"], 32, bos_id=DEC_ID)
    assert tok.decode(ids[0]) == "it's a dog's toy, isn't it? yes!"
    assert tok.decode(ids[1]) == "cafe naive zoe"
    with pytest.raises(ValueError):
        tok.decode([VOCAB_SIZE])


def test_batch_decode_stops_at_sep_or_pad(tok):
    a = tok.encode(["a dog"], 3, add_eos=False)[0][0, 1:].tolist()  # "a dog" -> 2 ids
    rows = np.array([
        [DEC_ID, *a, SEP_ID, *a, PAD_ID],  # text after [SEP] is ignored
        [DEC_ID, *a, PAD_ID, *a, SEP_ID],  # ... and after the first pad
        [DEC_ID, *a, *a, *a],  # no terminator: whole row
    ])
    assert tok.batch_decode(rows) == ["a dog", "a dog", "a dog a dog a dog"]
    assert tok.batch_decode(rows.tolist(), skip_special_tokens=False)[0] == "[DEC] a dog"


@pytest.mark.parametrize("raw, want", [
    ("A Man, riding... a horse!!", "a man, riding a horse"),
    ('"Quoted" (words) *with* #tags: x; y ~ z', "quoted words with tags x y z"),
    ("a   dog    runs \n\n", "a dog runs"),
    ("  Two cats.\n", "two cats"),
    ("t-shirt/jeans?", "t-shirt/jeans?"),  # BLIP keeps - / ? ' , (unlike ALBEF)
    ("...!!!", ""),
    ("", ""),
])
def test_pre_caption(raw, want):
    assert pre_caption(raw) == want


def test_pre_caption_word_cut():
    words = [f"w{i}" for i in range(60)]
    assert pre_caption(" ".join(words)) == " ".join(words[:50])
    assert pre_caption("One.  two three four", max_words=3) == "one two three"
    assert pre_caption("one two three", max_words=3) == "one two three"


def test_packaged_vocab_md5(tok):
    data = (importlib.resources.files("blip_jax") / "assets" / "bert-base-uncased-vocab.txt").read_bytes()
    assert hashlib.md5(data).hexdigest() == VOCAB_MD5
    assert data.count(b"\n") == DEC_ID


def test_missing_vocab_file(tmp_path):
    missing = tmp_path / "nope" / "vocab.txt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        BlipTokenizer(str(missing))


def test_wrong_vocab_file(tmp_path):
    bad = tmp_path / "vocab.txt"
    bad.write_text("[PAD]\nhello\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bert-base-uncased"):
        BlipTokenizer(str(bad))
