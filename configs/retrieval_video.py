"""Zero-shot text-video retrieval on MSRVTT (the 1k-A test split in BLIP's msrvtt_test.jsonl)
with an image-text retrieval model, as the paper (REFERENCE §4; the original's
eval_retrieval_video.py, configs/retrieval_msrvtt.yaml): the COCO-finetuned ViT-B at 384 px,
8 frames per video (squash-resized, normalised as images), captions pre_caption(40) and 35
tokens, ITC of the mean frame feature, each query's top 128 re-ranked by ITM over the 8 frames'
4,616 tokens. Frames: config.data.frame_sampling "uniform" (floor(i * n / 8)); the original's
rule (i * int(n / 8)) is "original". No training: task video_retrieval evaluates only.

    python -m blip_jax.data.prepare --source msrvtt_retrieval --data_dir DATA \
        --annotations msrvtt_test.jsonl --video_root MSRVTT/videos
    python -m blip_jax.convert model_base_retrieval_coco.pth /ckpt/blip_retrieval_coco --image-size 384
    python -m blip_jax.evaluate --config=configs/retrieval_video.py \
        --checkpoint=/ckpt/blip_retrieval_coco --config.data.data_dir=DATA
"""

import importlib.util
import os


def get_config():
    # configs/ is not a package: load the COCO recipe from its file.
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "retrieval_coco.py")
    spec = importlib.util.spec_from_file_location("retrieval_coco", path)
    coco = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(coco)
    c = coco.get_config(k_test=128)
    c.task = "video_retrieval"
    c.data.eval_source = ("blip_msrvtt_retrieval", "test")
    c.data.max_words = 40
    c.data.max_tokens = 35
    c.data.num_frames = 8
    c.data.frame_sampling = "uniform"
    c.eval.max_images = 0  # every video
    c.eval.batch_size = 16  # videos (8 frames each) per device per feature step; ITM rows per re-rank step
    c.eval.texts_per_group = 16
    return c
