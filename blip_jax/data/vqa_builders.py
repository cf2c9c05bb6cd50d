"""TFDS builders for VQA (array_record, images kept as their encoded bytes), one record per
QUESTION, plus the answer list every VQA dataset carries (`<dataset dir>/answer_list.json`).

Features (all builders): image (bytes), image_id (int64), image_path (text, relative to its
image root), question (text, raw: pre_question is applied by the pipeline), question_id
(int64), answers (Sequence(Text): the raw annotator answers, VQA v2's 10 or VG's 1; empty for
test questions), dataset ("vqa" | "vg": which image root), question_type and answer_type (text;
"" when the source does not say). The synthetic builder adds scene (JSON, synthetic.Scene).

Image ids are unique within a dataset. VQA images keep their COCO id (official files: the
image_id; BLIP files: the number ending the file name), VG images get VG_IMAGE_ID_OFFSET + the
number of their file name, so COCO and VG ids never collide; an image without such a number (or
whose number is taken) gets OTHER_IMAGE_ID_OFFSET + a dense index by first appearance (splits in
name order). All stay below 2**31.

Answer list (what rank inference chooses from): the user's file (BLIP's answer_list.json) with
answer_list=..., else the answer_list_size (3128, BLIP's list length) most frequent top answers of
the training splits (VQA v2's multiple_choice_answer; elsewhere each question's most common
answer), ties broken alphabetically; synthetic: synthetic_vqa.answer_list().

Missing or undecodable images (each named once, with how many questions it had), empty questions
and training questions without answers are skipped and listed in `self.report`; a split left
with no record is a DataError, and so is a question id repeated within an evaluation split.
"""

from __future__ import annotations

import collections
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from blip_jax.data import synthetic_vqa
from blip_jax.data.annotations import QaEntry, parse_blip_vqa_json, parse_vqa_v2, read_json, split_of
from blip_jax.data.builders import VERSION, _ImageTextBuilder, _NAME, is_pair_split
from blip_jax.data.decode import read_checked
from blip_jax.data.report import DataError, write_json
from blip_jax.image import ImageError

ANSWER_LIST_FILE = "answer_list.json"
ANSWER_LIST_SIZE = 3128
VG_IMAGE_ID_OFFSET = 1_000_000_000
OTHER_IMAGE_ID_OFFSET = 1_500_000_000
_ID_RANGE = 500_000_000  # numbers from file names at or above this get a dense id instead
_TRAILING_NUMBER = re.compile(r"(\d+)\.[A-Za-z0-9]+$")


def vqa_features() -> dict[str, Any]:
    return {
        "image": tfds.features.Tensor(shape=(), dtype=np.object_),  # encoded bytes, as in the source
        "image_id": np.int64,
        "image_path": tfds.features.Text(),
        "question": tfds.features.Text(),
        "question_id": np.int64,
        "answers": tfds.features.Sequence(tfds.features.Text()),
        "dataset": tfds.features.Text(),
        "question_type": tfds.features.Text(),
        "answer_type": tfds.features.Text(),
    }


def split_files(specs: Sequence[str]) -> dict[str, list[str]]:
    """['train=a.json,b.json', 'test=c.json', 'd.json'] -> {'train': [a, b, d], 'test': [c]}:
    the --annotations syntax of prepare (a bare file is train), with comma-separated files."""
    out: dict[str, list[str]] = {}
    for spec in specs:
        split, paths = split_of(spec)
        out.setdefault(split, []).extend(p for p in paths.split(",") if p)
    return out


def most_frequent_answers(splits: Mapping[str, Sequence[QaEntry]], n: int) -> list[str]:
    """The n most frequent top answers of the training splits, ties alphabetical."""
    counts = collections.Counter(e.top_answer for split, entries in splits.items() if is_pair_split(split)
                                 for e in entries if e.top_answer)
    return [a for a, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def read_answer_list(path: str) -> list[str]:
    answers = read_json(path)
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise DataError(f"{path}: an answer list must be a non-empty JSON list of strings")
    return answers


def load_answer_list(data_dir: str, name: str) -> list[str]:
    """The answer list a VQA dataset was written with (prepare writes it next to the records)."""
    from blip_jax.data.prepare import dataset_dir  # prepare imports this module
    path = os.path.join(dataset_dir(data_dir, name), ANSWER_LIST_FILE)
    if not os.path.isfile(path):
        raise DataError(f"{path} missing: {name!r} is not a VQA dataset written by blip_jax.data.prepare "
                        f"(--source blip_vqa / vqa_v2 / synthetic_vqa); rewrite it with --overwrite")
    return read_answer_list(path)


class VqaBuilder(_ImageTextBuilder, skip_registration=True):
    """Shared VQA generation: features, answer list file, per-dataset question counts."""

    answers: list[str]
    answer_list_source = ""

    def _features(self) -> dict[str, Any]:
        return vqa_features()

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
        per_dataset: collections.Counter = collections.Counter()
        seen: dict[int, str] = {}
        for key, ex in super()._generate_examples(split):
            qid = int(ex["question_id"])
            if not is_pair_split(split) and qid in seen:
                raise DataError(f"{self.SOURCE}: question_id {qid} appears twice in split {split!r} "
                                f"({seen[qid]} and {ex['image_path']}): evaluation results are keyed by it")
            seen[qid] = ex["image_path"]
            per_dataset[ex["dataset"]] += 1
            yield key, ex
        self.stats[split]["questions"] = dict(per_dataset)

    def download_and_prepare(self, **kwargs: Any) -> None:
        super().download_and_prepare(**kwargs)
        write_json(os.path.join(self.data_dir, ANSWER_LIST_FILE), self.answers)  # type: ignore[arg-type]

    def report_extras(self) -> dict[str, Any]:
        """Added to prepare_report.json."""
        return {"record_unit": "questions",
                "answer_list": {"file": os.path.join(self.data_dir, ANSWER_LIST_FILE), "answers": len(self.answers),
                                "source": self.answer_list_source}}


class _QaFilesBuilder(VqaBuilder, skip_registration=True):
    """Builders over question entries plus image folders (VQA's COCO root, VG's root)."""

    def __init__(self, *, data_dir: str, splits: Mapping[str, list[QaEntry]], image_roots: Mapping[str, str | None],
                 answer_list: str | None, answer_list_size: int, config: tfds.core.BuilderConfig | None = None,
                 verify_images: bool = True) -> None:
        self._entries, self._verify = dict(splits), verify_images
        self._roots: dict[str, str] = {}
        flag = {"vqa": "--image_root", "vg": "--vg_image_root"}
        for dataset in sorted({e.dataset for entries in self._entries.values() for e in entries}):
            root = image_roots.get(dataset)
            if root is None:
                first = next(e for entries in self._entries.values() for e in entries if e.dataset == dataset)
                raise DataError(f"{first.where} is a {dataset!r} question: give its image folder with {flag[dataset]}")
            if not os.path.isdir(root):
                raise DataError(f"{flag[dataset]} {root!r} is not a directory")
            self._roots[dataset] = root
        self._image_ids = self._assign_image_ids()
        if answer_list is not None:
            self.answers, self.answer_list_source = read_answer_list(answer_list), answer_list
        else:
            self.answers = most_frequent_answers(self._entries, answer_list_size)
            self.answer_list_source = f"the {len(self.answers)} most frequent training answers"
            if not self.answers:
                raise DataError(f"{self.SOURCE}: no training split with answers to take the answer list from: "
                                f"give BLIP's answer_list.json with --answer_list")
        super().__init__(data_dir=data_dir, config=config)

    def _assign_image_ids(self) -> dict[tuple[str, str], int]:
        ids: dict[tuple[str, str], int] = {}
        taken: set[int] = set()
        dense = 0
        for split in sorted(self._entries):
            for e in self._entries[split]:
                key = (e.dataset, e.image)
                if key in ids:
                    continue
                m = _TRAILING_NUMBER.search(e.image)
                n = e.image_id if e.image_id is not None else int(m.group(1)) if m else None
                base = VG_IMAGE_ID_OFFSET if e.dataset == "vg" else 0
                if n is not None and 0 <= n < _ID_RANGE and base + n not in taken:
                    ids[key] = base + n
                else:
                    ids[key], dense = OTHER_IMAGE_ID_OFFSET + dense, dense + 1
                taken.add(ids[key])
        return ids

    def _split_names(self) -> Sequence[str]:
        return list(self._entries)

    def _examples(self, split: str) -> Iterator[dict[str, Any]]:
        bad: dict[str, list[Any]] = {}   # path -> [reason, first question's where, questions]
        cached = ("", b"")               # a file's questions are usually consecutive: read it once
        for e in self._entries[split]:
            path = os.path.join(self._roots[e.dataset], e.image)
            if not e.question.strip():
                self.report.add(path, f"empty question ({e.where})", split)
                continue
            if is_pair_split(split) and not e.answers:
                self.report.add(path, f"training question without answers ({e.where})", split)
                continue
            if path in bad:
                bad[path][2] += 1
                continue
            if cached[0] != path:
                try:
                    cached = (path, read_checked(path, self._verify))
                except ImageError as err:
                    bad[path] = [str(err).removeprefix(path + ": "), e.where, 1]
                    continue
            yield {"image": cached[1], "image_id": self._image_ids[(e.dataset, e.image)], "image_path": e.image,
                   "question": e.question, "question_id": e.question_id, "answers": e.answers,
                   "dataset": e.dataset, "question_type": e.question_type, "answer_type": e.answer_type}
        for path, (reason, where, n) in bad.items():
            self.report.add(path, f"{reason} ({n} question{'s' * (n > 1)}, first: {where})", split)


class BlipVqa(_QaFilesBuilder, skip_registration=True):
    """BLIP's VQA annotation files: vqa_train/vqa_val/vg_qa.json (train), vqa_test.json (test)."""

    def __init__(self, *, data_dir: str, name: str, annotations: Sequence[str], image_root: str,
                 vg_image_root: str | None = None, answer_list: str | None = None,
                 answer_list_size: int = ANSWER_LIST_SIZE, verify_images: bool = True) -> None:
        if not _NAME.match(name):
            raise DataError(f"dataset name {name!r}: use letters, digits, '_', '.', '-'")
        self.SOURCE = ", ".join(annotations)
        splits = {split: [e for path in paths for e in parse_blip_vqa_json(path)]
                  for split, paths in split_files(annotations).items()}
        for split, entries in splits.items():
            unnamed = next((e for e in entries if e.question_id < 0), None)
            if unnamed is not None and not is_pair_split(split):
                raise DataError(f"{unnamed.where}: evaluation questions need a 'question_id' (split {split!r})")
        super().__init__(data_dir=data_dir, splits=splits, image_roots={"vqa": image_root, "vg": vg_image_root},
                         answer_list=answer_list, answer_list_size=answer_list_size,
                         config=tfds.core.BuilderConfig(name=name, version=VERSION), verify_images=verify_images)


class BlipVqaV2(_QaFilesBuilder, skip_registration=True):
    """The official VQA v2 files: per split a questions file and (except test) its annotations."""

    def __init__(self, *, data_dir: str, questions: Sequence[str], annotations: Sequence[str], image_root: str,
                 answer_list: str | None = None, answer_list_size: int = ANSWER_LIST_SIZE,
                 verify_images: bool = True) -> None:
        self.SOURCE = ", ".join([*questions, *annotations])
        qfiles, afiles = split_files(questions), split_files(annotations)
        for split, files in {**qfiles, **afiles}.items():
            if len(files) != 1:
                raise DataError(f"split {split!r}: give one questions file and at most one annotations file, "
                                f"got {files}")
        orphan = sorted(set(afiles) - set(qfiles))
        if orphan:
            raise DataError(f"annotations for split(s) {orphan} but no --questions file for them")
        splits = {split: parse_vqa_v2(files[0], afiles.get(split, [None])[0], split) for split, files in qfiles.items()}
        super().__init__(data_dir=data_dir, splits=splits, image_roots={"vqa": image_root}, answer_list=answer_list,
                         answer_list_size=answer_list_size, verify_images=verify_images)


class BlipSyntheticVqa(VqaBuilder, skip_registration=True):
    """Questions about rendered shape scenes with true answers (blip_jax/data/synthetic_vqa.py)."""

    def __init__(self, *, data_dir: str, cfg: synthetic_vqa.SyntheticVqaConfig) -> None:
        self.cfg = cfg
        self.SOURCE = f"synthetic VQA config {cfg}"
        self.answers, self.answer_list_source = synthetic_vqa.answer_list(cfg), "synthetic_vqa.answer_list"
        self.type_counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        super().__init__(data_dir=data_dir, config=tfds.core.BuilderConfig(name=cfg.name, version=VERSION))

    def _features(self) -> dict[str, Any]:
        return {**vqa_features(), "scene": tfds.features.Text()}

    def _split_names(self) -> Sequence[str]:
        return list(synthetic_vqa.SPLIT_CODES)

    def _examples(self, split: str) -> Iterator[dict[str, Any]]:
        for ex in synthetic_vqa.generate(self.cfg, split):
            data, scene = ex.image_bytes(), ex.scene.to_json()
            for q in ex.questions:
                self.type_counts[split][q.question_type] += 1
                yield {"image": data, "image_id": ex.image_id, "image_path": ex.image_path, "question": q.question,
                       "question_id": q.question_id, "answers": list(q.answers), "dataset": "vqa",
                       "question_type": q.question_type, "answer_type": q.answer_type, "scene": scene}

    def report_extras(self) -> dict[str, Any]:
        return {**super().report_extras(),
                "question_types": {split: dict(sorted(c.items())) for split, c in self.type_counts.items()}}
