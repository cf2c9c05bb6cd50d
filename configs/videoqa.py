"""Zero-shot video question answering (the paper's section 5.6; its code was never released)
with the VQA model: 16 uniformly sampled frames per video, each through the ViT alone, their
tokens concatenated as the question encoder's image input; answers ranked over the dataset's
answer list (the 1,500 / 1,000 most frequent training answers of MSRVTT-QA / MSVD-QA, each
stored as 10 identical annotator answers so VQA accuracy is exact-match accuracy). Frames at
384 px: the paper does not say; the VQA model was fine-tuned at 480, the original's video loader
reads 384 (set config.model.vision.image_size=480 to match the VQA fine-tune). No training:
task videoqa evaluates only.

    python -m blip_jax.data.prepare --source msrvtt_qa --data_dir DATA --video_root MSRVTT/videos \
        --questions test=test_qa.json --answer_list_from train_qa.json
    python -m blip_jax.convert model_base_vqa_capfilt_large.pth /ckpt/blip_vqa --image-size 384
    python -m blip_jax.evaluate --config=configs/videoqa.py --checkpoint=/ckpt/blip_vqa \
        --config.data.data_dir=DATA [--config.data.eval_source='("blip_msvd_qa", "test")']
"""

import importlib.util
import os


def get_config():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vqa.py")
    spec = importlib.util.spec_from_file_location("vqa", path)
    vqa = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vqa)
    c = vqa.get_config()
    c.task = "videoqa"
    c.model.vision.image_size = 384
    c.data.eval_source = ("blip_msrvtt_qa", "test")
    c.data.num_frames = 16
    c.data.frame_sampling = "uniform"
    c.eval.max_images = 0  # every question
    c.eval.batch_size = 4  # questions (16 frames each) per step
    return c
