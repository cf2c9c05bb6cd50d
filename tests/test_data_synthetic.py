"""The synthetic data: deterministic by seed, exact noise rate and labels, captions true of the
rendered pixels, noisy captions false, and the TFDS dataset's splits.

Captions are checked with this file's own parser against what is measured in the decoded JPEG
(colour masks: centroid, extent, fill ratio), not against the generator's own truth function.
"""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from scipy import ndimage
from scipy.spatial import ConvexHull

from blip_jax.data import prepare, synthetic
from blip_jax.tokenizer import pre_caption

S = 96
COLOR_RE = "|".join(synthetic.COLORS)
SHAPE_RE = "|".join(synthetic.SHAPES)
NP = re.compile(rf"\b(?:a|an|the) (?:(small|little|large|big) )?({COLOR_RE}) ({SHAPE_RE})\b")
REL = re.compile(r"^ (?:is )?(to the left of|left of|on the left of|to the right of|right of|on the right of|"
                 r"above|over|below|under|beneath) $")
REL_DIR = {"to the left of": "left", "left of": "left", "on the left of": "left", "to the right of": "right",
           "right of": "right", "on the right of": "right", "above": "above", "over": "above", "below": "below",
           "under": "below", "beneath": "below"}
BG_RE = re.compile(r"\b(gray|beige|light blue|light green|dark gray|pink) background\b")
COUNT_RE = re.compile(r"\b(one|two|three) shapes?\b")


def shape_of(mask: np.ndarray) -> str:
    """Shape kind from the mask's geometry: solidity (area / convex hull), how far the centroid
    sits below the box centre (a triangle, apex up) and fill (area / bounding box). Thresholds lie
    between the ranges measured over 300 rendered scenes at 96 px (circle fill <= 0.86 < square)."""
    ys, xs = np.nonzero(mask)
    h, w = np.ptp(ys) + 1, np.ptp(xs) + 1
    corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)])
    solidity = mask.sum() / ConvexHull(corners).volume
    drop = (ys.mean() - (ys.min() + ys.max()) / 2) / h
    if solidity < 0.71:
        return "star"
    if drop > 0.085:
        return "triangle"
    if solidity < 0.875:
        return "cross"
    return "circle" if mask.sum() / (h * w) < 0.87 else "square"


def parse(text: str) -> dict:
    text = pre_caption(text)
    nps = list(NP.finditer(text))
    claims = {"objects": [(m.group(2), m.group(3), m.group(1)) for m in nps], "relations": [],
              "count": None, "background": None}
    for a, b in zip(nps, nps[1:]):
        rel = REL.match(text[a.end():b.start()])
        if rel:
            claims["relations"].append((a.group(2), REL_DIR[rel.group(1)], b.group(2)))
    if m := COUNT_RE.search(text):
        claims["count"] = ["one", "two", "three"].index(m.group(1)) + 1
    if m := BG_RE.search(text):
        claims["background"] = m.group(1)
    return claims


def measure(pixels: np.ndarray) -> dict:
    """Objects by colour in a rendered image: kind, size (extent), centroid; and the background."""
    palette = {**synthetic.COLORS, **{f"bg:{k}": v for k, v in synthetic.BACKGROUNDS.items()}}
    names = list(palette)
    dist = np.linalg.norm(pixels[..., None, :].astype(np.float32) - np.array(list(palette.values()), np.float32),
                          axis=-1)
    nearest = dist.argmin(-1)
    objects, covered = {}, np.zeros(pixels.shape[:2], bool)
    for c, color in enumerate(names):
        if color.startswith("bg:"):
            continue
        labels, n = ndimage.label((nearest == c) & (dist[..., c] < 60))
        if n == 0:
            continue
        sizes = ndimage.sum(np.ones_like(labels), labels, range(1, n + 1))
        if sizes.max() < 30:  # stray edge pixels blended between two colours
            continue
        mask = labels == 1 + int(sizes.argmax())
        covered |= ndimage.binary_dilation(mask, iterations=2)
        ys, xs = np.nonzero(mask)
        extent = max(np.ptp(ys), np.ptp(xs)) + 1  # small <= 2 * 0.095 * 1.08 = 0.205 S < 0.22 S < 0.25 S <= large
        objects[color] = {"kind": shape_of(mask), "size": "large" if extent > 0.22 * len(pixels) else "small",
                          "x": xs.mean(), "y": ys.mean()}
    bg = np.median(pixels[~covered], axis=0)
    background = min(synthetic.BACKGROUNDS, key=lambda k: np.linalg.norm(bg - synthetic.BACKGROUNDS[k]))
    return {"objects": objects, "background": background}


def true_of(claims: dict, world: dict, min_offset: float = 0.0) -> bool:
    """Every claim holds in the world (measured objects by colour, or a scene turned into that form)."""
    objs = world["objects"]
    for color, kind, size in claims["objects"]:
        o = objs.get(color)
        if o is None or o["kind"] != kind or (size and o["size"] != {"little": "small", "big": "large"}.get(size, size)):
            return False
    for a, rel, b in claims["relations"]:
        oa, ob = objs[a], objs[b]
        offset = {"left": ob["x"] - oa["x"], "right": oa["x"] - ob["x"], "above": ob["y"] - oa["y"],
                  "below": oa["y"] - ob["y"]}[rel]
        if offset <= min_offset:
            return False
    if claims["count"] is not None and claims["count"] != len(objs):
        return False
    return claims["background"] in (None, world["background"])


def scene_world(scene: synthetic.Scene) -> dict:
    return {"objects": {s.color: {"kind": s.kind, "size": s.size, "x": s.x, "y": s.y} for s in scene.shapes},
            "background": scene.background}


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_same_seed_same_data_other_seed_other_data():
    def first(seed):
        ex = list(synthetic.generate(synthetic.SyntheticConfig(num_images=30, seed=seed), "train_web"))
        return [e.captions for e in ex], [e.noise for e in ex], ex[0].image_bytes()
    assert first(5) == first(5)
    assert first(5)[0] != first(6)[0] and first(5)[2] != first(6)[2]


def test_rendered_pixels_are_those_every_result_was_made_with():
    """synthetic.render's pixels for fixed scenes, as first rendered (blip_jax 5f2a8e8, where the
    background was one broadcast [n*k, n*k, 3] float64 expression): every dataset, and so every
    result in the README, is made of them; a faster render must give the same bytes."""
    import hashlib

    digest = hashlib.sha256()
    for size in (96, 64):
        rng = np.random.default_rng(7)
        for _ in range(20):
            digest.update(np.asarray(synthetic.render(synthetic.sample_scene(rng, size))).tobytes())
    assert digest.hexdigest() == "4e3c29d1bc33f2167aeafec98a128c67a3d60f5e90e957fc60b07b13d8851595"


def test_rendered_images_match_their_scene():
    cfg = synthetic.SyntheticConfig(num_images=40, seed=1)
    checked = 0
    for ex in list(synthetic.generate(cfg, "train_web"))[:40]:
        seen = measure(decode(ex.image_bytes()))
        assert seen["background"] == ex.scene.background
        assert set(seen["objects"]) == {s.color for s in ex.scene.shapes}, ex.scene
        for s in ex.scene.shapes:
            o = seen["objects"][s.color]
            assert (o["kind"], o["size"]) == (s.kind, s.size), (s, o)
            assert abs(o["x"] - s.x) < 1.5 and abs(o["y"] - s.y) < 1.5, (s, o)  # pixels (96 px image)
            checked += 1
    assert checked >= 60


def test_clean_captions_are_true_of_the_rendered_image():
    cfg = synthetic.SyntheticConfig(num_images=40, seed=2)
    n_relations = 0
    for split in ("val", "train_clean"):
        for ex in synthetic.generate(cfg, split):
            seen = measure(decode(ex.image_bytes()))
            assert len(ex.captions) == synthetic.CAPTIONS_PER_IMAGE
            for text in ex.captions:
                claims = parse(text)
                assert claims["objects"], text  # every clean caption names at least one shape
                # stated relations hold with a clear margin in the pixels, not just barely
                assert true_of(claims, seen, min_offset=0.1 * S), (text, seen)
                n_relations += len(claims["relations"])
    assert n_relations >= 10


def test_noise_rate_and_labels_match_the_configuration():
    for rate in (0.4, 0.25):
        cfg = synthetic.SyntheticConfig(num_images=300, noise_rate=rate, seed=3)
        examples = list(synthetic.generate(cfg, "train_web"))
        labels = np.array([e.noise for e in examples])
        assert (labels > 0).sum() == round(rate * 300)
        counts = np.bincount(labels, minlength=4)[1:]
        assert len(counts) == 3 and counts.min() >= counts.max() - 2, counts  # the three kinds in turn
        for e in examples:
            claims = parse(e.captions[0])
            kind = synthetic.WEB_TEXT_KINDS[e.noise]
            world = scene_world(e.scene)
            if kind == "descriptive":
                assert true_of(claims, world) and pre_caption(e.captions[0]).endswith(pre_caption(e.clean_caption))
            elif kind == "alt_text":
                assert not claims["objects"] and not claims["count"], e.captions
            else:  # another image's caption, or one attribute changed: names shapes, but is false here
                assert claims["objects"] and not true_of(claims, world), (kind, e.captions, e.scene)
                assert true_of(parse(e.clean_caption), world)


WEB_PREFIXES = ("photo of ", "image of ", "picture of ")  # synthetic.web_style's


def _strip_web_style(text: str) -> str:
    text = pre_caption(text).rstrip(" ,!")
    for prefix in WEB_PREFIXES:
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


def test_web_text_model_rates_kinds_and_truth():
    """Every kind at its documented rate (noise kinds share noise_rate in turn, nondescript
    kinds share nondescript_rate), true kinds true of their image and the false ones false, by
    synthetic.is_true on the parsed text and, for the nondescript kinds, by what the decoded
    pixels show."""
    n, noise, vague = 420, 0.35, 0.45
    cfg = synthetic.SyntheticConfig(num_images=n, noise_rate=noise, nondescript_rate=vague, seed=5)
    examples = list(synthetic.generate(cfg, "train_web"))
    counts = {k: 0 for k in synthetic.WEB_TEXT_KINDS}
    for e in examples:
        counts[synthetic.WEB_TEXT_KINDS[e.noise]] += 1
    # The three noise kinds get round(0.35 * 420) = 147 = 49 each, the nondescript 189 = 63 each;
    # other_caption falls back to wrong_attribute only when no other caption is false here.
    assert sum(counts[k] for k in synthetic.NOISE_KINDS) == round(noise * n)
    assert all(counts[k] == round(vague * n) // 3 for k in synthetic.NONDESCRIPT_KINDS), counts
    assert counts["descriptive"] == n - round(noise * n) - round(vague * n)
    assert abs(counts["other_caption"] - 49) <= 2 and counts["alt_text"] == 49, counts
    seen_forms = set()
    for e in examples:
        kind, text = synthetic.WEB_TEXT_KINDS[e.noise], _strip_web_style(e.captions[0])
        caption = synthetic.parse_caption(text)
        if kind == "alt_text":
            assert caption is None, text  # claims nothing the grammar can read
            continue
        assert caption is not None, (kind, text)
        assert synthetic.is_true(caption, e.scene) == (kind in synthetic.TRUE_KINDS), (kind, text, e.scene)
        if kind not in synthetic.NONDESCRIPT_KINDS:
            continue
        seen = measure(decode(e.image_bytes()))  # colour -> kind / size / centroid, background
        colors = {m.color for m in caption.mentions if m.color}
        kinds = {m.kind for m in caption.mentions if m.kind}
        assert colors <= set(seen["objects"]) and kinds <= {o["kind"] for o in seen["objects"].values()}, \
            (text, seen)
        for m in caption.mentions:  # a named colour and kind belong to one shape
            if m.color and m.kind:
                assert seen["objects"][m.color]["kind"] == m.kind, (text, seen)
        if caption.count is not None:
            assert caption.count == len(seen["objects"]), (text, seen)
        if caption.background is not None:
            assert caption.background == seen["background"], (text, seen)
        # nondescript: at most one full colour + kind mention, never a relation
        assert not caption.relations and sum(bool(m.color and m.kind) for m in caption.mentions) <= 1
        seen_forms.add((kind, bool(colors), bool(kinds), caption.count is not None,
                        caption.background is not None))
    assert len(seen_forms) == 6, seen_forms  # partial 1, hypernym 3, one_attribute 2 forms


def test_parse_caption_reads_the_language_and_rejects_the_rest():
    cfg = synthetic.SyntheticConfig(num_images=60, seed=2)
    for split in ("train_clean", "val"):
        for ex in synthetic.generate(cfg, split):
            for text in ex.captions:
                caption = synthetic.parse_caption(text)
                assert caption is not None and synthetic.is_true(caption, ex.scene), text
    scene = synthetic.Scene(96, "gray", (1.0, 0.0, 0.0), 0, (
        synthetic.Shape("circle", "red", "large", 20.0, 50.0, 15.0),
        synthetic.Shape("square", "blue", "small", 75.0, 50.0, 9.0)))
    truth = {"a big red circle to the left of a small blue square": True,
             "a red circle is right of a blue square": False,
             "a red circle and a red circle": False,  # two mentions claim two shapes
             "two shapes, a red shape and a blue square": True,
             "three shapes": False, "shapes on a gray background": True,
             "a shape on a pink background": False, "blue": True, "star": False,
             "the red circle left of the blue square": True}
    for text, expected in truth.items():
        caption = synthetic.parse_caption(text)
        assert caption is not None and synthetic.is_true(caption, scene) == expected, text
    for text in ("a red circle near a blue square", "a red circle above", "red circle",
                 "a picture of a red circle", "blue square", "", "stock photo"):
        assert synthetic.parse_caption(text) is None, text


def test_tfds_dataset_splits_and_noise_labels(tmp_path, capsys):
    data_dir = str(tmp_path)
    rc = prepare.main(["--source", "synthetic", "--data_dir", data_dir, "--num_images", "30",
                       "--noise_rate", "0.5", "--seed", "4"])
    out = capsys.readouterr().out
    assert rc == 0 and "train_web: 30 records, 30 images" in out and "skipped nothing" in out, out
    name = "blip_synthetic/n30_noise0.5_seed4_px96"
    assert prepare.ensure_synthetic(data_dir, num_images=30, noise_rate=0.5, seed=4) == name  # reused as is
    assert prepare.synthetic_dataset_name(num_images=30, noise_rate=0.5, seed=4) == name
    ds = tfds.data_source(name, data_dir=data_dir)
    web = [ds["train_web"][i] for i in range(30)]
    assert sum(r["noise"] > 0 for r in web) == 15
    cfg = synthetic.SyntheticConfig(num_images=30, noise_rate=0.5, seed=4)
    assert [r["noise"] for r in web] == [e.noise for e in synthetic.generate(cfg, "train_web")]
    clean = [ds["train_clean"][i] for i in range(len(ds["train_clean"]))]
    assert len(clean) == 6 * 5 and all(len(r["captions"]) == 1 for r in clean)
    assert [r["image_id"] for r in clean] == [30 + i // 5 for i in range(30)]  # ids unique across splits
    for split in ("val", "test"):
        recs = [ds[split][i] for i in range(len(ds[split]))]
        assert len(recs) == 3 and all(len(r["captions"]) == 5 for r in recs)
    scene = synthetic.Scene.from_json(web[0]["scene"].decode())
    assert measure(decode(web[0]["image"]))["background"] == scene.background


def test_config_validation():
    with pytest.raises(ValueError, match="noise_rate must be in"):
        synthetic.SyntheticConfig(noise_rate=1.5)
    with pytest.raises(ValueError, match="nondescript_rate must be in"):
        synthetic.SyntheticConfig(noise_rate=0.6, nondescript_rate=0.5)
    with pytest.raises(ValueError, match="image_size must be >= 32"):
        synthetic.SyntheticConfig(image_size=16)
