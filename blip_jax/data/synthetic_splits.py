"""What the synthetic VQA and NLVR configs (synthetic_vqa.py, synthetic_nlvr.py) share: the checks
of their common fields, the split sizes, and the first id of each split."""

from __future__ import annotations

from blip_jax.data.synthetic import check_render_options

SPLITS = ("train", "val", "test")  # in id order


class SplitsMixin:
    """For a frozen config dataclass with the fields below; adds no dataclass fields, so the
    config's own field order (and constructor) stays as it declares it."""

    num_images: int             # train images (or pairs)
    eval_images: int | None     # val and test each; None: num_images // 10, at least 1
    image_size: int
    seed: int

    def _check_splits(self) -> None:
        """The checks of the shared fields; a config's __post_init__ calls it, then its own."""
        if self.num_images < 1 or (self.eval_images is not None and self.eval_images < 1):
            raise ValueError(f"num_images and eval_images must be >= 1, got {self.num_images}, {self.eval_images}")
        check_render_options(self.image_size, self.seed)

    def split_sizes(self) -> dict[str, int]:
        evals = self.eval_images if self.eval_images is not None else max(1, self.num_images // 10)
        return {"train": self.num_images, "val": evals, "test": evals}

    def _first_id(self, split: str, dataset: str) -> int:
        """Ids are unique across splits: a split's first id is the sum of the earlier splits' sizes."""
        if split not in SPLITS:
            raise ValueError(f"unknown synthetic {dataset} split {split!r}; expected one of {list(SPLITS)}")
        sizes = self.split_sizes()
        return sum(sizes[s] for s in SPLITS[:SPLITS.index(split)])
