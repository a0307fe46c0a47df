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
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Subset
from torchvision.transforms import v2

from colddiff.io import DEFAULT_MAX_PIXELS, ImageReadError, image_to_tensor, match_channels, read_image

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "EMBEDDED_MNIST",
    "ImageTransform",
    "ImageFolder",
    "EmbeddedMNIST",
    "ImagesOnly",
    "TORCHVISION_SPLITS",
    "torchvision_dataset",
    "PairedDataset",
    "DatasetSource",
    "native_shapes",
    "find_images",
    "unpack_batch",
    "stack_items",
    "random_items",
    "with_partners",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
EMBEDDED_MNIST = Path(__file__).resolve().parent / "assets" / "mnist_subset.npz"


class ImageTransform:
    """An image -> float tensor ``(channels, size, size)`` in ``[0, 1]``, for training and evaluation data.

    Accepts a float tensor ``(C, H, W)`` in ``[0, 1]`` (what :func:`colddiff.io.read_image` returns), a ``uint8``
    tensor (scaled by ``1 / 255``), or a PIL image (read by :func:`colddiff.io.image_to_tensor`: 8-bit, 16-bit and
    float pixels scaled to ``[0, 1]``, never clipped; transparent images refused).

    Training and evaluation data are **converted** to ``channels``: grayscale images are replicated to RGB and RGB
    images turned into ITU-R 601-2 luma (so an RGB folder can train a grayscale model).  This conversion is for
    datasets only; reading a user's images for restoration is strict (``read_image(path, channels)`` refuses a
    mismatch unless asked to convert).

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
            image = image_to_tensor(image, name=getattr(image, "filename", "") or "<PIL image>")
        elif not isinstance(image, Tensor):
            raise TypeError(f"ImageTransform expects a PIL image or a tensor, got {type(image).__name__}")
        if image.ndim == 2:
            image = image[None]
        if image.ndim != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"ImageTransform expects an image (C, H, W) with 1 or 3 channels, got shape "
                             f"{tuple(image.shape)}")
        if image.shape[0] != self.channels:
            if not image.is_floating_point():
                image = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
            image = match_channels(image, self.channels)
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


class ImageFolder(Dataset):
    """Images from a list of files, read by :func:`colddiff.io.read_image`; a file that cannot be read raises an
    error naming it.

    Each file is read at its own channels and bit depth (16-bit and float files scaled to ``[0, 1]``, never
    clipped) and passed to ``transform`` as a float tensor ``(C, H, W)``; :class:`ImageTransform` then converts to
    the model's channels (see there).

    Args:
        files: image paths.
        transform: applied to each image, a float tensor ``(C, H, W)`` in ``[0, 1]``.
        skip_bad: check every file up front and drop those that :func:`~colddiff.io.read_image` refuses (they do not
            decode, exceed ``max_pixels``, hold values outside ``[0, 1]``, or are transparent without
            ``alpha_background``), logging how many (off: the first such file raises when it is read).
        max_pixels: the pixel limit of :func:`~colddiff.io.read_image` (``None``: no limit).
        alpha_background: grey level to composite transparent images onto (``None``: refuse them).
    """

    def __init__(self, files: Sequence[Path], transform: Callable[[Tensor], Tensor], skip_bad: bool = False, *,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, alpha_background: float | None = None) -> None:
        files = list(files)
        self.max_pixels = max_pixels
        self.alpha_background = alpha_background
        self.skipped: list[tuple[Path, str]] = []
        if skip_bad:
            kept = []
            for path in files:
                reason = self._check(path)
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

    def _read(self, path: Path) -> Tensor:
        return read_image(path, max_pixels=self.max_pixels, alpha_background=self.alpha_background)

    def _check(self, path: Path) -> str | None:
        """``None`` if the file reads, else the reason."""
        try:
            self._read(path)
        except ImageReadError as err:
            return err.reason
        except OSError as err:  # vanished or unreadable (permissions)
            return str(err) or type(err).__name__
        return None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Tensor:
        path = self.files[index]
        try:
            image = self._read(path)
        except (ImageReadError, OSError) as err:
            reason = err.reason if isinstance(err, ImageReadError) else (str(err) or type(err).__name__)
            raise ValueError(
                f"cannot read image file {str(path)!r}: {reason} "
                "(remove it, or set skip_bad: true to skip unreadable files)"
            ) from err
        return self.transform(image)


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


#: how each torchvision dataset names its splits; validation uses the official held-out split
TORCHVISION_SPLITS: dict[str, dict[str, dict[str, Any]]] = {
    "MNIST": {"train": {"train": True}, "val": {"train": False}, "test": {"train": False}},
    "FashionMNIST": {"train": {"train": True}, "val": {"train": False}, "test": {"train": False}},
    "CIFAR10": {"train": {"train": True}, "val": {"train": False}, "test": {"train": False}},
    "CelebA": {"train": {"split": "train"}, "val": {"split": "valid"}, "test": {"split": "test"}},
    "Flowers102": {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}},
}


def torchvision_dataset(name: str, split: str, transform: Callable, root: str | os.PathLike = "data",
                        download: bool = False) -> Dataset:
    """The images of torchvision's dataset ``name`` (MNIST, FashionMNIST, CIFAR10, CelebA or Flowers102) at
    ``split`` (``train``, ``val``: the official held-out split, ``test``), labels dropped, through ``transform``."""
    if name not in TORCHVISION_SPLITS or split not in TORCHVISION_SPLITS[name]:
        raise ValueError(f"torchvision dataset must be one of {sorted(TORCHVISION_SPLITS)} with a split train, val or "
                         f"test, got {name!r}, {split!r}")
    import torchvision.datasets as tvd

    kwargs: dict[str, Any] = dict(TORCHVISION_SPLITS[name][split])
    if name == "CelebA":
        kwargs["target_type"] = []
    try:
        dataset = getattr(tvd, name)(root=root, download=download, **kwargs)
    except RuntimeError as err:
        if "download" in str(err).lower() or "not found" in str(err).lower():
            raise FileNotFoundError(
                f"{name} was not found under root {str(root)!r} ({err}). Set download: true on a machine with "
                "internet, or place the files where torchvision expects them under that root."
            ) from err
        raise
    return ImagesOnly(dataset, transform)


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


def with_partners(context: Mapping[str, Tensor], context_keys: Sequence[str], partners: Dataset | None, n: int,
                  generator: torch.Generator | None = None, hint: str = "pass partners=") -> dict[str, Tensor]:
    """A batch's degradation ``context`` with mixing partners drawn from ``partners`` (:func:`random_items`) when the
    degradation takes them (``"partner"`` in its ``context_keys``) and the batch has none: the one place they are
    drawn for a given batch (evaluation, ``sample.py``).

    Raises:
        ValueError: partners are needed and ``partners`` is ``None`` (the message ends with ``hint``).
    """
    context = dict(context)
    if "partner" in context_keys and "partner" not in context:
        if partners is None:
            raise ValueError(f"this mixing model needs partner images: {hint}")
        context["partner"] = unpack_batch(random_items(partners, n, generator))[0]
    return context


def _file_shape(path: Path) -> tuple[int, int, int]:
    with Image.open(path) as image:  # the header only: nothing is decoded
        width, height = image.size
        bands = image.getbands()
    colour = len([b for b in bands if b != "A"]) >= 3 and bands != ("P",)
    return height, width, 3 if colour or bands == ("P",) else 1


def native_shapes(dataset: Dataset, limit: int = 256) -> set[tuple[int, int, int]]:
    """The shapes ``(height, width, channels)`` of a dataset's images as stored, before its transform resizes or
    converts them (from up to ``limit`` items; palette images count as colour).  Empty when unknown.

    Tools use it to refuse, or to report, a resize or a grayscale/RGB conversion that a user did not ask for.
    """
    if isinstance(dataset, Subset):
        return native_shapes(dataset.dataset, limit)
    if isinstance(dataset, PairedDataset):
        return native_shapes(dataset.target, limit)
    if isinstance(dataset, ImageFolder):
        return {_file_shape(path) for path in dataset.files[:limit]}
    if isinstance(dataset, EmbeddedMNIST):
        return {(int(dataset.images.shape[-2]), int(dataset.images.shape[-1]), 1)}
    if isinstance(dataset, ImagesOnly):
        shapes = set()
        for index in range(min(limit, len(dataset.dataset))):
            item = dataset.dataset[index]
            image = item[0] if isinstance(item, (tuple, list)) else item
            if isinstance(image, Image.Image):
                bands = image.getbands()
                shapes.add((image.size[1], image.size[0], 3 if len(bands) >= 3 else 1))
            elif isinstance(image, Tensor):
                shape = image.shape if image.ndim == 3 else (1, *image.shape)
                shapes.add((int(shape[-2]), int(shape[-1]), int(shape[0])))
        return shapes
    return set()


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
