"""Datasets, the image transform and the batch format, in torch alone (no Lightning).

Every dataset yields images as float tensors ``(C, H, W)`` in ``[0, 1]``.  **Batch format**: a batch is a tensor
``(B, C, H, W)``, an ``(images, labels)`` pair, or a dict ``{"image": x0, <context>...}`` whose other entries are the
degradation's context under the names it declares in ``context_keys`` (``{"image": x0, "partner": z}`` for
:class:`~colddiff.degradations.Mix`).  :func:`unpack_batch` is the one place that reads batches; :func:`stack_items`
makes a batch of dataset items.

The Lightning data modules that serve these datasets for training are in :mod:`colddiff.data`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "EMBEDDED_MNIST",
    "ImageTransform",
    "ImageFolder",
    "EmbeddedMNIST",
    "ImagesOnly",
    "PairedDataset",
    "DatasetSource",
    "find_images",
    "unpack_batch",
    "stack_items",
    "random_items",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
EMBEDDED_MNIST = Path(__file__).resolve().parent / "assets" / "mnist_subset.npz"


class ImageTransform:
    """PIL image or ``uint8``/float tensor -> float tensor ``(channels, size, size)`` in ``[0, 1]``.

    Training: optional centre pre-crop, resize of the shorter side to ``round(crop_scale * size)``, random crop to
    ``size``, optional horizontal flip.  Evaluation: pre-crop, resize to ``size``, centre crop.
    """

    def __init__(self, image_size: int, channels: int, train: bool, hflip: bool = True, crop_scale: float = 1.12,
                 pre_crop: int | None = None) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
        if crop_scale < 1:
            raise ValueError(f"crop_scale must be >= 1, got {crop_scale}")
        self.channels = channels
        steps: list[Any] = [v2.ToImage()]
        if pre_crop:
            steps.append(v2.CenterCrop(pre_crop))
        if train:
            steps += [v2.Resize(round(image_size * crop_scale), antialias=True), v2.RandomCrop(image_size)]
            if hflip:
                steps.append(v2.RandomHorizontalFlip())
        else:
            steps += [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
        steps.append(v2.ToDtype(torch.float32, scale=True))
        self.transform = v2.Compose(steps)

    def __call__(self, image: Image.Image | Tensor) -> Tensor:
        if isinstance(image, Image.Image):
            image = image.convert("L" if self.channels == 1 else "RGB")
        elif isinstance(image, Tensor):
            if image.ndim == 2:
                image = image[None]
            if image.shape[0] != self.channels:
                image = image.expand(3, -1, -1) if self.channels == 3 else image.float().mean(0, keepdim=True)
        return self.transform(image).clamp(0.0, 1.0)


def find_images(root: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files below ``root`` (recursive, sorted); clear errors for a missing or empty root."""
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"image folder {str(root)!r} is not a directory")
    suffixes = {e.lower() for e in extensions}
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise ValueError(f"image folder {str(root)!r} contains no images (looked for {', '.join(sorted(suffixes))})")
    return files


def _check_image_file(path: Path) -> str | None:
    """``None`` if the file decodes, else the reason."""
    try:
        with Image.open(path) as img:
            img.load()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        return str(err) or type(err).__name__
    return None


class ImageFolder(Dataset):
    """Images from a list of files; a file that cannot be read raises an error naming it.

    Args:
        files: image paths.
        transform: applied to each PIL image.
        skip_bad: check every file up front and drop those that do not decode, logging how many (off: the first
            unreadable file raises when it is read).
    """

    def __init__(self, files: Sequence[Path], transform: Callable[[Image.Image], Tensor], skip_bad: bool = False):
        files = list(files)
        self.skipped: list[tuple[Path, str]] = []
        if skip_bad:
            kept = []
            for path in files:
                reason = _check_image_file(path)
                if reason is None:
                    kept.append(path)
                else:
                    self.skipped.append((path, reason))
            if self.skipped:
                log.warning("skipped %d unreadable image file(s) of %d, e.g. %s (%s)", len(self.skipped), len(files),
                            self.skipped[0][0], self.skipped[0][1])
            files = kept
            if not files:
                raise ValueError("no readable images left after skipping unreadable files")
        self.files = files
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Tensor:
        path = self.files[index]
        try:
            with Image.open(path) as img:
                img.load()
                return self.transform(img)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
            raise ValueError(
                f"cannot read image file {str(path)!r}: {err or type(err).__name__} "
                "(remove it, or set skip_bad: true to skip unreadable files)"
            ) from err


class EmbeddedMNIST(Dataset):
    """The MNIST digits shipped with colddiff (6,000 train / 1,000 test)."""

    def __init__(self, split: Literal["train", "test"], transform: Callable[[Tensor], Tensor]) -> None:
        with np.load(EMBEDDED_MNIST) as data:
            self.images = torch.from_numpy(data[f"{split}_images"].copy())
            self.labels = torch.from_numpy(data[f"{split}_labels"].astype(np.int64))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tensor:
        return self.transform(self.images[index][None])


class ImagesOnly(Dataset):
    """Drop the labels of an ``(image, target)`` dataset and apply a transform."""

    def __init__(self, dataset: Dataset, transform: Callable) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tensor:
        item = self.dataset[index]
        return self.transform(item[0] if isinstance(item, (tuple, list)) else item)


class PairedDataset(Dataset):
    """``{"image": target[i], "partner": partner[j]}``: random ``j`` for training, a fixed ``j`` for evaluation."""

    def __init__(self, target: Dataset, partner: Dataset, random_pairs: bool, seed: int = 0) -> None:
        if len(partner) == 0:
            raise ValueError("the partner dataset is empty")
        self.target, self.partner, self.random_pairs = target, partner, random_pairs
        self.fixed = torch.randint(len(partner), (len(target),), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.target)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        j = int(torch.randint(len(self.partner), ())) if self.random_pairs else int(self.fixed[index])
        return {"image": self.target[index], "partner": self.partner[j]}


# ------------------------------------------------------------------------------------------------ batches
def unpack_batch(batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """``x0`` and the degradation context of a batch (see the module docstring for the format).

    Returns:
        The images and a dict of context tensors (empty for tensor and ``(images, labels)`` batches).
    """
    if isinstance(batch, Tensor):
        return batch, {}
    if isinstance(batch, Mapping):
        if "image" not in batch:
            raise ValueError(f"a dict batch needs an 'image' entry, got keys {sorted(batch)}")
        return batch["image"], {k: v for k, v in batch.items() if k != "image"}
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0], {}
    raise TypeError(f"cannot read images from a batch of type {type(batch).__name__}")


def stack_items(items: Sequence[Any]) -> Any:
    """A batch from dataset items: stacked tensors, or a dict of stacked tensors for dict items."""
    if not items:
        raise ValueError("cannot make a batch of no items")
    if isinstance(items[0], Mapping):
        return {k: torch.stack([item[k] for item in items]) for k in items[0]}
    if isinstance(items[0], (tuple, list)):
        return torch.stack([item[0] for item in items])
    return torch.stack(list(items))


def random_items(dataset: Dataset, n: int, generator: torch.Generator | None = None) -> Any:
    """A batch of ``n`` items drawn uniformly with replacement (seeded by ``generator``), e.g. mixing partners."""
    if len(dataset) == 0:
        raise ValueError("cannot draw items from an empty dataset")
    index = torch.randint(len(dataset), (n,), generator=generator)
    return stack_items([dataset[int(i)] for i in index])


class DatasetSource:
    """Datasets as a prior's data source (:class:`colddiff.priors.PriorSource`), for code that has no data module.

    Args:
        images: a dataset of clean training images (items as the batch format allows); a seeded random subset of up
            to ``limit`` is used to fit a prior.
        partners: a dataset of partner images (mixing models).
        seed: seed of the subset.
    """

    def __init__(self, images: Dataset | None = None, partners: Dataset | None = None, seed: int = 0) -> None:
        self.images, self.partners, self.seed = images, partners, seed

    def prior_images(self, limit: int) -> Tensor:
        if self.images is None or len(self.images) == 0:
            raise ValueError("fitting this prior needs training images, and none were given")
        order = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(self.seed))[:limit]
        return unpack_batch(stack_items([self.images[int(i)] for i in order]))[0]

    def partner_dataset(self) -> Dataset:
        if self.partners is None or len(self.partners) == 0:
            raise ValueError("this prior draws partner images (a mixing model), and none were given: pass a folder "
                             "of partner images (sample.py/evaluate.py: --partner-root)")
        return self.partners
