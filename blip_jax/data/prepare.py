"""Writes a TFDS (array_record) dataset from annotations + images, or the synthetic data.

    python -m blip_jax.data.prepare --source json --data_dir DIR --annotations FILE [val=FILE ...] --image_root DIR
    python -m blip_jax.data.prepare --source coco_karpathy --data_dir DIR --annotations dataset_coco.json --image_root DIR
    python -m blip_jax.data.prepare --source synthetic --data_dir DIR --num_images 10000 --noise_rate 0.4 --seed 0

webdataset tar shards as img2dataset writes them (CC3M, CC12M, LAION; KEY.jpg + KEY.txt + KEY.json
per sample) -> blip_webdataset/NAME (default NAME: the shards' folder), one train split:

    python -m blip_jax.data.prepare --source webdataset --data_dir DIR --shards 'CC3M/{00000..00331}.tar' [--name cc3m]

or on Apache Beam, one shard per work item (the same dataset, record for record):

    python -m blip_jax.data.prepare --source webdataset --data_dir DIR --shards 'CC3M/{00000..00331}.tar' \
        --beam_runner DirectRunner --beam_pipeline_options direct_num_workers=8,direct_running_mode=multi_processing

VQA (one record per question, and the answer list in the dataset's answer_list.json):

    python -m blip_jax.data.prepare --source blip_vqa --data_dir DIR \
        --annotations train=vqa_train.json,vqa_val.json,vg_qa.json test=vqa_test.json \
        --image_root COCO --vg_image_root VG [--answer_list answer_list.json]
    python -m blip_jax.data.prepare --source vqa_v2 --data_dir DIR --image_root COCO \
        --questions train=v2_OpenEnded_mscoco_train2014_questions.json val=... test=... \
        --annotations train=v2_mscoco_train2014_annotations.json val=... [--answer_list FILE]
    python -m blip_jax.data.prepare --source synthetic_vqa --data_dir DIR --num_images 2000 --seed 0

NLVR2 (one record per image pair and sentence):

    python -m blip_jax.data.prepare --source blip_nlvr --data_dir DIR \
        --annotations train=nlvr_train.json val=nlvr_dev.json test=nlvr_test.json --image_root NLVR2
    python -m blip_jax.data.prepare --source nlvr2 --data_dir DIR \
        --annotations train=train.json val=dev.json test=test1.json --image_root NLVR2
    python -m blip_jax.data.prepare --source synthetic_nlvr --data_dir DIR --num_images 2000 --seed 0

Video (one record per video with its encoded file, captions and questions; zero-shot video
retrieval and video QA):

    python -m blip_jax.data.prepare --source msrvtt_retrieval --data_dir DIR \
        --annotations msrvtt_test.jsonl --video_root MSRVTT/videos
    python -m blip_jax.data.prepare --source msrvtt_qa --data_dir DIR --video_root MSRVTT/videos \
        --questions test=test_qa.json [train=train_qa.json | --answer_list_from train_qa.json]
    python -m blip_jax.data.prepare --source msvd_qa --data_dir DIR --video_root MSVD/YouTubeClips \
        --youtube_mapping youtube_mapping.txt --questions test=test_qa.json --answer_list_from train_qa.json
    python -m blip_jax.data.prepare --source synthetic_video --data_dir DIR --clips 100 --seed 0

Prints what it wrote and what it skipped; the same goes to prepare_report.json in the dataset's
folder, which the input pipeline also reads (split sizes, image id ranges).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import io
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from blip_jax import cli
from blip_jax.data import (builders, nlvr_builders, synthetic, synthetic_nlvr, synthetic_video, synthetic_vqa,
                           video_builders, vqa_builders, webdataset)
from blip_jax.data.annotations import split_of
from blip_jax.data.report import DataError, write_json

REPORT_FILE = "prepare_report.json"
SOURCES = ("json", "coco_karpathy", "flickr_karpathy", "synthetic", "blip_vqa", "vqa_v2", "synthetic_vqa",
           "blip_nlvr", "nlvr2", "synthetic_nlvr", "msrvtt_retrieval", "msrvtt_qa", "msvd_qa", "synthetic_video",
           "webdataset")


def dataset_dir(data_dir: str, dataset_name: str) -> str:
    """data_dir/name[/config]/<newest version>, where TFDS put the dataset."""
    found = glob.glob(os.path.join(data_dir, dataset_name, "*", "dataset_info.json"))
    versions = sorted((tuple(int(v) for v in os.path.basename(os.path.dirname(p)).split(".")), p) for p in found
                      if re.fullmatch(r"\d+\.\d+\.\d+", os.path.basename(os.path.dirname(p))))
    if not versions:
        raise DataError(f"no dataset {dataset_name!r} in {data_dir!r}: write it first with "
                        f"`python -m blip_jax.data.prepare --data_dir {data_dir} ...`")
    return os.path.dirname(versions[-1][1])


def load_report(data_dir: str, dataset_name: str) -> dict[str, Any]:
    path = os.path.join(dataset_dir(data_dir, dataset_name), REPORT_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path} missing: {dataset_name!r} was not written by blip_jax.data.prepare "
                        f"(or an old version); rewrite it with --overwrite") from None


def _full_name(builder: builders._ImageTextBuilder) -> str:
    return f"{builder.name}/{builder.builder_config.name}" if builder.builder_config else builder.name


def beam_download_config(runner: str | None = None, pipeline_options: str | None = None) -> Any:
    """The tfds.download.DownloadConfig of a Beam build, or None (no runner, no options: build in
    this process). pipeline_options: "key=value,key=value,flag" as TFDS's build CLI takes them
    (Beam's --key=value flags without the dashes), e.g. "direct_num_workers=2,direct_running_mode=
    multi_processing" or "runner=DataflowRunner,project=P,region=R,temp_location=gs://B/tmp".
    DataError without apache_beam, for an unknown runner, a malformed or unknown option, or a
    value Beam rejects."""
    if runner is None and pipeline_options is None:
        return None
    try:
        from apache_beam.options.pipeline_options import PipelineOptions
        from apache_beam.runners.runner import create_runner
    except ImportError as e:
        raise DataError(f"--beam_runner / --beam_pipeline_options need Apache Beam, which does not import "
                        f"({e}): pip install apache-beam==2.77.0") from None
    def check_runner(name: str, flag: str) -> None:
        try:
            create_runner(name)
        except ValueError as e:
            raise DataError(f"{flag} {name!r}: {e}") from None

    if runner is not None:
        check_runner(runner, "--beam_runner")
    options = None
    if pipeline_options is not None:
        items = [o.strip() for o in pipeline_options.split(",")]
        bad = [o for o in items if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(=.*)?", o)]
        if bad:
            raise DataError(f"--beam_pipeline_options {pipeline_options!r}: {', '.join(map(repr, bad))} is not "
                            f"key=value (give comma-separated key=value pairs or flags, no dashes, e.g. "
                            f"'direct_num_workers=2,direct_running_mode=multi_processing')")
        options = PipelineOptions(flags=[f"--{o}" for o in items])
        errors = io.StringIO()
        try:  # Beam parses the flags lazily: parse them now, so a bad value fails here, not mid-build
            with contextlib.redirect_stderr(errors):
                given = options.get_all_options(retain_unknown_options=True)
        except SystemExit:
            message = (errors.getvalue().strip().splitlines() or ["rejected"])[-1].split(" error: ", 1)[-1]
            raise DataError(f"--beam_pipeline_options {pipeline_options!r}: {message}") from None
        unknown = sorted(set(given) - set(PipelineOptions([]).get_all_options()))
        if unknown:
            raise DataError(f"--beam_pipeline_options {pipeline_options!r}: unknown Beam option(s) "
                            f"{', '.join(unknown)}")
        if runner is None and isinstance(given.get("runner"), str):
            check_runner(given["runner"], "--beam_pipeline_options runner")
    import tensorflow_datasets as tfds
    return tfds.download.DownloadConfig(beam_runner=runner, beam_options=options)


def build(builder: builders._ImageTextBuilder, *, overwrite: bool = False, download_config: Any = None
          ) -> dict[str, Any]:
    """Generates the dataset (unless already there) and writes/returns its report.

    download_config: a tfds.download.DownloadConfig (`beam_download_config`: build on Beam; only
    the webdataset builder supports that), or None."""
    if download_config is not None and (download_config.beam_runner is not None
                                        or download_config.beam_options is not None):
        if not isinstance(builder, builders.BlipWebdataset):
            raise DataError(f"{_full_name(builder)}: only --source webdataset builds on Apache Beam; build this "
                            f"one without --beam_runner / --beam_pipeline_options")
    out = builder.data_dir
    if os.path.exists(out) and (overwrite or not os.path.exists(os.path.join(out, REPORT_FILE))):
        shutil.rmtree(out)  # no report: a build that stopped before the end, or not ours
    if os.path.exists(os.path.join(out, REPORT_FILE)):
        with open(os.path.join(out, REPORT_FILE), encoding="utf-8") as f:
            return {**json.load(f), "reused": True}
    with tempfile.TemporaryDirectory() as downloads:  # TFDS wants one; nothing is downloaded
        builder.download_and_prepare(download_dir=downloads, download_config=download_config)
    report = {"dataset": _full_name(builder), "path": out, "source": builder.SOURCE,
              "splits": builder.stats, "skip_counts": builder.report.counts(), "skipped": builder.report.to_list()}
    if isinstance(builder, builders.BlipSynthetic):
        report["noise_counts"] = builder.noise_counts
    if isinstance(builder, (vqa_builders.VqaBuilder, nlvr_builders.NlvrBuilder, video_builders.VideoBuilder,
                            builders.BlipWebdataset)):
        report.update(builder.report_extras())
    write_json(os.path.join(out, REPORT_FILE), report)
    return report


def make_builder(source: str, data_dir: str, *, annotations: Sequence[str] = (), image_root: str | None = None,
                 name: str | None = None, verify_images: bool = True, questions: Sequence[str] = (),
                 vg_image_root: str | None = None, answer_list: str | None = None,
                 answer_list_size: int | None = None, video_root: str | None = None,
                 youtube_mapping: str | None = None, answer_list_from: Sequence[str] = (),
                 shards: str | Sequence[str] = (), **synthetic_kwargs: Any) -> builders._ImageTextBuilder:
    """synthetic_kwargs: SyntheticConfig fields (source synthetic), SyntheticVqaConfig fields
    (synthetic_vqa), SyntheticNlvrConfig fields (synthetic_nlvr) or SyntheticVideoConfig fields
    (synthetic_video); questions, vg_image_root, answer_list(_size): the VQA sources; video_root,
    youtube_mapping (msvd_qa), answer_list_from and questions / answer_list(_size): the video
    sources (answer_list_size None: the source's default); shards: the webdataset source's shard
    spec(s), e.g. 'DIR/{00000..00099}.tar'."""
    if source == "webdataset":
        if not shards:
            raise DataError("--source webdataset needs --shards, e.g. 'DIR/{00000..00099}.tar' (img2dataset's "
                            "output folder; quote it so the shell leaves the braces alone)")
        folder = os.path.dirname(os.path.abspath(webdataset.expand_shards(shards)[0]))
        return builders.BlipWebdataset(data_dir=data_dir, name=name or os.path.basename(folder), shards=shards,
                                       verify_images=verify_images)
    if source == "synthetic_video":
        return video_builders.BlipSyntheticVideo(
            data_dir=data_dir, cfg=synthetic_video.SyntheticVideoConfig(**synthetic_kwargs))
    if source == "msrvtt_retrieval":
        if not annotations or video_root is None:
            raise DataError("--source msrvtt_retrieval needs --annotations (BLIP's msrvtt_test.jsonl) and "
                            "--video_root (the folder of MSRVTT's <clip_name>.mp4 files)")
        return video_builders.BlipMsrvttRetrieval(data_dir=data_dir, annotations=annotations, video_root=video_root,
                                                  verify_videos=verify_images)
    if source in ("msrvtt_qa", "msvd_qa"):
        if not questions or video_root is None or (source == "msvd_qa" and youtube_mapping is None):
            raise DataError(f"--source {source} needs --questions (SPLIT=FILE ...), --video_root (the folder of "
                            f"the videos){' and --youtube_mapping (youtube_mapping.txt)' * (source == 'msvd_qa')}")
        qa = dict(data_dir=data_dir, questions=questions, video_root=video_root, answer_list=answer_list,
                  answer_list_size=answer_list_size, answer_list_from=answer_list_from, verify_videos=verify_images)
        if source == "msrvtt_qa":
            return video_builders.BlipMsrvttQa(**qa)
        return video_builders.BlipMsvdQa(youtube_mapping=youtube_mapping, **qa)
    answer_list_size = answer_list_size or vqa_builders.ANSWER_LIST_SIZE
    if source == "synthetic_nlvr":
        cfg_nlvr = synthetic_nlvr.SyntheticNlvrConfig(**synthetic_kwargs)
        return nlvr_builders.BlipSyntheticNlvr(data_dir=data_dir, cfg=cfg_nlvr)
    if source in ("blip_nlvr", "nlvr2"):
        if not annotations or image_root is None:
            raise DataError(f"--source {source} needs --annotations (SPLIT=FILE ...) and --image_root (the NLVR2 "
                            f"image folder)")
        if source == "nlvr2":
            return nlvr_builders.BlipNlvr2(data_dir=data_dir, annotations=annotations, image_root=image_root,
                                           verify_images=verify_images)
        first = nlvr_builders.split_files(annotations[:1])
        stem = os.path.splitext(os.path.basename(next(iter(first.values()))[0]))[0]
        return nlvr_builders.BlipNlvr(data_dir=data_dir, name=name or stem, annotations=annotations,
                                      image_root=image_root, verify_images=verify_images)
    if source == "synthetic_vqa":
        cfg = synthetic_vqa.SyntheticVqaConfig(**synthetic_kwargs)
        return vqa_builders.BlipSyntheticVqa(data_dir=data_dir, cfg=cfg)
    if source == "vqa_v2":
        if not questions or image_root is None:
            raise DataError("--source vqa_v2 needs --questions (SPLIT=FILE ...) and --image_root (the COCO folder "
                            "holding train2014/, val2014/, test2015/)")
        return vqa_builders.BlipVqaV2(data_dir=data_dir, questions=questions, annotations=annotations,
                                      image_root=image_root, answer_list=answer_list,
                                      answer_list_size=answer_list_size, verify_images=verify_images)
    if source == "blip_vqa":
        if not annotations or image_root is None:
            raise DataError("--source blip_vqa needs --annotations (SPLIT=FILE[,FILE...] ...) and --image_root "
                            "(the COCO folder; VG questions also need --vg_image_root)")
        first = vqa_builders.split_files(annotations[:1])
        stem = os.path.splitext(os.path.basename(next(iter(first.values()))[0]))[0]
        return vqa_builders.BlipVqa(data_dir=data_dir, name=name or stem, annotations=annotations,
                                    image_root=image_root, vg_image_root=vg_image_root, answer_list=answer_list,
                                    answer_list_size=answer_list_size, verify_images=verify_images)
    if source == "synthetic":
        return builders.BlipSynthetic(data_dir=data_dir, cfg=synthetic.SyntheticConfig(**synthetic_kwargs))
    if source not in SOURCES:
        raise DataError(f"unknown source {source!r}; expected one of {SOURCES}")
    if not annotations or image_root is None:
        raise DataError(f"--source {source} needs --annotations and --image_root")
    if source == "json":
        stem = os.path.splitext(os.path.basename(split_of(annotations[0])[1]))[0]
        return builders.BlipPairs(data_dir=data_dir, name=name or stem, annotations=annotations,
                                  image_root=image_root, verify_images=verify_images)
    if len(annotations) != 1:
        raise DataError(f"--source {source} takes one Karpathy split file, got {len(annotations)}")
    cls = builders.BlipCocoKarpathy if source == "coco_karpathy" else builders.BlipFlickrKarpathy
    return cls(data_dir=data_dir, annotations=annotations[0], image_root=image_root, verify_images=verify_images)


def synthetic_kwargs(config: Any, prefix: str = "synthetic_") -> dict[str, Any]:
    """SyntheticConfig arguments from a config's `<prefix><field>` keys (num_images, noise_rate,
    nondescript_rate, seed, clean_images, eval_images; 0 sizes = the default fractions)."""
    out = {}
    for field in ("num_images", "noise_rate", "nondescript_rate", "seed", "clean_images", "eval_images"):
        if prefix + field in config:
            value = config[prefix + field]
            out[field] = None if field.endswith("_images") and field != "num_images" and not value else value
    return out


def synthetic_dataset_name(**kwargs: Any) -> str:
    """The name ensure_synthetic(data_dir, **kwargs) returns, without writing anything."""
    return f"blip_synthetic/{synthetic.SyntheticConfig(**kwargs).name}"


def ensure_synthetic(data_dir: str, **kwargs: Any) -> str:
    """Writes the synthetic dataset for these SyntheticConfig kwargs unless it is already in
    data_dir; returns its name for `tfds.data_source(name, data_dir=data_dir)` and the loaders.

    With several processes sharing one data_dir, call it in one of them first (then sync):
    concurrent writers of the same dataset race."""
    builder = make_builder("synthetic", data_dir, **kwargs)
    if not os.path.exists(os.path.join(builder.data_dir, REPORT_FILE)):
        logging.getLogger(__name__).info("writing synthetic data to %s", builder.data_dir)
    return build(builder)["dataset"]


def synthetic_vqa_dataset_name(**kwargs: Any) -> str:
    """The name ensure_synthetic_vqa(data_dir, **kwargs) returns, without writing anything."""
    return f"blip_synthetic_vqa/{synthetic_vqa.SyntheticVqaConfig(**kwargs).name}"


def ensure_synthetic_vqa(data_dir: str, **kwargs: Any) -> str:
    """ensure_synthetic for the synthetic VQA task (SyntheticVqaConfig kwargs): writes it unless
    it is already in data_dir, returns its name. One writer per data_dir, as ensure_synthetic."""
    builder = make_builder("synthetic_vqa", data_dir, **kwargs)
    if not os.path.exists(os.path.join(builder.data_dir, REPORT_FILE)):
        logging.getLogger(__name__).info("writing synthetic VQA data to %s", builder.data_dir)
    return build(builder)["dataset"]


def synthetic_nlvr_dataset_name(**kwargs: Any) -> str:
    """The name ensure_synthetic_nlvr(data_dir, **kwargs) returns, without writing anything."""
    return f"blip_synthetic_nlvr/{synthetic_nlvr.SyntheticNlvrConfig(**kwargs).name}"


def ensure_synthetic_nlvr(data_dir: str, **kwargs: Any) -> str:
    """ensure_synthetic for the synthetic two-image task (SyntheticNlvrConfig kwargs): writes it
    unless it is already in data_dir, returns its name. One writer per data_dir, as ensure_synthetic."""
    builder = make_builder("synthetic_nlvr", data_dir, **kwargs)
    if not os.path.exists(os.path.join(builder.data_dir, REPORT_FILE)):
        logging.getLogger(__name__).info("writing synthetic NLVR data to %s", builder.data_dir)
    return build(builder)["dataset"]


def synthetic_video_dataset_name(**kwargs: Any) -> str:
    """The name ensure_synthetic_video(data_dir, **kwargs) returns, without writing anything."""
    return f"blip_synthetic_video/{synthetic_video.SyntheticVideoConfig(**kwargs).name}"


def ensure_synthetic_video(data_dir: str, **kwargs: Any) -> str:
    """ensure_synthetic for the synthetic video set (SyntheticVideoConfig kwargs; one dataset for
    video retrieval and video QA): writes it unless it is already in data_dir, returns its name.
    One writer per data_dir, as ensure_synthetic."""
    builder = make_builder("synthetic_video", data_dir, **kwargs)
    if not os.path.exists(os.path.join(builder.data_dir, REPORT_FILE)):
        logging.getLogger(__name__).info("writing synthetic video data to %s", builder.data_dir)
    return build(builder)["dataset"]


def summary(report: dict[str, Any]) -> str:
    verb = "already prepared (use --overwrite to rebuild)" if report.get("reused") else "wrote"
    lines = [f"{verb} {report['dataset']} at {report['path']}"]
    unit = report.get("record_unit", "records")
    for split, s in report["splits"].items():
        if "videos" in s:  # video datasets: one record per video
            lines.append(f"  {split}: {s['videos']} videos, {s['captions']} captions, {s['questions']} questions"
                         + (f" ({s['answers_in_list']} with their answer in the answer list)"
                            if "answers_in_list" in s and s["questions"] else ""))
            continue
        per_dataset = "".join(f", {n} {d}" for d, n in s.get("questions", {}).items() if len(s["questions"]) > 1)
        lines.append(f"  {split}: {s['records']} {unit}, {s['images']} images{per_dataset}")
    if "noise_counts" in report:
        lines.append(f"  train_web text kinds: {report['noise_counts']}")
    if "index_checked_shards" in report:
        lines.append(f"  from {report['shards']} shards, {report['index_checked_shards']} of them checked against "
                     f"their parquet index")
    for split, types in report.get("question_types", {}).items():
        lines.append(f"  {split} question types: " + ", ".join(f"{n} {t}" for t, n in types.items()))
    for split, counts in report.get("clip_counts", {}).items():
        lines.append(f"  {split}: " + ", ".join(f"{n} {what}" for what, n in counts.items()))
    for split, labels in report.get("labels", {}).items():
        lines.append(f"  {split} labels: {labels['true']} true, {labels['false']} false")
    for split, templates in report.get("templates", {}).items():
        lines.append(f"  {split} templates: " + ", ".join(
            f"{t} {c.get('true', 0)}/{c.get('false', 0)}" for t, c in templates.items()) + " (true/false)")
    if "answer_list" in report:
        a = report["answer_list"]
        lines.append(f"  answer list: {a['answers']} answers ({a['source']}) in {a['file']}")
    skipped = report["skipped"]
    if skipped:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(report["skip_counts"].items()))
        lines.append(f"skipped {len(skipped)} item(s): {kinds}")
        lines += [f"  [{s['split']}] {s['file']}: {s['reason']}" for s in skipped[:50]]
        if len(skipped) > 50:
            lines.append(f"  ... {len(skipped) - 50} more in {os.path.join(report['path'], REPORT_FILE)}")
    else:
        lines.append("skipped nothing")
    return "\n".join(lines)


@cli.entry_point
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m blip_jax.data.prepare", description=__doc__.split("\n")[0])
    p.add_argument("--source", required=True, choices=SOURCES)
    p.add_argument("--data_dir", required=True, help="TFDS data dir to write into")
    p.add_argument("--annotations", nargs="+", default=[],
                   help="json: BLIP-format files, each optionally SPLIT=FILE (default split: train); "
                        "karpathy: dataset_coco.json / dataset_flickr30k.json; blip_vqa: SPLIT=FILE[,FILE...] "
                        "(vqa_train.json, vg_qa.json, vqa_test.json, ...); vqa_v2: SPLIT=FILE of the "
                        "official annotations (none for test); blip_nlvr: SPLIT=FILE of BLIP's nlvr_*.json "
                        "(train=nlvr_train.json val=nlvr_dev.json test=nlvr_test.json); nlvr2: SPLIT=FILE of "
                        "the official json-lines files (train=train.json val=dev.json test=test1.json); "
                        "msrvtt_retrieval: BLIP's msrvtt_test.jsonl (split test, or SPLIT=FILE)")
    p.add_argument("--shards", nargs="+", default=[],
                   help="webdataset: the tar shards, e.g. 'DIR/{00000..00099}.tar' (quoted), a glob, or several "
                        "(also joined by ',')")
    p.add_argument("--video_root", help="msrvtt_retrieval, msrvtt_qa: the folder of MSRVTT's .mp4 files; msvd_qa: "
                                        "the folder of MSVD's .avi files (YouTubeClips)")
    p.add_argument("--youtube_mapping", help="msvd_qa: MSVD's youtube_mapping.txt ('<youtube name> vid<N>' "
                                             "per line)")
    p.add_argument("--answer_list_from", nargs="+", default=[],
                   help="msrvtt_qa / msvd_qa: training questions files whose most frequent answers make the "
                        "answer list, without writing their videos (default: the train split of --questions)")
    p.add_argument("--image_root", help="folder the annotation image paths are relative to "
                                        "(VQA: the COCO folder; nlvr2: the folder holding train/<directory>/, "
                                        "dev/, test1/)")
    p.add_argument("--vg_image_root", help="blip_vqa: folder the image paths of 'dataset': 'vg' questions "
                                           "are relative to")
    p.add_argument("--questions", nargs="+", default=[],
                   help="vqa_v2: SPLIT=FILE of the official questions files (train, val, test, ...); msrvtt_qa / "
                        "msvd_qa: SPLIT=FILE of the QA files (test=test_qa.json, ...)")
    p.add_argument("--answer_list", help="blip_vqa / vqa_v2 / msrvtt_qa / msvd_qa: the candidate answers (a JSON "
                                         "list, BLIP's answer_list.json); default: the most frequent training answers")
    p.add_argument("--answer_list_size", type=int, default=None,
                   help="without --answer_list: how many of the most frequent answers (default: blip_vqa / "
                        f"vqa_v2 {vqa_builders.ANSWER_LIST_SIZE}, msrvtt_qa "
                        f"{video_builders.ANSWER_LIST_SIZES['msrvtt_qa']}, msvd_qa "
                        f"{video_builders.ANSWER_LIST_SIZES['msvd_qa']})")
    p.add_argument("--questions_per_image", type=int, default=3, help="synthetic_vqa: questions per image")
    p.add_argument("--statements_per_pair", type=int, default=2,
                   help="synthetic_nlvr: statements per image pair (half of them true)")
    p.add_argument("--templates", default=",".join(synthetic_nlvr.TEMPLATES),
                   help="synthetic_nlvr: the statement templates, a comma-separated subset of the default")
    p.add_argument("--descriptions", default=",".join(synthetic_nlvr.DESC_TYPES),
                   help="synthetic_nlvr: how statements name a shape, a comma-separated subset of "
                        f"{','.join(synthetic_nlvr.DESC_TYPES)} (colour, kind, both, size and kind)")
    p.add_argument("--clips", type=int, default=100, help="synthetic_video: val and test clips each")
    p.add_argument("--frames_per_clip", type=int, default=16, help="synthetic_video: frames per clip (8 fps)")
    p.add_argument("--captions_per_clip", type=int, default=1, help="synthetic_video: captions per clip")
    p.add_argument("--questions_per_clip", type=int, default=3, help="synthetic_video: questions per clip")
    p.add_argument("--name", help="json, blip_vqa, blip_nlvr: dataset config name (default: the first "
                                  "annotation file's stem); webdataset: dataset name (default: the first shard's folder)")
    p.add_argument("--num_images", type=int, default=None,
                   help="synthetic: train_web images (default 10000); synthetic_vqa: train images (default "
                        "2000); synthetic_nlvr: train image pairs (default 2000)")
    p.add_argument("--noise_rate", type=float, default=0.4,
                   help="synthetic: fraction of train_web texts not true of their image")
    p.add_argument("--nondescript_rate", type=float, default=0.0,
                   help="synthetic: fraction of train_web texts true but nondescript")
    p.add_argument("--clean_images", type=int, default=None,
                   help="synthetic: train_clean images (default num_images // 5)")
    p.add_argument("--eval_images", type=int, default=None,
                   help="synthetic, synthetic_vqa: val and test images each; synthetic_nlvr: val and test "
                        "pairs each (default num_images // 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image_size", type=int, default=96,
                   help="synthetic, synthetic_vqa, synthetic_nlvr, synthetic_video: rendered side in pixels")
    p.add_argument("--overwrite", action="store_true", help="rebuild a dataset that already exists")
    p.add_argument("--beam_runner", default=None,
                   help="webdataset: build on Apache Beam with this runner (DirectRunner, DataflowRunner, "
                        "SparkRunner, FlinkRunner, ...), one shard per work item; default: in this process")
    p.add_argument("--beam_pipeline_options", default=None,
                   help="webdataset: Beam pipeline options, comma-separated key=value without dashes, e.g. "
                        "'direct_num_workers=4,direct_running_mode=multi_processing' or 'runner=DataflowRunner,"
                        "project=P,region=R,temp_location=gs://B/tmp,setup_file=./setup.py' (alone: a Beam build "
                        "too, runner from the options)")
    p.add_argument("--no_verify_images", action="store_true",
                   help="skip the decode check of every image or video (faster; the pipeline still skips bad "
                        "ones)")
    args = p.parse_args(argv)
    kwargs: dict[str, Any] = {}
    if args.source == "synthetic":
        kwargs = dict(num_images=10000 if args.num_images is None else args.num_images,
                      noise_rate=args.noise_rate, seed=args.seed,
                      image_size=args.image_size, nondescript_rate=args.nondescript_rate,
                      clean_images=args.clean_images, eval_images=args.eval_images)
    if args.source == "synthetic_vqa":
        kwargs = dict(num_images=2000 if args.num_images is None else args.num_images,
                      eval_images=args.eval_images, seed=args.seed,
                      questions_per_image=args.questions_per_image, image_size=args.image_size)
    if args.source == "synthetic_nlvr":
        kwargs = dict(num_images=2000 if args.num_images is None else args.num_images,
                      eval_images=args.eval_images, seed=args.seed,
                      statements_per_pair=args.statements_per_pair, image_size=args.image_size,
                      templates=tuple(t.strip() for t in args.templates.split(",")),
                      descriptions=tuple(d.strip() for d in args.descriptions.split(",")))
    if args.source == "synthetic_video":
        kwargs = dict(clips=args.clips, frames=args.frames_per_clip, captions_per_clip=args.captions_per_clip,
                      questions_per_clip=args.questions_per_clip, image_size=args.image_size, seed=args.seed)
    cli.check_output_dir(args.data_dir, "--data_dir")
    if (args.beam_runner or args.beam_pipeline_options) and args.source != "webdataset":
        raise DataError(f"--source {args.source}: only --source webdataset builds on Apache Beam "
                        f"(--beam_runner / --beam_pipeline_options)")
    download_config = beam_download_config(args.beam_runner, args.beam_pipeline_options)
    builder = make_builder(args.source, args.data_dir, annotations=args.annotations,
                           image_root=args.image_root, name=args.name,
                           verify_images=not args.no_verify_images, questions=args.questions,
                           vg_image_root=args.vg_image_root, answer_list=args.answer_list,
                           answer_list_size=args.answer_list_size, video_root=args.video_root,
                           youtube_mapping=args.youtube_mapping, answer_list_from=args.answer_list_from,
                           shards=args.shards, **kwargs)
    report = build(builder, overwrite=args.overwrite, download_config=download_config)  # DataError: one line
    print(summary(report))
    print(f"read it with tfds.data_source({report['dataset']!r}, data_dir={args.data_dir!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
