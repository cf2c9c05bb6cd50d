"""Annotation files -> image entries: BLIP's JSON list format and Karpathy's split files; for
VQA, question entries from BLIP's VQA files and the official VQA v2 questions/annotations.

A malformed file is a DataError naming the file and the position (line/column for JSON syntax,
entry index for a wrong structure); an empty caption is not an error here: the builders skip
and report it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

from blip_jax.data.report import DataError


@dataclasses.dataclass
class Entry:
    image: str            # path relative to the image root
    captions: list[str]   # raw captions, possibly empty strings (skipped later)
    key: Any              # what identifies the image: its image_id if given, else its path
    where: str            # "file: entry N", for skip reports
    image_id: int | None = None  # a stable integer id when the source has one (COCO id)


def read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


def _captions(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(c, str) for c in value):
        return list(value)
    raise DataError(f"{where}: 'caption' must be a string or a list of strings, got {value!r:.80}")


def _checked(where: str, item: Any, required: Sequence[str]) -> dict:
    if not isinstance(item, dict):
        raise DataError(f"{where}: expected an object, got {item!r:.80}")
    missing = [k for k in required if k not in item]
    if missing:
        raise DataError(f"{where}: missing {', '.join(repr(k) for k in missing)}")
    return item


def _json_objects(path: str, required: Sequence[str],
                  described: Sequence[str] | None = None) -> Iterator[tuple[str, dict]]:
    """(where, object) for each entry of a JSON list of objects, each with the `required` keys;
    anything else is a DataError naming the file and the entry."""
    data = read_json(path)
    if not isinstance(data, list):
        keys = ", ".join(repr(k) for k in (described or required))
        raise DataError(f"{path}: expected a JSON list of {{{keys}}} objects, got a {type(data).__name__}")
    for i, item in enumerate(data):
        where = f"{path}: entry {i}"
        yield where, _checked(where, item, required)


def json_lines(path: str, required: Sequence[str], expected: str) -> Iterator[tuple[str, dict]]:
    """(where, object) per non-empty line of a JSON-lines file, each an object with the
    `required` keys; anything else is a DataError naming the file and line (`expected` says
    which files hold one object per line, for a file that does not parse)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}: line {n}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: invalid JSON at column {e.colno}: {e.msg} ({expected})") from None
        yield where, _checked(where, item, required)


def parse_blip_json(path: str) -> list[Entry]:
    """BLIP's release format: [{"image": rel_path, "caption": str | [str], "image_id"?: any}, ...]."""
    entries = []
    for where, item in _json_objects(path, ("image", "caption")):
        image = item["image"]
        if not isinstance(image, str) or not image:
            raise DataError(f"{where}: 'image' must be a non-empty path string, got {image!r:.80}")
        key = item.get("image_id", image)
        if not isinstance(key, (str, int)):
            key = json.dumps(key, sort_keys=True)  # any JSON value identifies an image
        entries.append(Entry(image, _captions(item["caption"], where), key, where))
    return entries


# Karpathy's files put 'restval' (the rest of COCO val2014) into training, as BLIP does.
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}


def parse_karpathy(path: str) -> dict[str, list[Entry]]:
    """Karpathy's dataset_{coco,flickr30k}.json: {"images": [{"filepath"?, "filename", "split",
    "sentences": [{"raw": str}], "cocoid" | "imgid"}]} -> entries per split (train, val, test)."""
    data = read_json(path)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DataError(f"{path}: expected Karpathy's format, an object with an 'images' list")
    splits: dict[str, list[Entry]] = {"train": [], "val": [], "test": []}
    for i, item in enumerate(images):
        where = f"{path}: images[{i}]"
        if not isinstance(item, dict):
            raise DataError(f"{where}: expected an object, got {item!r:.80}")
        missing = [k for k in ("filename", "split", "sentences") if k not in item]
        if missing:
            raise DataError(f"{where}: missing {', '.join(repr(k) for k in missing)}")
        split = KARPATHY_SPLITS.get(item["split"])
        if split is None:
            raise DataError(f"{where}: unknown split {item['split']!r} (expected one of {sorted(KARPATHY_SPLITS)})")
        sentences = item["sentences"]
        if not isinstance(sentences, list) or not all(isinstance(s, dict) and isinstance(s.get("raw"), str)
                                                      for s in sentences):
            raise DataError(f"{where}: 'sentences' must be a list of {{'raw': str}} objects")
        image = os.path.join(item.get("filepath") or "", item["filename"])
        # COCO's own id where there is one (cocoid); Flickr30k has only Karpathy's index (imgid).
        image_id = item.get("cocoid", item.get("imgid"))
        if not isinstance(image_id, int):
            raise DataError(f"{where}: needs an integer 'cocoid' or 'imgid', got {image_id!r:.40}")
        splits[split].append(Entry(image, [s["raw"] for s in sentences], image_id, where, image_id))
    return splits


def split_of(spec: str) -> tuple[str, str]:
    """'val=path.json' -> ('val', 'path.json'); a bare path is the train split."""
    name, sep, path = spec.partition("=")
    if sep and name and os.sep not in name and not os.path.exists(spec):
        return name, path
    return "train", spec


def parse_annotation_specs(specs: Sequence[str]) -> dict[str, list[Entry]]:
    """Several BLIP-format files, each optionally 'split=file'; files of one split are concatenated."""
    splits: dict[str, list[Entry]] = {}
    for spec in specs:
        split, path = split_of(spec)
        splits.setdefault(split, []).extend(parse_blip_json(path))
    return splits


# ---- question answering (VQA) -------------------------------------------------------------------

QA_DATASETS = ("vqa", "vg")  # which image root a BLIP-format question's image is under


@dataclasses.dataclass
class QaEntry:
    image: str               # path relative to its dataset's image root
    question: str            # raw; pre_question is applied by the input pipeline
    question_id: int         # -1: the source gave none (allowed on training splits only)
    answers: list[str]       # raw annotator answers (VQA: 10; VG: 1); [] for test questions
    dataset: str             # "vqa" | "vg"
    where: str               # "file: entry N", for skip reports
    image_id: int | None = None  # the source's image id where it has one (official VQA v2)
    question_type: str = ""  # official VQA v2 only ("what color is the", ...)
    answer_type: str = ""    # official VQA v2 only ("yes/no", "number", "other")
    top_answer: str = ""     # VQA v2's multiple_choice_answer; else the most common answer

    def __post_init__(self) -> None:
        if not self.top_answer and self.answers:  # most common, ties: first given
            self.top_answer = max(self.answers, key=lambda a: (self.answers.count(a), -self.answers.index(a)))


def _answers(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]  # VG: one answer string
    if isinstance(value, list) and all(isinstance(a, str) for a in value):
        return list(value)
    raise DataError(f"{where}: 'answer' must be a string or a list of strings, got {value!r:.80}")


def parse_blip_vqa_json(path: str) -> list[QaEntry]:
    """BLIP's VQA files (vqa_train/vqa_val/vg_qa/vqa_test.json): [{"image", "question",
    "question_id"?, "answer"? (list, or one string for VG), "dataset"? ("vqa" default | "vg")}]."""
    entries = []
    for where, item in _json_objects(path, ("image", "question"), ("image", "question", "answer")):
        image, question, qid = item["image"], item["question"], item.get("question_id", -1)
        if not isinstance(image, str) or not image:
            raise DataError(f"{where}: 'image' must be a non-empty path string, got {image!r:.80}")
        if not isinstance(question, str):
            raise DataError(f"{where}: 'question' must be a string, got {question!r:.80}")
        if not isinstance(qid, int) or isinstance(qid, bool):
            raise DataError(f"{where}: 'question_id' must be an integer, got {qid!r:.40}")
        dataset = item.get("dataset", "vqa")
        if dataset not in QA_DATASETS:
            raise DataError(f"{where}: 'dataset' must be one of {QA_DATASETS}, got {dataset!r:.40}")
        entries.append(QaEntry(image, question, qid, _answers(item.get("answer"), where), dataset, where))
    return entries


def _records(path: str, key: str, fields: Sequence[str]) -> list[dict[str, Any]]:
    data = read_json(path)
    items = data.get(key) if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise DataError(f"{path}: expected the official VQA format, an object with a {key!r} list")
    for i, item in enumerate(items):
        missing = [k for k in fields if not isinstance(item, dict) or k not in item]
        if missing:
            raise DataError(f"{path}: {key}[{i}]: missing {', '.join(repr(k) for k in missing)}")
    return items


# Where each split's COCO images are, when a questions file has no data_subtype.
COCO_SUBTYPES = {"train": "train2014", "val": "val2014", "test": "test2015", "test-dev": "test2015"}


def parse_vqa_v2(questions: str, annotations: str | None, split: str) -> list[QaEntry]:
    """Official VQA v2: a questions file {"data_subtype"?, "questions": [{"image_id", "question",
    "question_id"}]} and, except for test, its annotations {"annotations": [{"question_id",
    "answers": [{"answer"}], "multiple_choice_answer", "question_type", "answer_type"}]}.
    Images: <subtype>/COCO_<subtype>_<image_id:012d>.jpg, subtype = the questions file's
    data_subtype (test-dev2015 images are test2015's), else COCO_SUBTYPES[split]."""
    data = read_json(questions)
    subtype = data.get("data_subtype") if isinstance(data, dict) else None
    subtype = {"test-dev2015": "test2015"}.get(subtype, subtype) or COCO_SUBTYPES.get(split)
    if subtype is None:
        raise DataError(f"{questions}: no 'data_subtype' to say where split {split!r}'s images are; "
                        f"name the split one of {sorted(COCO_SUBTYPES)}")
    by_id: dict[int, dict[str, Any]] = {}
    if annotations is not None:
        for a in _records(annotations, "annotations", ("question_id", "answers")):
            by_id[a["question_id"]] = a
    entries = []
    for i, q in enumerate(_records(questions, "questions", ("image_id", "question", "question_id"))):
        where = f"{questions}: questions[{i}]"
        if not isinstance(q["image_id"], int) or not isinstance(q["question_id"], int):
            raise DataError(f"{where}: 'image_id' and 'question_id' must be integers")
        a = by_id.get(q["question_id"], {})
        if annotations is not None and not a:
            raise DataError(f"{where}: question_id {q['question_id']} has no entry in {annotations} "
                            f"(are the questions and annotations files of the same split?)")
        answers = a.get("answers", [])
        if not isinstance(answers, list) or not all(isinstance(x, dict) and isinstance(x.get("answer"), str)
                                                    for x in answers):
            raise DataError(f"{annotations}: question_id {q['question_id']}: 'answers' must be a list of "
                            f"{{'answer': str}} objects")
        image = f"{subtype}/COCO_{subtype}_{q['image_id']:012d}.jpg"
        entries.append(QaEntry(image, str(q["question"]), q["question_id"], [x["answer"] for x in answers],
                               "vqa", where, q["image_id"], str(a.get("question_type", "")),
                               str(a.get("answer_type", "")), str(a.get("multiple_choice_answer", ""))))
    return entries
