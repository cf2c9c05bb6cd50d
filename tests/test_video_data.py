"""The video data layer: frame sampling (both rules; "original" is numpy's arange), the lossless
mp4 round trip, unreadable videos named, the synthetic clips' captions and answers true of the
decoded pixels (late-only ones not true of the first frame), the MSRVTT / MSRVTT-QA / MSVD-QA /
synthetic builders, and the evaluation inputs with a corrupt video skipped and named."""

from __future__ import annotations

import dataclasses
import io
import json
import logging

import av
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from blip_jax.data import prepare, synthetic, synthetic_video as svid, synthetic_vqa as sv, video, video_builders
from blip_jax.data.report import DataError
from blip_jax.data.video import VideoError, encode_video, read_frames, sample_indices
from blip_jax.data.video_pipeline import make_video_eval_data, videoqa_eval_batches
from blip_jax.data.vqa_builders import load_answer_list
from blip_jax.evaluation.vqa_accuracy import question_accuracy
from blip_jax.image import normalize
from blip_jax.tokenizer import CLS_ID, pre_caption, pre_question
from test_data_synthetic import measure, parse, true_of  # the pixel measurements of the image tests

# ---- frames ---------------------------------------------------------------------------------------


def test_sample_indices_uniform_and_the_originals_numpy_arange():
    for f in (1, 3, 7, 8, 16):
        for n in [*range(1, 70), 100, 257, 1000, 4321]:
            original, uniform = sample_indices(n, f, "original"), sample_indices(n, f)
            reference = np.arange(0, n, n / f, dtype=int)  # BLIP's video_dataset.py
            assert len(reference) in (f, f + 1)  # one too many for some n when F is no power of two
            np.testing.assert_array_equal(original, reference[:f])
            assert uniform.tolist() == [i * n // f for i in range(f)]
            for x in (original, uniform):
                assert x.dtype == np.int64 and x.shape == (f,) and 0 <= x.min() and x.max() < n
                assert (np.diff(x) >= 0).all()
    assert len(np.arange(0, 17, 17 / 7, dtype=int)) == 8 and sample_indices(17, 7, "original").shape == (7,)
    # The original rounds its step down: it never reaches the end of a 31-frame video.
    assert sample_indices(31, 8, "original").tolist() == [0, 3, 6, 9, 12, 15, 18, 21]
    assert sample_indices(31, 8).tolist() == [0, 3, 7, 11, 15, 19, 23, 27]
    # Shorter than F: "uniform" repeats frames, the original reads the first frame F times.
    assert sample_indices(3, 8).tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    assert sample_indices(3, 8, "original").tolist() == [0] * 8
    with pytest.raises(ValueError, match="'uniform', 'original'"):
        sample_indices(10, 4, "random")
    with pytest.raises(ValueError, match="at least one video frame"):
        sample_indices(0, 4)


def _noise_frames(t: int = 10, h: int = 48, w: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def test_encode_read_round_trip_is_lossless_up_to_yuv_rounding_and_deterministic():
    frames = _noise_frames()
    data = encode_video(frames)
    assert data == encode_video(frames)  # a dataset written twice is the same bytes
    assert video.count_frames(data) == video.probe_video(data) == 10
    full = read_frames(data, 10, 48)  # every frame at its own size (PIL does not resample)
    assert full.dtype == np.uint8 and full.shape == (10, 48, 48, 3)
    # QP 0 is lossless on YUV 4:4:4: what is left is the 8-bit BT.601 RGB -> YUV -> RGB rounding,
    # half a step of Y (1.16 RGB levels) and of each chroma channel, plus the final rounding: <= 2.
    err = np.abs(full.astype(int) - frames)
    assert err.max() <= 2 and err.mean() < 0.6, (err.max(), err.mean())
    for rule in video.SAMPLING_RULES:  # the sampled frames are those frames, resized bicubic
        idx = sample_indices(10, 4, rule)
        np.testing.assert_array_equal(read_frames(data, 4, 48, rule), full[idx])
        small = np.stack([np.asarray(Image.fromarray(f).resize((16, 16), Image.BICUBIC)) for f in full[idx]])
        np.testing.assert_array_equal(read_frames(data, 4, 16, rule), small)
    # Other codecs and containers decode too; Matroska keeps no frame count (counted from packets).
    for codec, container in (("mpeg4", "avi"), ("mjpeg", "matroska")):
        other = encode_video(frames[:, :32], codec=codec, container=container)
        with av.open(io.BytesIO(other)) as c:
            listed = c.streams.video[0].frames
        assert (listed == 0) == (container == "matroska")
        assert video.count_frames(other) == 10 and read_frames(other, 3, 24).shape == (3, 24, 24, 3)
    with pytest.raises(ValueError, match="must be even"):
        encode_video(frames[:, :47])
    with pytest.raises(ValueError, match="'nosuch'"):
        encode_video(frames, codec="nosuch")


def test_unreadable_videos_raise_a_video_error_naming_them(tmp_path):
    frames = _noise_frames()
    data = encode_video(frames)
    cases = {"cut.mp4": data[:len(data) // 2], "garbage.mp4": b"not a video" * 50, "empty.mp4": b""}
    # moov first (faststart): the container opens, the frames past the cut do not decode
    path = str(tmp_path / "faststart.mp4")
    with av.open(path, "w", format="mp4", options={"movflags": "faststart"}) as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width = stream.height = 48
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    whole = open(path, "rb").read()
    cases["faststart_cut.mp4"] = whole[:len(whole) * 3 // 4]
    for where, blob in cases.items():
        with pytest.raises(VideoError, match=where):
            read_frames(blob, 8, 16, where=where)
    with pytest.raises(VideoError, match="decoding fails after .* of the 10 frames"):
        read_frames(cases["faststart_cut.mp4"], 8, 16, where="x")
    assert isinstance(VideoError("x"), ValueError)  # an ImageError: skipped where images are
    with pytest.raises(VideoError, match="missing video file"):
        read_frames(str(tmp_path / "nope.mp4"), 4, 16)
    with pytest.raises(ValueError, match="frame sampling rule 'rand'"):
        read_frames(data, 4, 16, "rand")


# ---- synthetic clips ------------------------------------------------------------------------------

def _change_clip() -> svid.Clip:
    """A red circle that turns blue at frame 4, and a green square, on gray; 8 frames."""
    circle, square = (synthetic.Shape("circle", "red", "large", 20.0, 48.0, 15.0),
                      synthetic.Shape("square", "green", "small", 75.0, 48.0, 9.0))
    tracks = (svid.Track(circle, 20.0, 48.0, new_color="blue", color_from=4), svid.Track(square, 75.0, 48.0))
    return svid.Clip(96, "gray", (1.0, 0.0, 0.0), 7, tracks, 8, "change", 4)


def test_truth_over_the_clip_follows_the_documented_rules():
    frames = _change_clip().frames()
    answer = lambda q: svid.clip_answer(frames, q)  # noqa: E731
    assert answer("what color is the circle?") is None  # red, then blue: not determined
    assert answer("what shape is the blue object?") == "circle"  # from frame 4 to the end
    assert svid.question_late_only(frames, "what shape is the blue object?", "circle")
    assert answer("what shape is the red object?") is None  # gone before the end
    assert answer("is there a blue circle?") == "yes" and answer("is there a red circle?") is None  # may only grow
    assert answer("how many blue shapes are there?") == "1" and answer("how many shapes are there?") == "2"
    assert answer("is the circle to the left or to the right of the square?") == "left"
    assert not svid.question_late_only(frames, "how many shapes are there?", "2")
    cap = synthetic.parse_caption
    assert svid.caption_true_of_clip(cap("a large red circle left of a small green square"), frames)
    assert svid.caption_true_of_clip(cap("a blue circle"), frames)
    assert not synthetic.is_true(cap("a blue circle"), frames[0])  # late only
    assert not svid.caption_true_of_clip(cap("a red circle and a blue circle"), frames)  # never both
    assert not svid.caption_true_of_clip(cap("a green circle"), frames)
    assert not svid.caption_true_of_clip(cap("three shapes"), frames)
    clip = _change_clip()
    assert svid.Clip.from_json(clip.to_json()) == clip


def test_synthetic_clips_are_deterministic_with_exact_event_thirds():
    cfg = svid.SyntheticVideoConfig(clips=9, frames=8)
    first = [(e.captions, e.questions, e.clip) for e in svid.generate(cfg, "test")]
    assert first == [(e.captions, e.questions, e.clip) for e in svid.generate(cfg, "test")]
    other = [(e.captions, e.clip) for e in svid.generate(dataclasses.replace(cfg, seed=1), "test")]
    assert [c for _, c in other] != [c for _, _, c in first]
    assert sorted(svid.event_kinds(cfg, "val")) == sorted(svid.EVENT_KINDS * 3)
    examples = list(svid.generate(svid.SyntheticVideoConfig(clips=30, frames=8, questions_per_clip=3), "val"))
    questions = [q for e in examples for q in e.questions]
    ids = [q.question_id for q in questions]
    assert len(set(ids)) == len(ids) == 90 and min(ids) == 0  # val's clip ids start at 0
    late = [q for q in questions if q.late_only]
    assert 0.15 < len(late) / len(questions) < 0.6
    assert {e.clip.event for e in examples for q in e.questions if q.late_only} <= {"appear", "change"}
    assert {q.question_type for q in questions} == set(sv.QUESTION_TYPES)
    with pytest.raises(ValueError, match="frames must be in"):
        svid.SyntheticVideoConfig(frames=3)


def test_synthetic_captions_and_answers_are_true_of_the_decoded_pixels():
    """Measured from the decoded video (colour masks per frame: kind, size, centroid; background),
    not from the generator's clip: what each frame shows, every caption true on the frames showing
    the shapes it names, every answer the clip's, and late-only ones not what the first frame says."""
    cfg = svid.SyntheticVideoConfig(clips=9, frames=8, questions_per_clip=4, seed=2)
    size, checked = cfg.image_size, {"captions": 0, "questions": 0, "late": 0}
    for ex in svid.generate(cfg, "test"):
        decoded = read_frames(ex.video_bytes(), cfg.frames, size)  # every frame, at its own size
        worlds = [measure(f) for f in decoded]
        scenes = [synthetic.Scene(size, w["background"], (0.0, 0.0, 0.0), 0, tuple(
            synthetic.Shape(o["kind"], c, o["size"], o["x"], o["y"], 0.0) for c, o in w["objects"].items()))
            for w in worlds]
        for t, (world, truth) in enumerate(zip(worlds, ex.clip.frames())):  # the event is in the pixels
            assert set(world["objects"]) == {s.color for s in truth.shapes}, (ex.clip, t)
            for s in truth.shapes:
                o = world["objects"][s.color]
                assert (o["kind"], o["size"]) == (s.kind, s.size) and abs(o["x"] - s.x) < 1.5, (s, o)
        for text, late in zip(ex.captions, ex.caption_late_only):
            claims = parse(text)
            shown = [w for w in worlds  # the frames showing every shape it names
                     if all(w["objects"].get(c, {}).get("kind") == k for c, k, _ in claims["objects"])]
            assert shown and all(true_of(claims, w, min_offset=0.05 * size) for w in shown), (text, ex.clip)
            assert late == (not true_of(claims, worlds[0])), text
            checked["captions"] += 1
        for q in ex.questions:
            assert svid.clip_answer(scenes, q.question) == q.answer, (q, ex.clip)
            assert svid.clip_answer(scenes, pre_question(q.question)) == q.answer  # what the model reads
            assert (sv.true_answer(scenes[0], q.question) != q.answer) == q.late_only, q
            checked["questions"] += 1
            checked["late"] += q.late_only
    assert checked["captions"] == 9 and checked["questions"] == 36 and checked["late"] >= 4, checked


# ---- builders and pipelines -----------------------------------------------------------------------

def _clip_bytes(color: tuple[int, int, int], n: int = 6, **kwargs) -> bytes:
    frames = np.broadcast_to(np.asarray(color, np.uint8), (n, 32, 32, 3)).copy()
    frames[:, :, : 4 * 2] = 255  # a white bar: a frame is not one flat colour
    return encode_video(frames, **kwargs)


def _write(path, text) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    return data_dir, prepare.ensure_synthetic_video(data_dir, clips=4, frames=8, questions_per_clip=3,
                                                    image_size=64)


def test_synthetic_dataset_feeds_retrieval_and_qa_in_record_order(synth):
    data_dir, name = synth
    records = tfds.data_source(name, split="test", data_dir=data_dir)
    assert len(records) == 4 and len(load_answer_list(data_dir, name)) == len(sv.answer_list())
    data = make_video_eval_data(data_dir, name, "test", num_frames=3, image_size=32)
    assert data.videos.dtype == np.uint8 and data.videos.shape == (4, 3, 32, 32, 3)
    assert data.video_ids == [records[i]["video_id"].decode() for i in range(4)] == [f"test/00000{i}" for i in range(4)]
    assert data.texts == [pre_caption(records[i]["captions"][0].decode(), 40) for i in range(4)]
    assert data.text_ids.shape == (4, 35) and data.text_ids.dtype == np.int32 and (data.text_ids[:, 0] == CLS_ID).all()
    assert data.text_to_video.tolist() == [0, 1, 2, 3] and data.video_to_texts == [[0], [1], [2], [3]]
    assert data.skipped == [] and set(data.late_only) <= {"yes", "no"}
    expected = read_frames(records[2]["video"], 3, 32, "original")
    np.testing.assert_array_equal(make_video_eval_data(data_dir, name, "test", num_frames=3, image_size=32,
                                                       sampling="original").videos[2], expected)
    batches = list(videoqa_eval_batches(data_dir, name, "test", batch_size=5, num_frames=3, image_size=32))
    ids = np.concatenate([b["question_id"] for b in batches])
    valid = np.concatenate([b["valid"] for b in batches])
    want = [int(q) for i in range(4) for q in records[i]["question_ids"]]
    assert len(batches) == 3 and ids[valid].tolist() == want and ids[~valid].tolist() == [-1] * 3
    b = batches[0]
    assert b["image"].shape == (5, 3, 32, 32, 3) and b["image"].dtype == np.float32
    np.testing.assert_allclose(b["image"][0], normalize(read_frames(records[0]["video"], 3, 32)), atol=1e-6)
    assert b["question"][0] == pre_question(records[0]["questions"][0].decode()) and len(b["answers"][0]) == 10
    assert b["late_only"][0] == records[0]["question_late_only"][0].decode() and b["question_mask"][0, 0] == 1
    assert set(b["question_type"]) <= set(sv.QUESTION_TYPES)
    shards = [list(videoqa_eval_batches(data_dir, name, "test", batch_size=4, num_frames=2, image_size=16,
                                        shard_index=k, shard_count=3)) for k in range(3)]
    assert len({len(s) for s in shards}) == 1  # every process gets as many batches
    got = [int(i) for s in shards for b in s for i, v in zip(b["question_id"], b["valid"]) if v]
    assert sorted(got) == sorted(want)
    with pytest.raises(ValueError, match="frame sampling 'rand'"):
        make_video_eval_data(data_dir, name, "test", num_frames=3, image_size=32, sampling="rand")


def test_config_aliases_name_the_synthetic_video_dataset(tmp_path):
    from blip_jax.train import input as train_input
    from blip_jax.train.defaults import base_config
    c = base_config("tiny")
    c.data.data_dir, c.data.synthetic_video_clips, c.data.synthetic_video_frames = str(tmp_path), 2, 4
    name = train_input.resolve(c, "synthetic_video")
    assert name == train_input.resolve(c, "synthetic_videoqa") == prepare.synthetic_video_dataset_name(
        clips=2, frames=4, captions_per_clip=1, questions_per_clip=3, seed=0)
    assert (c.data.num_frames, c.data.frame_sampling) == (8, "uniform")


def test_msrvtt_retrieval_builder_and_a_corrupt_video_skipped_by_the_pipeline(tmp_path, caplog):
    root = tmp_path / "videos"
    root.mkdir()
    for i, color in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        (root / f"video{i}.mp4").write_bytes(_clip_bytes(color))
    (root / "video3.mp4").write_bytes(_clip_bytes((90, 90, 90))[:900])  # truncated: moov lost
    lines = [{"clip_name": "video0", "caption": "A red clip."}, {"clip_name": "video1", "caption": "a green clip"},
             {"clip_name": "video2", "caption": "a blue clip"}, {"clip_name": "video3", "caption": "a gray clip"},
             {"clip_name": "video9", "caption": "nobody filmed this"}, {"clip_name": "video2", "caption": "!!"}]
    ann = _write(tmp_path / "msrvtt_test.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    report = prepare.build(prepare.make_builder("msrvtt_retrieval", str(tmp_path / "d"), annotations=[ann],
                                                video_root=str(root)))
    assert report["dataset"] == "blip_msrvtt_retrieval" and report["splits"]["test"]["videos"] == 3
    reasons = {s["file"].rsplit("/", 1)[-1]: s["reason"] for s in report["skipped"]}
    assert reasons["video9.mp4"].startswith("missing video file (1 caption, first:")
    assert "no video stream" in reasons["video3.mp4"] and "empty caption" in reasons["video2.mp4"]
    assert "3 videos, 3 captions, 0 questions" in prepare.summary(report)
    records = tfds.data_source("blip_msrvtt_retrieval", split="test", data_dir=str(tmp_path / "d"))
    assert [records[i]["video_id"].decode() for i in range(3)] == ["video0", "video1", "video2"]
    # Without the prepare-time check the truncated file is written, and evaluation skips it, named.
    data_dir = str(tmp_path / "unverified")
    prepare.build(prepare.make_builder("msrvtt_retrieval", data_dir, annotations=[f"test={ann}"],
                                       video_root=str(root), verify_images=False))
    with caplog.at_level(logging.WARNING, logger="blip_jax.data.video_pipeline"):
        data = make_video_eval_data(data_dir, "blip_msrvtt_retrieval", "test", num_frames=4, image_size=16)
    assert data.video_ids == ["video0", "video1", "video2"] and data.texts == ["a red clip", "a green clip",
                                                                                 "a blue clip"]
    assert [v for v, _ in data.skipped] == ["video3"] and "video3.mp4" in data.skipped[0][1]
    assert "video3.mp4" in caplog.text and data.video_to_texts == [[0], [1], [2]]
    assert data.videos[0, 0, 8, 12].tolist() == pytest.approx([200, 30, 30], abs=6)  # red, past the bar
    with pytest.raises(DataError, match="no questions"):
        videoqa_eval_batches(data_dir, "blip_msrvtt_retrieval", "test", batch_size=2, num_frames=2, image_size=16)


def _qa(entries: list[tuple[str, str, object]], first_id: int = 0) -> str:
    return json.dumps([{"question": q, "answer": a, "video_id": v, "id": first_id + i}
                       for i, (q, a, v) in enumerate(entries)])


def test_msrvtt_qa_builder_answer_list_and_exact_match_scoring(tmp_path, caplog):
    root = tmp_path / "videos"
    root.mkdir()
    for i in (1, 2):
        (root / f"video{i}.mp4").write_bytes(_clip_bytes((40 * i, 90, 150)))
    (root / "video3.mp4").write_bytes(b"\x00" * 64)
    train = _write(tmp_path / "train_qa.json", _qa([("what is it?", "dog", 1), ("who is there?", "man", 1),
                                                    ("what runs?", "dog", 2), ("what is red?", "car", 2),
                                                    ("how many?", "two", 2)], 100))
    test = _write(tmp_path / "test_qa.json", _qa([("What is shown?", "dog", 1), ("where is it?", "park", 2),
                                                  ("what is here?", "cat", 3), ("who sings?", "woman", 4)]))
    data_dir = str(tmp_path / "d")
    report = prepare.build(prepare.make_builder("msrvtt_qa", data_dir, questions=[f"train={train}", f"test={test}"],
                                                video_root=str(root), answer_list_size=3))
    assert load_answer_list(data_dir, "blip_msrvtt_qa") == ["dog", "car", "man"]  # ties alphabetical
    assert report["splits"]["test"]["question_counts"] == [1, 1] and report["splits"]["test"]["answers_in_list"] == 1
    assert {s["file"].rsplit("/", 1)[-1] for s in report["skipped"]} == {"video3.mp4", "video4.mp4"}
    rec = tfds.data_source("blip_msrvtt_qa", split="test", data_dir=data_dir)[0]
    assert rec["video_id"].decode() == "video1" and rec["video_path"].decode() == "video1.mp4"
    assert [a.decode() for a in rec["answers"]] == ["dog"] * 10 and list(rec["answer_counts"]) == [10]
    assert list(rec["question_ids"]) == [0] and rec["question_types"][0].decode() == "what"
    # One answer as 10 unanimous copies scores exact match; a single copy would score 0 even when right.
    assert question_accuracy("dog", ["dog"] * 10) == 1.0 and question_accuracy("cat", ["dog"] * 10) == 0.0
    assert question_accuracy("dog", ["dog"]) == 0.0
    batch, = list(videoqa_eval_batches(data_dir, "blip_msrvtt_qa", "test", batch_size=3, num_frames=2, image_size=16))
    assert batch["question_id"].tolist() == [0, 1, -1] and batch["question_type"].tolist() == ["what", "where", ""]
    assert batch["late_only"].tolist() == ["", "", ""] and batch["valid"].tolist() == [True, True, False]
    # The answer list from the training file alone, without writing its videos.
    other = str(tmp_path / "d2")
    report = prepare.build(prepare.make_builder("msrvtt_qa", other, questions=[f"test={test}"],
                                                video_root=str(root), answer_list_from=[train],
                                                verify_images=False))
    assert list(report["splits"]) == ["test"] and load_answer_list(other, "blip_msrvtt_qa")[:2] == ["dog", "car"]
    # Unverified, the unreadable file reaches evaluation: its question is invalid and named.
    with caplog.at_level(logging.WARNING, logger="blip_jax.data.vqa_pipeline"):
        batches = videoqa_eval_batches(other, "blip_msrvtt_qa", "test", batch_size=4, num_frames=2, image_size=16)
        batch, = list(batches)
    assert batch["valid"].tolist() == [True, True, False, False] and batch["question_id"].tolist()[:3] == [0, 1, 2]
    assert [q for q, _ in batches.skipped] == [2] and "video3.mp4" in batches.skipped[0][1]
    with pytest.raises(DataError, match="--answer_list_from"):
        prepare.make_builder("msrvtt_qa", str(tmp_path / "d3"), questions=[f"test={test}"], video_root=str(root))
    dup = _write(tmp_path / "dup.json", _qa([("what?", "a", 1), ("who?", "b", 2)], 7).replace('"id": 8', '"id": 7'))
    with pytest.raises(DataError, match="question id 7 appears twice"):
        prepare.build(prepare.make_builder("msrvtt_qa", str(tmp_path / "d4"), questions=[f"test={dup}"],
                                           video_root=str(root), answer_list_from=[train]))


def test_msvd_qa_builder_through_the_command_line(tmp_path, capsys):
    root = tmp_path / "YouTubeClips"
    root.mkdir()
    (root / "abc_1_5.avi").write_bytes(_clip_bytes((200, 30, 30), codec="mpeg4", container="avi"))
    (root / "xyz_2_9.avi").write_bytes(_clip_bytes((30, 200, 30), codec="mpeg4", container="avi"))
    mapping = _write(tmp_path / "youtube_mapping.txt", "abc_1_5 vid1\nxyz_2_9 vid2\n")
    train = _write(tmp_path / "train_qa.json", _qa([("what is red?", "ball", 1), ("what is green?", "ball", 2),
                                                    ("who plays?", "boy", 2)]))
    test = _write(tmp_path / "test_qa.json", _qa([("what color?", "green", 2), ("what moves?", "ball", "vid1")], 10))
    data_dir = str(tmp_path / "d")
    assert prepare.main(["--source", "msvd_qa", "--data_dir", data_dir, "--video_root", str(root),
                         "--youtube_mapping", mapping, "--questions", f"test={test}",
                         "--answer_list_from", train]) == 0
    out = capsys.readouterr().out
    assert "test: 2 videos, 0 captions, 2 questions (1 with their answer in the answer list)" in out
    assert "answer list: 2 answers" in out and "skipped nothing" in out
    records = tfds.data_source("blip_msvd_qa", split="test", data_dir=data_dir)
    assert [(r["video_id"].decode(), r["video_path"].decode()) for r in (records[0], records[1])] == [
        ("vid2", "xyz_2_9.avi"), ("vid1", "abc_1_5.avi")]
    assert load_answer_list(data_dir, "blip_msvd_qa") == ["ball", "boy"]
    bad = _write(tmp_path / "bad_qa.json", _qa([("what?", "x", 7)]))
    with pytest.raises(DataError, match="video_id 7 is not in --youtube_mapping"):
        prepare.make_builder("msvd_qa", data_dir, questions=[f"test={bad}"], video_root=str(root),
                             youtube_mapping=mapping, answer_list_from=[train])
    with pytest.raises(DataError, match="line 1: expected '<youtube name> vid<N>'"):
        video_builders.read_youtube_mapping(_write(tmp_path / "m.txt", "just-a-name\n"))
    with pytest.raises(DataError, match="--youtube_mapping"):
        prepare.make_builder("msvd_qa", data_dir, questions=[f"test={test}"], video_root=str(root))
