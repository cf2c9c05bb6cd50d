"""BLIP's image augmentation on PIL images (REFERENCE §2), every random draw from a given numpy
Generator so the pipeline is reproducible: RandomResizedCrop (bicubic), horizontal flip (with the
caption's left/right swapped) and RandAugment N=2 M=5.

RandAugment follows the semantics of BLIP's own RandomAugment (not torchvision's): N ops drawn
uniformly with replacement, each applied with probability 0.5; magnitude M out of 10 maps to an
enhance factor 0.1 + 1.8 M/10 (so at M=5 Brightness and Sharpness are identities, as in BLIP), a
shear of 0.3 M/10, a translation of 10 M/10 pixels (absolute, at the output size) and a rotation
of 30 M/10 degrees, each with a random sign, filled with grey 128.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

RANDAUG_OPS = ("Identity", "AutoContrast", "Brightness", "Sharpness", "Equalize",
               "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
MAX_LEVEL = 10
FILL = (128, 128, 128)


def crop_box(width: int, height: int, scale: tuple[float, float], rng: np.random.Generator,
             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (left, top, w, h): area fraction ~ U(scale), log aspect ~ U(log ratio);
    ten tries, then a centre crop at the nearest allowed aspect."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def random_resized_crop(img: Image.Image, size: int, scale: tuple[float, float],
                        rng: np.random.Generator) -> Image.Image:
    left, top, w, h = crop_box(img.width, img.height, scale, rng)
    return img.resize((size, size), Image.BICUBIC, box=(left, top, left + w, top + h))


def draft_size(size: int, scale: tuple[float, float], ratio: float = 4 / 3) -> tuple[int, int]:
    """Smallest decode size that keeps the smallest possible crop at >= `size` pixels per side."""
    side = math.ceil(size * math.sqrt(ratio / scale[0]))
    return side, side


_LEFT_RIGHT = re.compile(r"\b(left|right)\b")


def swap_left_right(text: str) -> str:
    """'left' <-> 'right' (lower case, whole words): the caption of a mirrored image."""
    return _LEFT_RIGHT.sub(lambda m: "right" if m.group(1) == "left" else "left", text)


def _signed(value: float, rng: np.random.Generator) -> float:
    return -value if rng.random() < 0.5 else value


def _apply(img: Image.Image, op: str, magnitude: float, rng: np.random.Generator) -> Image.Image:
    level = magnitude / MAX_LEVEL
    if op == "Identity":
        return img
    if op == "AutoContrast":
        return ImageOps.autocontrast(img)
    if op == "Equalize":
        return ImageOps.equalize(img)
    if op in ("Brightness", "Sharpness"):
        factor = 0.1 + 1.8 * level
        enhancer = ImageEnhance.Brightness if op == "Brightness" else ImageEnhance.Sharpness
        return img if factor == 1.0 else enhancer(img).enhance(factor)
    if op in ("ShearX", "ShearY"):
        s = _signed(0.3 * level, rng)
        coeffs = (1, s, 0, 0, 1, 0) if op == "ShearX" else (1, 0, 0, s, 1, 0)
        return img.transform(img.size, Image.AFFINE, coeffs, Image.BILINEAR, fillcolor=FILL)
    if op in ("TranslateX", "TranslateY"):
        t = _signed(10.0 * level, rng)
        coeffs = (1, 0, t, 0, 1, 0) if op == "TranslateX" else (1, 0, 0, 0, 1, t)
        return img.transform(img.size, Image.AFFINE, coeffs, Image.BILINEAR, fillcolor=FILL)
    if op == "Rotate":
        return img.rotate(_signed(30.0 * level, rng), Image.BILINEAR, fillcolor=FILL)
    raise ValueError(f"unknown RandAugment op {op!r}; expected one of {RANDAUG_OPS}")


def rand_augment(img: Image.Image, rng: np.random.Generator, num_ops: int = 2, magnitude: float = 5,
                 ops: Sequence[str] = RANDAUG_OPS) -> Image.Image:
    for op in rng.choice(list(ops), size=num_ops):
        if rng.random() < 0.5:
            img = _apply(img, str(op), magnitude, rng)
    return img
