"""TFDS builders for zero-shot video retrieval and video QA (array_record), ONE RECORD PER VIDEO
holding the video's encoded file bytes, its captions and its questions.

Why the encoded file and not frames: the frame count, the sampling rule and the resolution are
evaluation options (config.data.num_frames / frame_sampling, the model's image size) that must not
need a re-prepare; the pipeline decodes only up to the last sampled frame; and MSRVTT's 1k test
videos are a few GB encoded against ~3.5 MB per video as 8 decoded frames at 384 px (~28 MB as
float32). Why one record per video and not per question: MSRVTT-QA asks ~24 questions per
video, and a copy of the file in every question's record would multiply the dataset ~24-fold;
the pipeline decodes each video once for all its questions.

Features: video (bytes), video_id (text: the dataset's name for it, MSRVTT "video7010", MSVD
"vid1", synthetic "test/000003"; unique within the dataset), video_path (text, relative to the
video root), captions (Sequence(Text), raw: pre_caption is the pipeline's), caption_late_only
(per caption "yes" / "no" where known (synthetic), else ""), questions (raw), question_ids (int64),
answers (every question's annotator answers, concatenated) with answer_counts (how many belong to
each question), question_types, answer_types, question_late_only (as caption_late_only). The
synthetic builder adds event (its EVENT_KINDS entry) and clip (JSON, synthetic_video.Clip).
prepare_report.json gives per split: videos, captions, questions and question_counts (per record,
for the evaluation's sharding).

Sources:
- msrvtt_retrieval: BLIP's msrvtt_test.jsonl (one JSON object per line with "clip_name" and
  "caption"; the 1k-A test split, one caption per video) -> split "test" (or SPLIT=FILE); videos
  at <video_root>/<clip_name>.mp4. The original treats each line as a video; lines naming one
  clip are merged here into one record with all its captions (the same for 1k-A, where none do).
- msrvtt_qa / msvd_qa: the QA files (JSON lists of {"question", "answer", "video_id", "id"?}) as
  SPLIT=FILE; MSRVTT-QA videos at <video_root>/video<video_id>.mp4 (a string video_id names the
  file), MSVD-QA videos at <video_root>/<youtube name>.avi, the name from the youtube mapping
  file ("<youtube name> vid<N>" per line; video_id N or "vidN"). Question ids: "id", else the
  position in the split. question_type: the question's first word when it is one of
  QUESTION_WORDS (what, who, how, when, where: the types prior work reports), else "other".
  Each question's single answer is stored as REFERENCE_COPIES (10) identical annotator answers:
  VQA accuracy (blip_jax.evaluation.vqa_accuracy, the official tool) scores min(1, matches / 3)
  averaged over the 10 leave-one-out subsets, so one reference would score at most 0 (the subset
  without it has no match), while 10 copies make a question unanimous: 1 when the prediction
  equals the answer (whitespace-cleaned; the tool compares unanimous answers unnormalised), else
  0. The score is then plain exact-match accuracy, the metric MSRVTT-QA and MSVD-QA report.
  Answer list (rank inference): --answer_list, else the answer_list_size most frequent answers
  (MSRVTT-QA 1500, MSVD-QA 1000 by default, as prior work) of the training questions: the
  answer_list_from files, else the "train" split (ties alphabetical); written as the dataset's
  answer_list.json, read by vqa_builders.load_answer_list. The report gives, per split, how many
  questions have their answer in the list (the accuracy rank inference can reach).
- synthetic_video: blip_jax/data/synthetic_video.py, splits val and test; every clip has both
  captions and questions, so one dataset serves retrieval and QA; answer list
  synthetic_vqa.answer_list().

A missing or unreadable video (with verify_videos: its container opens, lists frames and the
first one decodes; damage further in is caught, skipped and named by the pipeline) is skipped
with its captions and questions, named in a warning and in the report with how many it had; so
are empty captions and questions and training questions without an answer. A split left with no
record is a DataError, and so is a question id repeated within a split.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from blip_jax.data import synthetic_video, synthetic_vqa
from blip_jax.data.annotations import _json_objects, json_lines, split_of
from blip_jax.data.builders import VERSION, _ImageTextBuilder, is_pair_split
from blip_jax.data.report import DataError, write_json
from blip_jax.data.video import VideoError, probe_video
from blip_jax.data.vqa_builders import ANSWER_LIST_FILE, read_answer_list, split_files
from blip_jax.tokenizer import pre_caption, pre_question

log = logging.getLogger(__name__)
REFERENCE_COPIES = 10  # one answer as 10 unanimous annotators: VQA accuracy = exact match (module doc)
ANSWER_LIST_SIZES = {"msrvtt_qa": 1500, "msvd_qa": 1000}
QUESTION_WORDS = ("what", "who", "how", "when", "where")
_MAPPING_LINE = re.compile(r"^(?P<name>\S+)\s+(?P<vid>vid\d+)$")


def video_features() -> dict[str, Any]:
    text, texts = tfds.features.Text(), tfds.features.Sequence(tfds.features.Text())
    return {"video": tfds.features.Tensor(shape=(), dtype=np.object_),  # the encoded file, as in the source
            "video_id": text, "video_path": text, "captions": texts, "caption_late_only": texts,
            "questions": texts, "question_ids": tfds.features.Sequence(np.int64), "answers": texts,
            "answer_counts": tfds.features.Sequence(np.int64), "question_types": texts, "answer_types": texts,
            "question_late_only": texts}


@dataclasses.dataclass
class VideoQuestion:
    question: str        # raw; pre_question is the pipeline's
    question_id: int
    answer: str          # "" when the source gives none (test questions)
    question_type: str
    where: str           # "file: entry N", for skip reports


@dataclasses.dataclass
class VideoEntry:
    video_id: str
    path: str            # relative to the video root
    where: str           # the first annotation naming the video
    captions: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (caption, where)
    questions: list[VideoQuestion] = dataclasses.field(default_factory=list)


def _top_answers(record: dict[str, Any]) -> list[str]:
    """Each question's most common annotator answer ("" for none): the one VQA accuracy rewards."""
    out, start = [], 0
    for n in record["answer_counts"]:
        answers = record["answers"][start:start + n]
        out.append(collections.Counter(answers).most_common(1)[0][0] if answers else "")
        start += n
    return out


class VideoBuilder(_ImageTextBuilder, skip_registration=True):
    """Shared video generation: features, per-split statistics, question id checks, answer list."""

    answers: list[str] = []  # QA datasets: the answer list written next to the records
    answer_list_source = ""

    def _features(self) -> dict[str, Any]:
        return video_features()

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
        n, captions, counts, in_list = 0, 0, [], 0
        listed, seen = set(self.answers), {}
        for ex in self._examples(split):
            for qid in ex["question_ids"]:
                if qid in seen:
                    raise DataError(f"{self.SOURCE}: question id {qid} appears twice in split {split!r} "
                                    f"({seen[qid]} and {ex['video_path']}): results are keyed by it")
                seen[qid] = ex["video_path"]
            in_list += sum(a in listed for a in _top_answers(ex) if a)
            captions += len(ex["captions"])
            counts.append(len(ex["questions"]))
            yield n, ex
            n += 1
        if n == 0:
            skipped = [s for s in self.report.items if s.split == split]
            detail = "; ".join(f"{s.file}: {s.reason}" for s in skipped[:3])
            raise DataError(f"{self.name} split {split!r} from {self.SOURCE} has no usable video "
                            f"({len(skipped)} skipped{': ' + detail if detail else ''})")
        self.stats[split] = {"records": n, "videos": n, "captions": captions, "questions": sum(counts),
                             "question_counts": counts}
        if self.answers:
            self.stats[split]["answers_in_list"] = in_list

    def download_and_prepare(self, **kwargs: Any) -> None:
        super().download_and_prepare(**kwargs)
        if self.answers:
            write_json(os.path.join(self.data_dir, ANSWER_LIST_FILE), self.answers)  # type: ignore[arg-type]

    def report_extras(self) -> dict[str, Any]:
        """Added to prepare_report.json."""
        out: dict[str, Any] = {"record_unit": "videos"}
        if self.answers:
            out["answer_list"] = {"file": os.path.join(self.data_dir, ANSWER_LIST_FILE), "answers": len(self.answers),
                                  "source": self.answer_list_source}
        return out


def _record(e: VideoEntry, data: bytes, captions: list[str], questions: list[VideoQuestion]) -> dict[str, Any]:
    answers = [[q.answer] * REFERENCE_COPIES if q.answer else [] for q in questions]
    return {"video": data, "video_id": e.video_id, "video_path": e.path, "captions": captions,
            "caption_late_only": [""] * len(captions), "questions": [q.question for q in questions],
            "question_ids": [q.question_id for q in questions], "answers": [a for qa in answers for a in qa],
            "answer_counts": [len(a) for a in answers], "question_types": [q.question_type for q in questions],
            "answer_types": [""] * len(questions), "question_late_only": [""] * len(questions)}


def read_video_file(path: str, verify: bool = True) -> bytes:
    """The file's bytes, after probe_video's check unless verify=False. Raises VideoError."""
    if not os.path.isfile(path):
        raise VideoError(f"{path}: missing video file")
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise VideoError(f"{path}: empty video file")
    if verify:
        probe_video(data, path)
    return data


class _VideoFilesBuilder(VideoBuilder, skip_registration=True):
    """Builders over annotation entries plus a folder of video files."""

    def __init__(self, *, data_dir: str, splits: Mapping[str, list[VideoEntry]], video_root: str,
                 verify_videos: bool = True) -> None:
        if not os.path.isdir(video_root):
            raise DataError(f"--video_root {video_root!r} is not a directory")
        self._entries, self._root, self._verify = dict(splits), video_root, verify_videos
        super().__init__(data_dir=data_dir)

    def _split_names(self) -> Sequence[str]:
        return list(self._entries)

    def _examples(self, split: str) -> Iterator[dict[str, Any]]:
        for e in self._entries[split]:
            path = os.path.join(self._root, e.path)
            captions = []
            for caption, where in e.captions:
                if pre_caption(caption):
                    captions.append(caption)
                else:
                    self.report.add(path, f"empty caption ({where})", split)
            questions = []
            for q in e.questions:
                if not pre_question(q.question):
                    self.report.add(path, f"empty question ({q.where})", split)
                elif is_pair_split(split) and not q.answer:
                    self.report.add(path, f"training question without an answer ({q.where})", split)
                else:
                    questions.append(q)
            if not captions and not questions:
                continue
            try:
                data = read_video_file(path, self._verify)
            except VideoError as err:
                lost = ", ".join(f"{n} {what}{'s' * (n > 1)}" for n, what in
                                 ((len(captions), "caption"), (len(questions), "question")) if n)
                reason = f"{str(err).removeprefix(path + ': ')} ({lost}, first: {e.where})"
                log.warning("%s: %s: skipping it", path, reason)
                self.report.add(path, reason, split)
                continue
            yield _record(e, data, captions, questions)


def parse_msrvtt_jsonl(path: str) -> list[VideoEntry]:
    """BLIP's msrvtt_test.jsonl: {"clip_name", "caption": str | [str], ...} per line; one entry per
    clip, in order of first appearance."""
    entries: dict[str, VideoEntry] = {}
    for where, item in json_lines(path, ("clip_name", "caption"),
                                  "expected one object per line, as BLIP's msrvtt_test.jsonl"):
        name, caption = item["clip_name"], item["caption"]
        if not isinstance(name, str) or not name:
            raise DataError(f"{where}: 'clip_name' must be a non-empty string, got {name!r:.60}")
        captions = [caption] if isinstance(caption, str) else caption
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            raise DataError(f"{where}: 'caption' must be a string or a list of strings, got {caption!r:.80}")
        e = entries.setdefault(name, VideoEntry(name, f"{name}.mp4", where))
        e.captions.extend((c, where) for c in captions)
    return list(entries.values())


def read_youtube_mapping(path: str) -> dict[str, str]:
    """MSVD's youtube_mapping.txt: "<youtube name> vid<N>" per line -> {"vidN": youtube name}."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise DataError(f"--youtube_mapping {path}: file not found") from None
    mapping = {}
    for n, line in enumerate(lines, 1):
        if line.strip():
            m = _MAPPING_LINE.match(line.strip())
            if m is None:
                raise DataError(f"{path}: line {n}: expected '<youtube name> vid<N>', got {line!r:.80}")
            mapping[m["vid"]] = m["name"]
    return mapping


def question_type(question: str) -> str:
    """The question word (QUESTION_WORDS) a video QA question starts with, else "other"."""
    words = pre_question(question).split()
    return words[0] if words and words[0] in QUESTION_WORDS else "other"


def parse_video_qa(path: str, split: str, video_of: Any, first_id: int = 0) -> list[VideoEntry]:
    """A MSRVTT-QA / MSVD-QA questions file -> one entry per video (order of first appearance).
    video_of(video_id, where) -> (video name, path relative to the video root)."""
    entries: dict[str, VideoEntry] = {}
    for i, (where, item) in enumerate(_json_objects(path, ("question", "answer", "video_id"))):
        question, answer, qid = item["question"], item["answer"], item.get("id", first_id + i)
        if not isinstance(question, str):
            raise DataError(f"{where}: 'question' must be a string, got {question!r:.60}")
        if not isinstance(answer, str):
            raise DataError(f"{where}: 'answer' must be a string, got {answer!r:.60}")
        if not isinstance(qid, int) or isinstance(qid, bool):
            raise DataError(f"{where}: 'id' must be an integer, got {qid!r:.40}")
        name, rel = video_of(item["video_id"], where)
        e = entries.setdefault(name, VideoEntry(name, rel, where))
        e.questions.append(VideoQuestion(question, qid, answer.strip(), question_type(question), where))
    return list(entries.values())


def _msrvtt_video(video_id: Any, where: str) -> tuple[str, str]:
    if isinstance(video_id, int) and not isinstance(video_id, bool):
        return f"video{video_id}", f"video{video_id}.mp4"
    if isinstance(video_id, str) and video_id:
        stem, ext = os.path.splitext(video_id)
        return stem, video_id if ext else f"{video_id}.mp4"
    raise DataError(f"{where}: 'video_id' must be an integer or a video name, got {video_id!r:.40}")


class _VideoQaBuilder(_VideoFilesBuilder, skip_registration=True):
    SOURCE_NAME = ""

    def __init__(self, *, data_dir: str, questions: Sequence[str], video_root: str, video_of: Any,
                 answer_list: str | None = None, answer_list_size: int | None = None,
                 answer_list_from: Sequence[str] = (), verify_videos: bool = True) -> None:
        self.SOURCE = ", ".join(questions)
        splits: dict[str, list[VideoEntry]] = {}
        for split, paths in split_files(questions).items():
            for path in paths:  # several files of one split: ids by position continue across them
                first = sum(len(e.questions) for e in splits.get(split, []))
                splits.setdefault(split, []).extend(parse_video_qa(path, split, video_of, first))
        size = answer_list_size or ANSWER_LIST_SIZES[self.SOURCE_NAME]
        if answer_list is not None:
            self.answers, self.answer_list_source = read_answer_list(answer_list), answer_list
        else:
            sources = ([e for path in answer_list_from for e in parse_video_qa(path, "train", video_of)]
                       if answer_list_from else [e for split, es in splits.items() if is_pair_split(split) for e in es])
            train = [q for e in sources for q in e.questions]
            counts = collections.Counter(q.answer for q in train if q.answer)
            self.answers = [a for a, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]]
            self.answer_list_source = (f"the {len(self.answers)} most frequent answers of "
                                       f"{', '.join(answer_list_from) or 'the train split'}")
            if not self.answers:
                raise DataError(f"{self.SOURCE}: no training questions to take the answer list from: give the "
                                f"train split (train=FILE), --answer_list_from TRAIN_FILE, or --answer_list")
        super().__init__(data_dir=data_dir, splits=splits, video_root=video_root, verify_videos=verify_videos)


class BlipMsrvttRetrieval(_VideoFilesBuilder, skip_registration=True):
    """MSRVTT text-to-video retrieval from BLIP's msrvtt_test.jsonl (the 1k-A test split)."""

    def __init__(self, *, data_dir: str, annotations: Sequence[str], video_root: str,
                 verify_videos: bool = True) -> None:
        self.SOURCE = ", ".join(annotations)
        splits: dict[str, list[VideoEntry]] = {}
        for spec in annotations:
            split, path = split_of(spec)
            split = "test" if path == spec else split  # a bare file is the test split
            splits.setdefault(split, []).extend(parse_msrvtt_jsonl(path))
        super().__init__(data_dir=data_dir, splits=splits, video_root=video_root, verify_videos=verify_videos)


class BlipMsrvttQa(_VideoQaBuilder, skip_registration=True):
    """MSRVTT-QA: questions about MSRVTT videos, one answer each (answer list: 1500 by default)."""

    SOURCE_NAME = "msrvtt_qa"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(video_of=_msrvtt_video, **kwargs)


class BlipMsvdQa(_VideoQaBuilder, skip_registration=True):
    """MSVD-QA: questions about MSVD (YouTube) clips, one answer each (answer list: 1000 by default)."""

    SOURCE_NAME = "msvd_qa"

    def __init__(self, *, youtube_mapping: str, **kwargs: Any) -> None:
        mapping = read_youtube_mapping(youtube_mapping)

        def video_of(video_id: Any, where: str) -> tuple[str, str]:
            vid = f"vid{video_id}" if isinstance(video_id, int) and not isinstance(video_id, bool) else video_id
            if not isinstance(vid, str) or vid not in mapping:
                raise DataError(f"{where}: video_id {video_id!r:.40} is not in --youtube_mapping {youtube_mapping} "
                                f"(MSVD's youtube_mapping.txt: '<youtube name> vid<N>' per line)")
            return vid, f"{mapping[vid]}.avi"

        super().__init__(video_of=video_of, **kwargs)


class BlipSyntheticVideo(VideoBuilder, skip_registration=True):
    """Clips of rendered shape scenes in which a shape moves, appears or changes colour, with true
    captions and questions (blip_jax/data/synthetic_video.py)."""

    def __init__(self, *, data_dir: str, cfg: synthetic_video.SyntheticVideoConfig) -> None:
        self.cfg = cfg
        self.SOURCE = f"synthetic video config {cfg}"
        self.answers, self.answer_list_source = synthetic_vqa.answer_list(), "synthetic_vqa.answer_list"
        self.counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        super().__init__(data_dir=data_dir, config=tfds.core.BuilderConfig(name=cfg.name, version=VERSION))

    def _features(self) -> dict[str, Any]:
        return {**video_features(), "event": tfds.features.Text(), "clip": tfds.features.Text()}

    def _split_names(self) -> Sequence[str]:
        return list(synthetic_video.SPLIT_CODES)

    def _examples(self, split: str) -> Iterator[dict[str, Any]]:
        yes_no = {True: "yes", False: "no"}
        for ex in synthetic_video.generate(self.cfg, split):
            qs = ex.questions
            c = self.counts[split]
            c[f"event {ex.clip.event}"] += 1
            c["late_only questions"] += sum(q.late_only for q in qs)
            c["late_only captions"] += sum(ex.caption_late_only)
            yield {"video": ex.video_bytes(), "video_id": ex.video_id, "video_path": ex.video_path,
                   "captions": ex.captions, "caption_late_only": [yes_no[x] for x in ex.caption_late_only],
                   "questions": [q.question for q in qs], "question_ids": [q.question_id for q in qs],
                   "answers": [a for q in qs for a in q.answers], "answer_counts": [len(q.answers) for q in qs],
                   "question_types": [q.question_type for q in qs], "answer_types": [q.answer_type for q in qs],
                   "question_late_only": [yes_no[q.late_only] for q in qs], "event": ex.clip.event,
                   "clip": ex.clip.to_json()}

    def report_extras(self) -> dict[str, Any]:
        return {**super().report_extras(), "clip_counts": {split: dict(sorted(c.items()))
                                                           for split, c in self.counts.items()}}
