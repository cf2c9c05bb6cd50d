"""VQA against the original's algorithms (salesforce/BLIP models/blip_vqa.py, restated in torch on
HF BlipForQuestionAnswering modules in tests/torch_reference.py), on converted random weights:
the weighted answer loss, rank inference and beam-search generation.

Tolerances: the converted model's logits agree within 1e-4 (tests/test_parity_hf.py); a
label-smoothed cross-entropy moves by at most 2x the largest logit difference (log-softmax is
2-Lipschitz in the max norm), so a sum over n target tokens moves by at most 2e-4 * n.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_reference as ref  # noqa: E402

from blip_jax import answering, tokenizer as tok  # noqa: E402
from blip_jax.convert import load_hf  # noqa: E402
from blip_jax.models.blip import Blip  # noqa: E402
from blip_jax.train import vqa_step  # noqa: E402

LOGIT_TOL = 1e-4
CE_TOL_PER_TOKEN = 2 * LOGIT_TOL


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(HF VQA model with the question mask honoured, blip_jax config, params)."""
    hf_cfg = ref.hf_config(image_size=96, text_layers=3, vision_depth=2)
    vqa = ref.hf_models(hf_cfg, 11, kinds=("vqa",))["vqa"]
    d = str(tmp_path_factory.mktemp("vqa_hf"))
    vqa.save_pretrained(d)
    config, params, _ = load_hf(d)
    ref.patch_cross_attention_mask(vqa)  # transformers 5 drops the cross-attention mask
    return vqa, config, params


def _states(config, params, q):
    return answering.question_states(Blip(config), params,
                                     jnp.asarray(q["pixels"].transpose(0, 2, 3, 1)),
                                     jnp.asarray(q["ids"], jnp.int32),
                                     jnp.asarray(q["mask"], jnp.int32))


def test_answer_loss_is_the_originals(converted):
    vqa, config, params = converted
    q = ref.make_inputs(3, 96, 9, seed=3)  # questions of 9, 7 and 5 tokens
    counts = [2, 1, 3]  # answers per question, packed in order as the original's collate
    packed = ref.make_inputs(sum(counts), 96, 6, seed=4, valid_lengths=[6, 3, 4, 2, 5, 3])
    weights = np.array([0.7, 0.3, 0.2, 0.5, 0.3, 0.2], np.float32)
    want = ref.original_vqa_loss(vqa, q, packed["ids"], packed["mask"], counts, weights)

    # blip_jax's batch: A = 3 answer slots per question, empty slots with weight 0.
    a_ids = np.zeros((3, 3, 6), np.int32)
    a_mask, a_w = np.zeros_like(a_ids), np.zeros((3, 3), np.float32)
    row = 0
    for b, n in enumerate(counts):
        for j in range(n):
            a_ids[b, j], a_mask[b, j], a_w[b, j] = packed["ids"][row], packed["mask"][row], weights[row]
            row += 1
    a_ids[:, :, 0] = np.where(a_mask[:, :, 0] > 0, tok.CLS_ID, 0)
    batch = {"image": jnp.asarray(q["pixels"].transpose(0, 2, 3, 1)),
             "question_ids": jnp.asarray(q["ids"], jnp.int32),
             "question_mask": jnp.asarray(q["mask"], jnp.int32),
             "answer_ids": jnp.asarray(a_ids), "answer_mask": jnp.asarray(a_mask),
             "answer_weight": jnp.asarray(a_w)}
    got = float(Blip(config).apply({"params": params},
                                   method=lambda m: vqa_step.vqa_loss(m, batch, 0.1, False)))
    targets = (packed["mask"][:, 1:].sum(1) * weights).sum() / len(counts)
    assert abs(got - want) <= CE_TOL_PER_TOKEN * targets, (got, want)
    assert want > 1.0  # a real loss, not a degenerate zero


def _answer_list(n: int, seed: int):
    """n distinct made-up answers of 1-4 word pieces, tokenised as the original pads the list."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 7, n)  # [DEC] + 1-4 tokens + [SEP]
    longest = int(lengths.max())
    ids = np.zeros((n, longest), np.int64)
    mask = np.zeros_like(ids)
    for i, length in enumerate(lengths):
        ids[i, :length] = [tok.DEC_ID, *rng.integers(1000, 30000, length - 2), tok.SEP_ID]
        mask[i, :length] = 1
    return ids, mask


def test_rank_is_the_originals(converted):
    vqa, config, params = converted
    q = ref.make_inputs(3, 96, 9, seed=5)  # padded questions: the cross-attention mask counts
    a_ids, a_mask = _answer_list(12, seed=6)
    k = 5
    want_best, want_top, want_scores = ref.original_rank_answer(
        vqa, ref.original_question_states(vqa, q), q["mask"], a_ids, a_mask, k)
    states = _states(config, params, q)
    best, top, scores = answering.rank_answers(
        Blip(config), params, states, jnp.asarray(q["mask"], jnp.int32),
        jnp.asarray(a_ids, jnp.int32), jnp.asarray(a_mask, jnp.int32), k=k)
    np.testing.assert_array_equal(np.asarray(top), want_top)
    np.testing.assert_array_equal(np.asarray(best), want_best)
    tokens = a_mask[np.asarray(top)][..., 1:].sum(-1)
    assert np.all(np.abs(np.asarray(scores) - want_scores) <= CE_TOL_PER_TOKEN * tokens)
    # The scores depend on the question (the mask and states reach the decoder).
    assert np.ptp(want_scores[:, 0]) > 100 * CE_TOL_PER_TOKEN * tokens.max()


def test_generate_is_transformers(converted):
    """Unpadded questions: HF generate (all-ones question mask, transformers 5 beam rule)."""
    vqa, config, params = converted
    q = ref.make_inputs(2, 96, 8, seed=7, valid_lengths=[8, 8])
    with torch.no_grad():
        hf = vqa.generate(input_ids=torch.from_numpy(ref.with_first(q["ids"], tok.ENC_ID)),
                          pixel_values=torch.from_numpy(q["pixels"]),
                          attention_mask=torch.from_numpy(q["mask"]), num_beams=3, max_length=10,
                          min_length=1).numpy()
    states = _states(config, params, q)
    _, tokens = answering.generate_answers(Blip(config), params, states, q["mask"],
                                           length_norm="generated")
    for row, want in zip(tokens, hf):
        want = [t for t in want.tolist() if t != tok.PAD_ID]
        assert row[: len(want)].tolist() == want
        assert not row[len(want):].any()


def test_trim_questions_cuts_to_the_longest():
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    assert answering.trim_questions(np.zeros((2, 5, 4)), mask).shape == (2, 3, 4)


def test_candidates_pad_to_the_longest_answer():
    c = answering.AnswerCandidates.build(["yes", "two shapes", "a very long answer indeed"])
    assert c.ids.shape[1] == int(c.mask.sum(1).max())
    assert c.ids[0, 0] == tok.DEC_ID and c.tokens(0)[-1] == tok.SEP_ID
    with pytest.raises(ValueError, match="empty"):
        answering.AnswerCandidates.build([])


@pytest.fixture(scope="module")
def vqa_checkpoint(converted, tmp_path_factory):
    """The converted model as a blip_jax checkpoint with an answer list, and an image."""
    from PIL import Image

    from blip_jax import checkpoint
    _, config, params = converted
    d = tmp_path_factory.mktemp("vqa_ckpt")
    checkpoint.save_model(str(d / "model"), jax.tree_util.tree_map(np.asarray, params), config)
    answers = ["yes", "no", "two", "red star", "a blue circle", "left"]
    (d / "model" / "answer_list.json").write_text(json.dumps(answers))
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (80, 100, 3), np.uint8)).save(d / "img.png")
    return d, answers


def _cli(argv, capsys):
    from blip_jax import vqa as vqa_cli
    status = vqa_cli.main(argv)
    out = capsys.readouterr()
    return status, out.out, out.err


def test_cli_rank_json(vqa_checkpoint, capsys):
    d, answers = vqa_checkpoint
    status, out, _ = _cli(["--checkpoint", str(d / "model"), "--image", str(d / "img.png"),
                           "--question", "What color is the star?", "--question", "Is it left?",
                           "--top-k", "3", "--json"], capsys)
    assert status == 0
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert [r["question"] for r in rows] == ["What color is the star?", "Is it left?"]
    for r in rows:
        assert r["method"] == "rank" and r["image"].endswith("img.png")
        assert r["answer"] in answers and r["tokens"][0] == tok.DEC_ID
        assert r["tokens"][-1] == tok.SEP_ID
        scores = [e["score"] for e in r["top_k"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
        assert r["top_k"][0]["answer"] == r["answer"]  # rank's winner is the best re-scored


def test_cli_generate_and_plain_output(vqa_checkpoint, capsys):
    d, _ = vqa_checkpoint
    status, out, _ = _cli(["--checkpoint", str(d / "model"), "--image", str(d / "img.png"),
                           "--question", "how many shapes?", "--method", "generate", "--json"],
                          capsys)
    assert status == 0
    r = json.loads(out)
    assert r["method"] == "generate" and "top_k" not in r and r["tokens"][0] == tok.DEC_ID
    status, out, _ = _cli(["--checkpoint", str(d / "model"), "--image", str(d / "img.png"),
                           "--question", "how many shapes?", "--top-k", "2"], capsys)
    assert status == 0 and "how many shapes? -> " in out and len(out.strip().splitlines()) == 3


def test_cli_errors_name_the_fix(vqa_checkpoint, capsys, tmp_path):
    d, _ = vqa_checkpoint
    base = ["--checkpoint", str(d / "model"), "--question", "q"]
    status, _, err = _cli(base + ["--image", str(d / "img.png"), "--answers",
                                  str(tmp_path / "none.json")], capsys)
    assert status == 2 and f"answer list {tmp_path / 'none.json'} not found" in err
    assert "--answers" in err
    (tmp_path / "bad.png").write_bytes(b"not an image")
    status, _, err = _cli(base + ["--image", str(tmp_path / "bad.png")], capsys)
    assert status == 2 and "bad.png" in err
    with pytest.raises(SystemExit) as e:  # argparse: 2 images for 1 question
        _cli(base + ["--image", "a.png", "--image", "b.png"], capsys)
    assert e.value.code == 2 and "one image per question" in capsys.readouterr().err


@pytest.mark.slow
def test_synthetic_vqa_learns(tmp_path):
    """The tiny VQA recipe at reduced scale through the README's commands, from random weights:
    after 200 steps the answers beat the split's most common answer by far. (From random weights
    in so few steps the model learns the answers' structure per question type, not yet the
    image: the README's run from the tiny pre-trained model is the one that beats the per-type
    prior.) Measured with these settings: 42.2 against a majority answer at 14.5; 150 steps on
    200 images gave 22.5."""
    from train_utils import run_module_on_one_device as run

    from blip_jax.experiments import tiny

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    data = f"--config.data.data_dir={tmp_path / 'data'}"
    model = tmp_path / "run" / "model"
    vqa = [f"--config={root}/configs/vqa_tiny.py", data, "--config.data.synthetic_num_images=300",
           "--config.data.synthetic_eval_images=50", "--config.data.workers=0"]
    run("blip_jax.train", *vqa, f"--workdir={tmp_path / 'run'}", "--config.total_steps=200",
        "--config.checkpoint_every_steps=200", "--config.batch_size=16")
    assert json.loads((model / "answer_list.json").read_text())
    run("blip_jax.evaluate", *vqa, f"--checkpoint={model}", "--split=val")
    r = json.loads((model / "eval_vqa_val.json").read_text())["metrics"]
    assert r["num_questions"] == 50 * tiny.vqa().data.synthetic_vqa_questions_per_image
    assert r["unanswered"] == 0
    assert r["vqa_accuracy"] > r["majority_answer_accuracy"] + 15, r
    results = json.loads((model / "vqa_result_val.json").read_text())
    assert len(results) == r["num_questions"] and set(results[0]) == {"question_id", "answer"}

    # Zero-shot video QA with the same image-trained model (issue 15): the synthetic clips'
    # questions over 16 frames, against answering every question with the split's most common
    # answer. Measured 40.1 against 19.4 (120 questions: one standard error of an accuracy near
    # 40% is 4.5 points, so a margin of 10 leaves 2.4 of them); like the images' answers above,
    # these come from the question types' answer structure (the per-type prior scores 43.9), not
    # yet from the frames.
    video = tmp_path / "video" / "results.json"
    run("blip_jax.evaluate", f"--config={root}/configs/videoqa_tiny.py", data,
        "--config.data.synthetic_video_clips=40", "--config.data.workers=0",
        f"--checkpoint={model}", "--split=test", f"--output={video}")
    v = json.loads(video.read_text())["metrics"]
    print({k: v[k] for k in ("vqa_accuracy", "majority_answer_accuracy", "type_prior_accuracy")})
    questions = 40 * tiny.videoqa().data.synthetic_video_questions
    assert v["num_questions"] == questions and v["unanswered"] == 0
    assert v["vqa_accuracy"] > v["majority_answer_accuracy"] + 10, v


@pytest.mark.parametrize("change, message", [
    (dict(task="caption"), "decoder_context='question' is the VQA model"),
    (dict(loss_itc=1.0), "answer loss alone"),
    (dict(task="vqa_typo"), "config.task='vqa_typo'"),
])
def test_task_and_model_must_fit(change, message):
    from blip_jax.experiments import tiny
    from blip_jax.train import trainer
    c = tiny.vqa(10)
    if "task" in change:
        c.task = change["task"]
    if "loss_itc" in change:
        c.loss.itc_weight = change["loss_itc"]
    with pytest.raises(ValueError, match=message):
        trainer.check_task(c)
    trainer.check_task(tiny.vqa(10))
    trainer.check_task(tiny.caption(10))
