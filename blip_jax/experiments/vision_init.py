"""The miniature's ImageNet: a tiny ViT pre-trained to name the objects in synthetic scenes, the
starting point of every pre-training in the bootstrap experiment, as the paper starts BLIP from an
ImageNet-pre-trained ViT (REFERENCE §8) rather than from random weights.

Images: scenes of their own split code (disjoint from every dataset split), rendered at the
dataset's size, JPEG-encoded and decoded as the datasets store them, resized to the model's input
and normalised as evaluation does; a random horizontal flip in training. Labels: which of the
40 colour x shape objects are in the scene (multi-label, sigmoid cross-entropy): object
categories, as ImageNet's, and nothing about sizes, counts, positions or backgrounds, and no text.

    write_vision_init(out_path, vision_config, seed=..., steps=...) -> metrics

writes a timm-layout .safetensors file that `config.init.vit` (blip_jax/convert/pretrained_init.py)
reads, plus OUT.json with the held-out accuracy.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os

import numpy as np

from blip_jax.data import synthetic

SPLIT_CODE = 5  # synthetic.SPLIT_CODES uses 1-4; these scenes are none of the datasets' images
OBJECTS = tuple((color, kind) for color in synthetic.COLORS for kind in synthetic.SHAPES)


@dataclasses.dataclass(frozen=True)
class VisionInitScale:
    train_images: int = 6000
    eval_images: int = 500
    steps: int = 2000
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.05


def labels(scene: synthetic.Scene) -> np.ndarray:
    """Multi-hot [len(OBJECTS)] of the colour x shape objects in the scene."""
    out = np.zeros(len(OBJECTS), np.float32)
    for s in scene.shapes:
        out[OBJECTS.index((s.color, s.kind))] = 1.0
    return out


def make_images(seed: int, start: int, count: int, rendered_size: int, model_size: int):
    """(images [count, S, S, 3] normalised float32, labels [count, 40]) of scenes start.. ."""
    from PIL import Image

    from blip_jax.image import preprocess

    images, targets = [], []
    for i in range(start, start + count):
        scene = synthetic.sample_scene(np.random.default_rng([seed, SPLIT_CODE, i]), rendered_size)
        img = Image.open(io.BytesIO(synthetic.encode_jpeg(synthetic.render(scene)))).convert("RGB")
        images.append(preprocess(img, model_size))
        targets.append(labels(scene))
    return np.stack(images), np.stack(targets)


def train_classifier(vision_config, seed: int, scale: VisionInitScale, rendered_size: int = 96):
    """Returns (ViT params, {"eval_exact_match", "eval_object_accuracy", "final_loss"})."""
    import jax
    import flax.linen as nn
    import optax

    from blip_jax.models.vit import VisionTransformer

    class Classifier(nn.Module):
        config: object

        @nn.compact
        def __call__(self, images, train: bool = False):
            tokens = VisionTransformer(self.config, name="vision")(images, train=train)
            return nn.Dense(len(OBJECTS), name="head")(tokens[:, 0])

    size = vision_config.image_size
    x_train, y_train = make_images(seed, 0, scale.train_images, rendered_size, size)
    x_eval, y_eval = make_images(seed, scale.train_images, scale.eval_images, rendered_size, size)
    model = Classifier(vision_config)
    params = nn.unbox(model.init(jax.random.key(seed), x_train[:2])["params"])
    schedule = optax.warmup_cosine_decay_schedule(0.0, scale.lr, scale.steps // 10, scale.steps)
    tx = optax.adamw(schedule, weight_decay=scale.weight_decay)
    opt_state = tx.init(params)

    def loss_fn(p, x, y, rng):
        logits = model.apply({"params": p}, x, train=True, rngs={"dropout": rng, "drop_path": rng})
        return optax.sigmoid_binary_cross_entropy(logits, y).sum(-1).mean()

    @jax.jit
    def step(p, o, x, y, rng):
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y, rng)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o, loss

    rng = np.random.default_rng([seed, SPLIT_CODE])
    loss = float("nan")
    for t in range(scale.steps):
        idx = rng.choice(len(x_train), scale.batch_size, replace=False)
        x = x_train[idx]
        flip = rng.random(len(idx)) < 0.5  # labels do not depend on left/right
        x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
        params, opt_state, loss = step(params, opt_state, x, y_train[idx], jax.random.key(t))
    logits = np.concatenate([np.asarray(model.apply({"params": params}, x_eval[i:i + 250]))
                             for i in range(0, len(x_eval), 250)])
    predicted = logits > 0
    metrics = {"eval_exact_match": float((predicted == (y_eval > 0)).all(-1).mean()),
               "eval_object_accuracy": float(((predicted & (y_eval > 0)).sum(-1)
                                              / (y_eval > 0).sum(-1)).mean()),
               "final_loss": float(loss)}
    return params["vision"], metrics


def write_vision_init(out_path: str, vision_config, seed: int = 0,
                      scale: VisionInitScale = VisionInitScale()) -> dict:
    """Trains the classifier and writes its ViT as timm-layout safetensors at out_path (and the
    metrics at out_path + '.json'); returns the metrics."""
    from safetensors.numpy import save_file

    from blip_jax.convert import mapping

    params, metrics = train_classifier(vision_config, seed, scale)
    sd = mapping.export_state_dict({"vision": params}, mapping.ORIGINAL, tied=False)
    prefix = "visual_encoder."
    sd = {k[len(prefix):]: np.ascontiguousarray(v) for k, v in sd.items()}
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = out_path + ".tmp"
    save_file(sd, tmp)
    os.replace(tmp, out_path)
    metrics.update(seed=seed, scale=dataclasses.asdict(scale))
    with open(out_path + ".json", "w") as f:
        json.dump(metrics, f, indent=2)
    return metrics
