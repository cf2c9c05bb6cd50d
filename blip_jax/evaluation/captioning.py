"""COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr, optionally SPICE) via pycocoevalcap.

The standard COCO evaluation tokenizes with Stanford's PTBTokenizer and scores METEOR with the
METEOR 1.5 jar, both run with `java`. Without java, tokenisation falls back to `python_tokenize`
(PTB-like rules, same punctuation removal) and METEOR is skipped; the returned dict names the path
taken under "tokenizer" ("ptb" or "python"). SPICE needs Stanford CoreNLP models that
pycocoevalcap downloads at first use: it runs only when asked and is left out, with a warning,
when it cannot run.
"""

from __future__ import annotations

import atexit
import collections
import json
import logging
import re
import shutil
import statistics
import threading
from typing import Any, Hashable, Mapping, Sequence

log = logging.getLogger(__name__)

# Tokens PTBTokenizer's wrapper in pycocoevalcap drops after tokenising (punctuation, brackets).
_PTB_PUNCTUATION = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?",
                              "!", ",", ":", "-", "--", "...", ";"])
_CLITIC = re.compile(r"(?<=[a-z0-9])(n't|'s|'re|'ve|'ll|'d|'m)\b")
# A word (inner hyphens, periods, colons, slashes or apostrophes kept: "t-shirt", "3.5", "5:30",
# "o'clock"), a split-off clitic, "..." or "--", or any other single non-space character.
_TOKEN = re.compile(r"n't|'(?:s|re|ve|ll|d|m)\b|[a-z0-9]+(?:[-.':/][a-z0-9]+)*|\.\.\.|--|\S")
# PTB's bracket names; with -lowerCase they come out lower-cased, which the punctuation list
# (upper case) does not catch, so the standard evaluation keeps them as words.
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "{": "-lcb-", "}": "-rcb-", "[": "-lsb-", "]": "-rsb-"}


def python_tokenize(text: str) -> str:
    """Lower-cased, PTB-like tokens joined by spaces, punctuation removed as pycocoevalcap does:
    the fallback for PTBTokenizer when java is missing. Clitics split as PTB does ("don't" ->
    "do n't", "dog's" -> "dog 's"), quotes dropped, other symbols ("&") kept."""
    text = _CLITIC.sub(r" \1", text.lower().replace("\n", " "))
    words = [_BRACKETS.get(w, w) for w in _TOKEN.findall(text)]
    return " ".join(w for w in words if w not in _PTB_PUNCTUATION and w != '"')


def _check_ids(predictions: Mapping, references: Mapping) -> None:
    missing = [k for k in references if k not in predictions]
    extra = [k for k in predictions if k not in references]
    if missing or extra:
        raise ValueError(f"predictions and references must cover the same image ids: "
                         f"{len(missing)} without a prediction (e.g. {missing[:3]}), {len(extra)} "
                         f"without references (e.g. {extra[:3]})")
    empty = [k for k, refs in references.items() if not len(refs)]
    if empty:
        raise ValueError(f"{len(empty)} image ids have no reference caption (e.g. {empty[:3]})")


def _tokenize(references: Mapping[Hashable, Sequence[str]], predictions: Mapping[Hashable, str],
              use_java: bool) -> tuple[dict, dict]:
    """(references, predictions) tokenised, keyed by image id, values lists of strings."""
    if not use_java:
        return ({k: [python_tokenize(c) for c in v] for k, v in references.items()},
                {k: [python_tokenize(predictions[k])] for k in references})
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    # One java run for both sides: keys tagged by side (the tokenizer only groups by key).
    both = {("ref", k): [{"caption": c} for c in v] for k, v in references.items()}
    both.update({("res", k): [{"caption": predictions[k]}] for k in references})
    out = PTBTokenizer().tokenize(both)
    return {k: out[("ref", k)] for k in references}, {k: out[("res", k)] for k in references}


# One METEOR java process per Python process, started on first use. It loads METEOR's
# paraphrase tables before reading its input (20-35 s on a 2-core AMD EPYC, ~1 GB resident),
# then scores a set in well under a second. Each evaluation sends every segment's statistics in
# its EVAL line, so a set's score does not depend on what the process scored before
# (tests/test_evaluation.py): evaluations per epoch, or per condition in the bootstrap
# experiment, pay the start once.
_meteor_scorer: Any = None
_meteor_guard = threading.Lock()


def _meteor(gts: dict, res: dict) -> float:
    global _meteor_scorer
    with _meteor_guard:
        if _meteor_scorer is None or _meteor_scorer.meteor_p.poll() is not None:  # none, or it died
            from pycocoevalcap.meteor.meteor import Meteor
            _meteor_scorer = Meteor()
        scorer = _meteor_scorer
        try:
            return float(scorer.compute_score(gts, res)[0])
        except BaseException as e:
            # pycocoevalcap holds its lock across the exchange without releasing it on errors:
            # release it, or its __del__ (which takes the lock) would hang when collected.
            if scorer.lock.locked():
                scorer.lock.release()
            _stop_meteor()
            if isinstance(e, Exception):
                raise RuntimeError(f"METEOR (pycocoevalcap's java process) failed scoring {len(res)} "
                                   f"captions: {type(e).__name__}: {e}. It needs java on PATH and "
                                   f"2 GB of heap (-Xmx2G)") from e
            raise


def _stop_meteor() -> None:
    global _meteor_scorer
    scorer, _meteor_scorer = _meteor_scorer, None
    if scorer is not None:
        scorer.meteor_p.kill()
        scorer.meteor_p.wait()


def close_meteor() -> None:
    """Stops the METEOR java process caption_metrics keeps (a later call starts a new one). Runs
    at interpreter exit."""
    with _meteor_guard:
        _stop_meteor()


atexit.register(close_meteor)


def _spice(gts: dict, res: dict) -> float | None:
    try:
        from pycocoevalcap.spice.spice import Spice
        return float(Spice().compute_score(gts, res)[0])
    except Exception as e:  # noqa: BLE001: any failure (download, java, memory) only drops SPICE
        log.warning("SPICE left out: %s: %s. It needs java and the Stanford CoreNLP 3.6.0 jars in "
                    "pycocoevalcap/spice/lib (downloaded on first use: run once with network "
                    "access)", type(e).__name__, e)
        return None


def caption_metrics(predictions: Mapping[Hashable, str],
                    references: Mapping[Hashable, Sequence[str]], *,
                    spice: bool = False, tokenizer: str = "auto") -> dict[str, float | str]:
    """COCO caption metrics of one predicted caption per image against its references.

    predictions: image_id -> caption; references: image_id -> reference captions (same ids).
    tokenizer: "auto" (PTB via java when java is on PATH, else Python), "ptb" or "python".
    Returns Bleu_1..Bleu_4, METEOR (PTB path only), ROUGE_L, CIDEr, SPICE (when asked and it runs)
    as fractions (x100 for the paper's numbers), and "tokenizer": the path used.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    _check_ids(predictions, references)
    if tokenizer not in ("auto", "ptb", "python"):
        raise ValueError(f"tokenizer={tokenizer!r}: use 'auto', 'ptb' or 'python'")
    has_java = shutil.which("java") is not None
    if tokenizer == "ptb" and not has_java:
        raise RuntimeError("tokenizer='ptb' needs java on PATH; install a JRE or use 'python'")
    use_java = has_java and tokenizer != "python"
    if not has_java and tokenizer == "auto":
        log.warning("java not found: tokenising captions with python_tokenize and skipping METEOR "
                    "(install a JRE for the standard COCO evaluation)")
    gts, res = _tokenize(references, predictions, use_java)

    out: dict[str, float | str] = {"tokenizer": "ptb" if use_java else "python"}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out.update({f"Bleu_{n + 1}": float(b) for n, b in enumerate(bleu)})
    if use_java:
        out["METEOR"] = _meteor(gts, res)
    out["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    if spice:
        value = _spice(gts, res)
        if value is not None:
            out["SPICE"] = value
    return out


def _json_id(image_id):
    """numpy integers -> int so that the ids serialise as in COCO's files."""
    return image_id.item() if hasattr(image_id, "item") else image_id


def write_results(path: str, predictions: Mapping[Hashable, str]) -> None:
    """Writes captions in the COCO results format: [{"image_id": ..., "caption": ...}, ...]."""
    rows = [{"image_id": _json_id(k), "caption": str(v)} for k, v in predictions.items()]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(rows, f, ensure_ascii=False)


def caption_agnostic_baseline(references: Mapping[Hashable, Sequence[str]]) -> dict[Hashable, str]:
    """The same caption for every image: what a captioner that ignores the image could score best
    with little effort. The caption is the set's most frequent reference (whitespace-normalised,
    lower-cased); on sets where references are nearly all distinct (COCO) ties are broken by, in
    order: word count closest to the median reference length, highest mean frequency of its words
    over all references (the most generic wording), then alphabetical order."""
    refs = [" ".join(c.lower().split()) for v in references.values() for c in v]
    refs = [c for c in refs if c]
    if not refs:
        raise ValueError("caption_agnostic_baseline needs at least one non-empty reference caption")
    count = collections.Counter(refs)
    words = collections.Counter(w for c in refs for w in c.split())
    median = statistics.median(len(c.split()) for c in refs)

    def key(c: str):
        toks = c.split()
        return (-count[c], abs(len(toks) - median), -sum(words[w] for w in toks) / len(toks), c)

    best = min(count, key=key)
    return {k: best for k in references}
