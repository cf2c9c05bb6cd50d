"""Image loading for inference and evaluation: bicubic resize to a square, CLIP normalisation."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

# Normalisation of BLIP (the CLIP statistics), REFERENCE §2.
MEAN = np.array((0.48145466, 0.4578275, 0.40821073), np.float32)
STD = np.array((0.26862954, 0.26130258, 0.27577711), np.float32)


class ImageError(ValueError):
    """An image that cannot be read: names the file and the reason."""


def open_rgb(path: str) -> Image.Image:
    """Opens `path` as RGB, with an ImageError naming the file when it is missing or corrupt."""
    if not os.path.exists(path):
        raise ImageError(f"{path}: no such image file")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: not a readable image ({e})") from e


def normalize(pixels: np.ndarray) -> np.ndarray:
    """uint8 or [0, 1] float HWC pixels -> normalised float32."""
    x = np.asarray(pixels, np.float32)
    if np.asarray(pixels).dtype == np.uint8:
        x = x / 255.0
    return (x - MEAN) / STD


def preprocess(img: Image.Image, size: int) -> np.ndarray:
    """PIL image -> float32 [size, size, 3], bicubic resize (evaluation transform)."""
    img = img.convert("RGB").resize((size, size), Image.BICUBIC)
    return normalize(np.asarray(img, np.uint8))


def load_image(path: str, size: int) -> np.ndarray:
    return preprocess(open_rgb(path), size)
