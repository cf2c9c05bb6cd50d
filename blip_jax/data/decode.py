"""Encoded image bytes -> RGB PIL image, with errors that name where the bytes came from."""

from __future__ import annotations

import io
import os

from PIL import Image, UnidentifiedImageError

from blip_jax.image import ImageError

_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def decode_rgb(data: bytes, where: str, min_size: tuple[int, int] | None = None) -> Image.Image:
    """Decodes fully (a truncated file fails here, not later) and converts to RGB.

    min_size lets JPEG decode at a reduced scale (DCT scaling, 1/2 to 1/8) while staying at least
    that large: most of the cost of a big JPEG, for pixels a small crop would throw away. The
    whole entropy-coded stream is still read, so truncation is still detected.
    """
    if not data:
        raise ImageError(f"{where}: empty image file")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if min_size is not None and img.format == "JPEG":
                img.draft("RGB", min_size)
            img.load()
            return img.convert("RGB")
    except UnidentifiedImageError as e:  # its message shows only a BytesIO repr
        raise ImageError(f"{where}: not a readable image (not a known image format)") from e
    except _DECODE_ERRORS as e:
        raise ImageError(f"{where}: not a readable image ({e})") from e


def read_checked(path: str, verify: bool = True) -> bytes:
    """The file's bytes, after checking they decode (a cheap 1/8-scale decode for JPEG) unless
    verify=False (then only the pipeline's decode catches a corrupt image)."""
    if not os.path.isfile(path):
        raise ImageError(f"{path}: missing image file")
    with open(path, "rb") as f:
        data = f.read()
    if verify:
        decode_rgb(data, path, min_size=(1, 1))
    elif not data:
        raise ImageError(f"{path}: empty image file")
    return data
