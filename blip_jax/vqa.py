"""Answer questions about images with a blip_jax VQA checkpoint: rank an answer list (the
paper's inference, with the top-k answers and their scores) or generate free text.

    python -m blip_jax.vqa --checkpoint DIR --image IMG --question "what color is the star?" \
        [--image IMG2 --question Q2 ...] [--method rank|generate] [--answers answer_list.json] \
        [--top-k 5] [--json] [--dtype bfloat16]

Pairs --image and --question in order (one image with several questions: give --image once).
--answers defaults to the answer list a blip_jax VQA fine-tune stores in its model directory
(CHECKPOINT/answer_list.json); converted checkpoints need BLIP's answer_list.json.
With --json: one object per question: image, question, method, answer, tokens (the answer's
ids, [DEC] first) and, for rank, top_k: [{answer, score}] (score: the answer's label-smoothed
sequence log-likelihood, what rank inference maximises).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from blip_jax import cli, image
from blip_jax.image import ImageError

ANSWER_LIST = "answer_list.json"  # next to a fine-tuned model's params


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m blip_jax.vqa", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="blip_jax VQA checkpoint directory")
    p.add_argument("--image", action="append", required=True, metavar="IMG")
    p.add_argument("--question", action="append", required=True, metavar="TEXT")
    p.add_argument("--method", choices=("rank", "generate"), default="rank")
    p.add_argument("--answers", help=f"JSON list of candidate answers (rank; default: "
                                     f"CHECKPOINT/{ANSWER_LIST})")
    p.add_argument("--top-k", type=int, default=5, help="rank: answers listed per question")
    p.add_argument("--k-test", type=int, default=128,
                   help="rank: candidates re-scored per question (the original's 128)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", action="store_true", help="one JSON object per question")
    p.add_argument("--dtype", default="float32",
                   help="computation dtype: float32 or bfloat16 (weights cast to bfloat16 at "
                        "load; softmax, LayerNorm statistics and logits stay float32)")
    return p


def _load_answers(path: str) -> list[str]:
    try:
        with open(path) as f:
            answers = json.load(f)
    except FileNotFoundError:
        raise cli.UserError(f"answer list {path} not found: pass --answers answer_list.json "
                            f"(BLIP's, or the one `python -m blip_jax.data.prepare` wrote "
                            f"into the dataset's folder)") from None
    except json.JSONDecodeError as e:
        raise cli.UserError(f"answer list {path} is not valid JSON ({e})") from None
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise cli.UserError(f"answer list {path} must be a non-empty JSON list of strings")
    return answers


@cli.entry_point
def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    images, questions = args.image, args.question
    if len(images) == 1 and len(questions) > 1:
        images = images * len(questions)
    if len(images) != len(questions):
        parser.error(f"{len(args.image)} --image but {len(questions)} --question: give one "
                     f"image per question, or one image for all")
    if args.top_k < 1 or args.k_test < 1:
        parser.error("--top-k and --k-test must be >= 1")
    from blip_jax import checkpoint  # after parsing: --help stays instant
    from blip_jax.inference import Predictor, check_dtype

    check_dtype(args.dtype)

    if checkpoint.load_config(args.checkpoint).decoder_context != "question":
        raise cli.UserError(f"{args.checkpoint} is not a VQA model (its decoder reads the image, "
                            f"not the question): fine-tune one with configs/vqa*.py or convert "
                            f"a VQA checkpoint (model_base_vqa*.pth, BlipForQuestionAnswering)")
    answers = None
    if args.method == "rank":
        answers = _load_answers(args.answers or os.path.join(args.checkpoint, ANSWER_LIST))
    # Images are opened before the checkpoint loads, so a wrong path fails at once.
    opened: dict[str, object] = {}
    for path in dict.fromkeys(images):
        try:
            opened[path] = image.open_rgb(path)
        except ImageError as e:
            raise cli.UserError(str(e)) from None
    import numpy as np

    predictor = Predictor.load(args.checkpoint, dtype=args.dtype)
    size = predictor.config.vision.image_size
    pixels = {p: image.preprocess(img, size) for p, img in opened.items()}
    results = predictor.answer(np.stack([pixels[p] for p in images]), questions,
                               method=args.method, answers=answers, k_test=args.k_test,
                               top_k=args.top_k, batch_size=args.batch_size)
    for path, question, r in zip(images, questions, results):
        if args.json:
            print(json.dumps({"image": path, "question": question, "method": args.method, **r}))
            continue
        print(f"{path}: {question} -> {r['answer']}")
        for entry in r.get("top_k", []):
            print(f"    {entry['score']:9.3f}  {entry['answer']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
