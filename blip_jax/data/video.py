"""Video files <-> frames: which frames to sample, decoding only up to the last of them (PyAV),
and a deterministic, lossless mp4 writer for the synthetic clips and the tests.

BLIP's zero-shot video evaluation (data/video_dataset.py, eval_retrieval_video.py) reads each
video with decord, which squash-resizes every frame to 384 x 384 while decoding, samples
`np.arange(0, n, n / num_frm, dtype=int)` and CLIP-normalises. Here the sampled frames are
converted to RGB and squash-resized with PIL bicubic, the evaluation transform of the image tasks
(blip_jax.image.preprocess), so a video frame and an image reach the model the same way;
normalisation is the pipeline's (video_pipeline.py).
"""

from __future__ import annotations

import io
import os
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image

from blip_jax.image import ImageError

SAMPLING_RULES = ("uniform", "original")
# libx264 at QP 0 is lossless on YUV; 4:4:4 keeps full colour resolution (4:2:0 halves it, which
# smears the colour of a 64-96 px scene's small shapes: up to 107 levels at their edges, measured,
# the reason synthetic.encode_jpeg uses 4:4:4 too). One thread: the output bytes are then a
# function of the frames alone (checked in tests/test_video_data.py).
_X264_OPTIONS = {"qp": "0"}
_X264_PIXEL_FORMAT = "yuv444p"
_AV_ERRORS = (av.FFmpegError, OSError, ValueError, EOFError, MemoryError)


class VideoError(ImageError):
    """A video that cannot be read: names the video and the reason. An ImageError, so what
    skips an unreadable image (builders, pipelines) skips an unreadable video the same way."""


def sample_indices(num_video_frames: int, num_frames: int, rule: str = "uniform") -> np.ndarray:
    """int64 [num_frames]: which frames of a num_video_frames-frame video to read, ascending.

    "uniform": floor(i * n / F) for i = 0..F-1, evenly spread over the whole video (what the
      original meant); a video shorter than F frames repeats frames.
    "original": exactly `np.arange(0, n, n / F, dtype=int)`, what BLIP's video_dataset.py reads.
      numpy builds an integer arange from its first two values cast to int, so it returns
      i * int(n / F): the step is rounded down and the frames bunch at the start (n = 31, F = 8:
      0, 3, ..., 21 where "uniform" reads 0, 3, 7, ..., 27; frames 22-30 are never seen). With
      n < F the step is 0: the first frame, F times. numpy's length ceil(n / (n / F)) is never
      below F, but for some n and F (F not a power of two, e.g. n = 17, F = 7) it comes out
      F + 1 in floating point, where the original reads one frame too many; here the result
      stops at F, so the shape is always [F].
    """
    if rule not in SAMPLING_RULES:
        raise ValueError(f"frame sampling rule {rule!r}: use one of {SAMPLING_RULES}")
    if num_video_frames < 1 or num_frames < 1:
        raise ValueError(f"need at least one video frame and one frame to sample, got num_video_frames="
                         f"{num_video_frames}, num_frames={num_frames}")
    n, f = int(num_video_frames), int(num_frames)
    if rule == "uniform":
        return np.arange(f, dtype=np.int64) * n // f
    return np.arange(f, dtype=np.int64) * int(n / f)  # numpy's step: int(start + step) - int(start)


def _open(video: bytes | str, where: str) -> av.container.InputContainer:
    if isinstance(video, str):
        if not os.path.isfile(video):
            raise VideoError(f"{where}: missing video file")
        source: str | io.BytesIO = video
    else:
        if not video:
            raise VideoError(f"{where}: empty video file")
        source = io.BytesIO(video)
    try:
        return av.open(source, "r")
    except _AV_ERRORS as e:
        raise VideoError(f"{where}: not a readable video ({e})") from e


def _video_stream(container: av.container.InputContainer, where: str) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise VideoError(f"{where}: no video stream in the file (not a video, or cut before its stream headers)")
    return container.streams.video[0]


def count_frames(video: bytes | str, where: str = "") -> int:
    """The number of frames of the first video stream: the container's count (mp4, avi), or, where
    the container keeps none (some mkv/webm files), its video packets, counted without decoding
    (one frame per packet, as decord counts). Raises VideoError for an unreadable or empty video."""
    where = where or (video if isinstance(video, str) else "video")
    with _open(video, where) as container:
        stream = _video_stream(container, where)
        n = stream.frames
        if n <= 0:
            try:
                n = sum(1 for packet in container.demux(stream) if packet.size)
            except _AV_ERRORS as e:
                raise VideoError(f"{where}: not a readable video ({e})") from e
    if n <= 0:
        raise VideoError(f"{where}: the video has no frames")
    return n


def probe_video(video: bytes | str, where: str = "") -> int:
    """count_frames after checking that the first frame decodes: the prepare-time check (cheap;
    a file damaged further in fails when the pipeline reads it, and is skipped and named there)."""
    where = where or (video if isinstance(video, str) else "video")
    n = count_frames(video, where)
    with _open(video, where) as container:
        try:
            next(container.decode(_video_stream(container, where)))
        except StopIteration:
            raise VideoError(f"{where}: no frame decodes (the container lists {n})") from None
        except _AV_ERRORS as e:
            raise VideoError(f"{where}: not a readable video ({e})") from e
    return n


def read_frames(video: bytes | str, num_frames: int, image_size: int, rule: str = "uniform",
                where: str = "") -> np.ndarray:
    """uint8 [num_frames, image_size, image_size, 3]: the frames sample_indices(n, num_frames, rule)
    picks, RGB, squash-resized with PIL bicubic (the original resizes inside decord instead).

    `video`: a file path or the file's bytes; `where` names it in errors (default: the path).
    Decoding stops at the last sampled frame. A missing, empty, corrupt or truncated video (one
    that ends before its container's frame count) raises VideoError naming it.
    """
    where = where or (video if isinstance(video, str) else "video")
    if rule not in SAMPLING_RULES:  # a configuration error, not the video's
        raise ValueError(f"frame sampling rule {rule!r}: use one of {SAMPLING_RULES}")
    n = count_frames(video, where)
    indices = sample_indices(n, num_frames, rule)
    wanted, last = set(indices.tolist()), int(indices[-1])
    frames: dict[int, np.ndarray] = {}
    decoded = 0
    # One converter for the video's frames: frame.to_image() builds a new swscale context per
    # frame, 10x the cost of decoding a small frame (measured: 8 ms vs 0.8 ms at 96 px).
    to_rgb = VideoReformatter()
    with _open(video, where) as container:
        try:
            for i, frame in enumerate(container.decode(_video_stream(container, where))):
                decoded = i + 1
                if i in wanted:
                    img = to_rgb.reformat(frame, format="rgb24").to_image()
                    img = img.resize((image_size, image_size), Image.BICUBIC)
                    frames[i] = np.asarray(img, np.uint8)
                if i >= last:
                    break
        except _AV_ERRORS as e:
            raise VideoError(f"{where}: decoding fails after {decoded} of the {n} frames its container lists "
                             f"(truncated or corrupt file: {e})") from e
    if last not in frames:
        raise VideoError(f"{where}: only {decoded} of the {n} frames its container lists decode "
                         f"(truncated or corrupt file)")
    return np.stack([frames[i] for i in indices.tolist()])


def encode_video(frames: np.ndarray, fps: int = 8, codec: str = "libx264", container: str = "mp4") -> bytes:
    """An encoded video file (default mp4) of uint8 frames [T, H, W, 3] (H, W even), in memory.

    libx264 (default) writes lossless H.264 (QP 0) in 4:4:4, one thread: decoding returns the
    frames up to the RGB -> YUV -> RGB rounding of 8-bit limited-range BT.601 (at most 2 levels per
    channel, measured; each of Y, Cb, Cr is rounded to half a step, 1.16 / 1.14 RGB levels for Y /
    chroma, plus the final rounding), and the same frames give the same bytes. Other codecs
    (mpeg4, mjpeg: for tests of other decoders) use their first pixel format at a high bit rate:
    close, not lossless, and without that guarantee.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 [T, H, W, 3] with T >= 1, got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"frame height and width must be even for the video codecs, got {height} x {width}: "
                         f"crop or pad a row/column")
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        try:
            stream = out.add_stream(codec, rate=fps)
        except (av.FFmpegError, ValueError) as e:  # unknown codec, or one the container cannot hold
            raise ValueError(f"cannot write {codec!r} video into {container!r} with this FFmpeg ({e}): the "
                             f"wheels of av==18.1.0 bundle libx264; mpeg4 and mjpeg also work") from None
        stream.width, stream.height = width, height
        if codec == "libx264":
            stream.pix_fmt, stream.options = _X264_PIXEL_FORMAT, dict(_X264_OPTIONS)
        else:
            stream.pix_fmt = stream.codec_context.codec.video_formats[0].name
            stream.bit_rate = 8 * width * height * fps  # 8 bits per pixel: near-lossless at these sizes
        stream.codec_context.thread_count = 1
        for t, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():  # flush the encoder's delayed frames
            out.mux(packet)
    return buf.getvalue()
