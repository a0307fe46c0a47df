"""LightningDataModules yielding images as float tensors ``(C, H, W)`` in ``[0, 1]``.

* :class:`EmbeddedMNISTDataModule`: 6,000 training and 1,000 test MNIST digits shipped inside the package (the
  default data; works offline anywhere).
* :class:`TorchvisionDataModule`: MNIST, FashionMNIST, CIFAR10, CelebA, Flowers102 by name (``download`` switch).
* :class:`ImageFolderDataModule`: any folder of images, searched recursively, with an optional train/val split.
* :class:`PairedFolderDataModule`: a target folder and a partner folder, for :class:`~colddiff.degradations.Mix`;
  batches are dicts ``{"image": x0, "partner": z}``.

All share the paper's training augmentation (resize to ``crop_scale * image_size``, random crop, optional
horizontal flip); evaluation splits are resized and centre-cropped.  Grayscale or RGB is chosen by ``channels``.
The datasets, the transform and the batch format themselves are in :mod:`colddiff.datasets` (torch only).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset

from colddiff._checks import check_positive_int
from colddiff.datasets import (
    IMAGE_EXTENSIONS,
    TORCHVISION_SPLITS,
    EmbeddedMNIST,
    ImageFolder,
    ImageTransform,
    PairedDataset,
    find_images,
    stack_items,
    torchvision_dataset,
    unpack_batch,
)
from colddiff.io import DEFAULT_MAX_PIXELS

__all__ = [
    # the data modules
    "ImageDataModule",
    "EmbeddedMNISTDataModule",
    "TorchvisionDataModule",
    "ImageFolderDataModule",
    "PairedFolderDataModule",
    "ResumableDataLoader",
    # re-exported from colddiff.datasets, where they live
    "IMAGE_EXTENSIONS",
    "ImageTransform",
    "ImageFolder",
    "EmbeddedMNIST",
    "find_images",
]

TorchvisionName = Literal["MNIST", "FashionMNIST", "CIFAR10", "CelebA", "Flowers102"]
Split = Literal["train", "val", "test"]


class _SkipBatches:
    """A batch sampler view that leaves out the first ``skip`` batches (indices only: nothing is loaded)."""

    def __init__(self, batch_sampler: Any, skip: int) -> None:
        self.batch_sampler, self.skip = batch_sampler, skip

    def __iter__(self):
        return itertools.islice(iter(self.batch_sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.batch_sampler) - self.skip)


class ResumableDataLoader(DataLoader):
    """A training :class:`~torch.utils.data.DataLoader` whose place in the epoch survives a checkpoint.

    It implements Lightning's stateful-loader protocol (``state_dict``/``load_state_dict``, saved in every
    checkpoint).  Shuffling and the workers' seeds draw from the loader's own generators (one for the order, one
    for the workers' seeds), reseeded at every pass from ``(seed, pass)``, so the order of a pass depends neither on
    the global RNG nor on where the run was interrupted; the state is the pass and the number of batches handed out
    in it, and after ``load_state_dict`` the next pass repeats that order and starts after those batches without
    loading them.  A run resumed from a mid-epoch checkpoint therefore sees exactly the batches an uninterrupted run
    would.  (Lightning's distributed sampler,
    when it replaces ours under DDP, is seeded by epoch; the skip applies to it as well.)
    """

    def __init__(self, *args: Any, seed: int = 0, **kwargs: Any) -> None:
        if kwargs.get("generator") is None:
            kwargs["generator"] = torch.Generator()
        # the order draws from its own generator: the workers' base seed is drawn only when an iterator is built
        self._order = torch.Generator()
        if kwargs.get("shuffle") and kwargs.get("sampler") is None and kwargs.get("batch_sampler") is None:
            dataset = args[0] if args else kwargs["dataset"]
            kwargs["sampler"], kwargs["shuffle"] = RandomSampler(dataset, generator=self._order), None
        super().__init__(*args, **kwargs)
        self.seed = int(seed)
        self._pass = 0  # index of the next pass
        self._current = (0, 0)  # (pass, batches handed out in it) of the pass being iterated
        self._skip = 0

    def __iter__(self):
        index, skip = self._pass, self._skip
        self._pass, self._skip = index + 1, 0
        pass_seed = (self.seed * 1_000_003 + index) % (2**63)
        self._order.manual_seed(pass_seed)
        self.generator.manual_seed(pass_seed + 1)
        self._current = (index, skip)
        self._skip_now = skip
        try:
            if getattr(self, "_iterator", None) is not None:  # persistent workers reuse their iterator's sampler
                self._iterator._index_sampler = self._index_sampler
            iterator = super().__iter__()  # reads _index_sampler (with the skip) here
        finally:
            self._skip_now = 0
        return self._count(iterator, index, skip)

    def _count(self, iterator: Any, index: int, skip: int):
        handed_out = skip
        for batch in iterator:
            handed_out += 1
            self._current = (index, handed_out)
            yield batch

    @property
    def _index_sampler(self) -> Any:
        sampler = super()._index_sampler
        skip = getattr(self, "_skip_now", 0)
        return _SkipBatches(sampler, skip) if skip else sampler

    def state_dict(self) -> dict[str, int]:
        index, handed_out = self._current
        return {"seed": self.seed, "pass": index, "batches": handed_out}

    def load_state_dict(self, state: dict[str, int]) -> None:
        try:
            index, handed_out = int(state["pass"]), int(state["batches"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"ResumableDataLoader: expected a state with 'pass' and 'batches', got {state!r}") \
                from error
        if handed_out >= len(self):  # the checkpoint was taken at the end of a pass: resume with the next one
            index, handed_out = index + 1, 0
        self.seed = int(state.get("seed", self.seed))
        self._pass, self._skip = index, handed_out
        self._current = (index, handed_out)


class ImageDataModule(L.LightningDataModule):
    """Base of colddiff's data modules: splits, augmentation and loaders.

    Args:
        image_size: side of the (square) training images.
        channels: 1 (grayscale) or 3 (RGB).
        batch_size: training batch size.
        eval_batch_size: validation/test batch size (default ``batch_size``).
        num_workers: loader worker processes.
        hflip: random horizontal flips when training.
        crop_scale: resize to ``crop_scale * image_size`` before the random training crop (the paper: 1.12).
        pre_crop: centre crop applied first (e.g. 178 to square CelebA's 178x218 faces).
        val_size: use at most this many validation images (the first ones; ``None`` for all).
        pin_memory: pin host memory for faster copies to a GPU (default: when CUDA is available).
    """

    def __init__(
        self,
        image_size: int = 32,
        channels: int = 3,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        hflip: bool = True,
        crop_scale: float = 1.12,
        pre_crop: int | None = None,
        val_size: int | None = None,
        pin_memory: bool | None = None,
    ) -> None:
        super().__init__()
        # the data config goes into checkpoints, with its class, so sample.py can rebuild the data from it
        self.save_hyperparameters()
        self.hparams.setdefault("_class_path", f"{type(self).__module__}.{type(self).__qualname__}")
        for name, value in (("image_size", image_size), ("batch_size", batch_size)):
            check_positive_int(value, name, type(self).__name__)
        if channels not in (1, 3):
            raise ValueError(f"{type(self).__name__}: channels must be 1 or 3, got {channels!r}")
        if num_workers < 0:
            raise ValueError(f"{type(self).__name__}: num_workers must be >= 0, got {num_workers}")
        self.image_size, self.channels = image_size, channels
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.hflip, self.crop_scale, self.pre_crop = hflip, crop_scale, pre_crop
        self.val_size = val_size
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.datasets: dict[str, Dataset] = {}

    # subclasses build one dataset per split
    def make_dataset(self, split: Split, transform: ImageTransform) -> Dataset | None:
        raise NotImplementedError

    def transform(self, train: bool) -> ImageTransform:
        return ImageTransform(self.image_size, self.channels, train, self.hflip, self.crop_scale, self.pre_crop)

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage, ("train", "val", "test")) if stage else ("train", "val", "test"):
            if split in self.datasets:
                continue
            dataset = self.make_dataset(split, self.transform(train=split == "train"))
            if dataset is None:
                continue
            if len(dataset) == 0:
                raise ValueError(f"{type(self).__name__}: the {split} split is empty")
            if split == "val" and self.val_size is not None and len(dataset) > self.val_size:
                dataset = Subset(dataset, range(self.val_size))
            self.datasets[split] = dataset
        if stage == "fit" and "train" not in self.datasets:
            raise ValueError(f"{type(self).__name__}: the training split is empty{self._empty_train_reason()}")
        if stage == "fit" and len(self.datasets["train"]) < self.batch_size:
            raise ValueError(
                f"{type(self).__name__}: the training split has {len(self.datasets['train'])} images, fewer than one "
                f"batch of {self.batch_size} (batches are full-size; lower batch_size)"
            )

    def _empty_train_reason(self) -> str:
        """Why the training split is empty, for the error (subclasses say more)."""
        return " (the data module gives no training images)"

    def dataset(self, split: Split) -> Dataset:
        """The dataset of a split (set up on demand)."""
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        if split not in self.datasets:
            raise ValueError(f"{type(self).__name__} has no {split} split")
        return self.datasets[split]

    def prior_images(self, limit: int, seed: int = 0) -> Tensor:
        """Up to ``limit`` training images without augmentation (a seeded random subset), to fit a prior."""
        dataset = self.make_dataset("train", self.transform(train=False))
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:limit].tolist()
        return unpack_batch(stack_items([dataset[i] for i in order]))[0]

    def partner_dataset(self, split: Split = "train") -> Dataset:
        """The partner images of a mixing model (only :class:`PairedFolderDataModule` has them)."""
        raise ValueError(f"{type(self).__name__} has no partner images: a mixing model (Mix, SourceImagePrior) "
                         "needs PairedFolderDataModule")

    def _loader(self, split: Split, shuffle: bool) -> DataLoader:
        train = split == "train"
        kwargs: dict[str, Any] = dict(
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=shuffle,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )
        if train:
            return ResumableDataLoader(self.dataset(split), seed=self.shuffle_seed, **kwargs)
        return DataLoader(self.dataset(split), **kwargs)

    @property
    def shuffle_seed(self) -> int:
        """Seed of the training order: the run's seed (``seed_everything``) when one is set, else 0."""
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", shuffle=False) if self._has("val") else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def _has(self, split: Split) -> bool:
        try:
            self.dataset(split)
        except ValueError as err:
            if "has no" in str(err):
                return False
            raise
        return True


class EmbeddedMNISTDataModule(ImageDataModule):
    """The MNIST digits shipped with colddiff: 6,000 for training, 1,000 (from the test set) for validation/test.

    Source: MNIST (LeCun, Cortes and Burges), CC BY-SA 3.0; see README.
    """

    def __init__(self, image_size: int = 28, channels: int = 1, batch_size: int = 64, num_workers: int = 0,
                 hflip: bool = False, crop_scale: float = 1.0, **kwargs: Any) -> None:
        super().__init__(image_size, channels, batch_size, num_workers=num_workers, hflip=hflip,
                         crop_scale=crop_scale, **kwargs)

    def make_dataset(self, split: Split, transform: ImageTransform) -> Dataset:
        return EmbeddedMNIST("train" if split == "train" else "test", transform)


class TorchvisionDataModule(ImageDataModule):
    """A torchvision dataset by name: MNIST, FashionMNIST, CIFAR10, CelebA or Flowers102.

    Validation uses the official held-out split (the test split where there is no validation split).

    Args:
        name: the dataset.
        root: where torchvision finds (or downloads) it.
        download: let torchvision download it (needs internet).
        (others as :class:`ImageDataModule`)
    """

    def __init__(self, name: TorchvisionName, root: str = "data", download: bool = False, image_size: int = 32,
                 channels: int = 3, **kwargs: Any) -> None:
        if name not in TORCHVISION_SPLITS:
            raise ValueError(f"TorchvisionDataModule: name must be one of {sorted(TORCHVISION_SPLITS)}, got {name!r}")
        super().__init__(image_size, channels, **kwargs)
        self.name, self.root, self.download = name, root, download

    def make_dataset(self, split: Split, transform: ImageTransform) -> Dataset:
        return torchvision_dataset(self.name, split, transform, root=self.root, download=self.download)


class ImageFolderDataModule(ImageDataModule):
    """A folder of images (searched recursively, any common format).

    Args:
        root: the training images (and the validation images too, unless ``val_root`` is given).
        val_root: a separate validation folder.
        test_root: a separate test folder (default: the validation images).
        val_fraction: fraction of ``root`` held out for validation when there is no ``val_root`` (0: none).
        split_seed: seed of that split (deterministic).
        extensions: file suffixes to read.
        skip_bad: drop unreadable files (logged) instead of failing on the first one; files over ``max_pixels`` and
            images with transparency count as unreadable.
        max_pixels: refuse images with more pixels (width x height) than this, naming the file, before decoding
            them (decompression bombs); default :data:`colddiff.io.DEFAULT_MAX_PIXELS` (about 89.5 megapixels),
            ``null`` for no limit.
        (others as :class:`ImageDataModule`)
    """

    def __init__(self, root: str, val_root: str | None = None, test_root: str | None = None,
                 val_fraction: float = 0.05, split_seed: int = 0, extensions: Sequence[str] = IMAGE_EXTENSIONS,
                 skip_bad: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS, image_size: int = 32,
                 channels: int = 3, **kwargs: Any) -> None:
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"ImageFolderDataModule: val_fraction must lie in [0, 1), got {val_fraction}")
        super().__init__(image_size, channels, **kwargs)
        self.root, self.val_root, self.test_root = root, val_root, test_root
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.extensions, self.skip_bad = tuple(extensions), skip_bad
        self.max_pixels = None if max_pixels is None else \
            check_positive_int(max_pixels, "max_pixels", type(self).__name__)

    def _folder(self, files: Sequence[Path], transform: ImageTransform) -> ImageFolder:
        return ImageFolder(files, transform, self.skip_bad, max_pixels=self.max_pixels)

    def _empty_train_reason(self) -> str:
        try:
            count = len(find_images(self.root, self.extensions))
        except (OSError, ValueError) as err:
            return f" ({err})"
        if self.val_root is not None or self.val_fraction == 0:
            return f": {self.root!r} has no images"
        return (f": {self.root!r} has {count} image(s) and val_fraction={self.val_fraction} holds out "
                f"{max(1, round(self.val_fraction * count))} for validation; add training images, give validation "
                "images with val_root, or set val_fraction: 0")

    def _split_files(self) -> dict[str, list[Path]]:
        files = find_images(self.root, self.extensions)
        if self.val_root is not None or self.val_fraction == 0:
            return {"train": files, "val": find_images(self.val_root, self.extensions) if self.val_root else []}
        order = torch.randperm(len(files), generator=torch.Generator().manual_seed(self.split_seed)).tolist()
        n_val = max(1, round(self.val_fraction * len(files)))
        val = sorted(files[i] for i in order[:n_val])
        train = sorted(files[i] for i in order[n_val:])
        return {"train": train, "val": val}

    def make_dataset(self, split: Split, transform: ImageTransform) -> Dataset | None:
        if split == "test":
            if self.test_root is not None:
                return self._folder(find_images(self.test_root, self.extensions), transform)
            split = "val"
        files = self._split_files()[split]
        if not files:
            return None
        return self._folder(files, transform)


class PairedFolderDataModule(ImageFolderDataModule):
    """Target images paired with partner images from a second folder, for :class:`~colddiff.degradations.Mix`.

    Batches are dicts ``{"image": x0, "partner": z}``.  Training pairs each target image with a random partner at
    every visit; validation and test pairs are fixed (seeded).

    Args:
        root: target images (e.g. CelebA).
        partner_root: partner images (e.g. AFHQ).
        partner_val_root: partner images for validation/test (default: ``partner_root``).
        (others as :class:`ImageFolderDataModule`)
    """

    def __init__(self, root: str, partner_root: str, partner_val_root: str | None = None, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.partner_root, self.partner_val_root = partner_root, partner_val_root

    def partner_dataset(self, split: Split = "train") -> ImageFolder:
        """The partner images of a split, without augmentation (for :class:`~colddiff.priors.SourceImagePrior`)."""
        root = self.partner_root if split == "train" else (self.partner_val_root or self.partner_root)
        return self._folder(find_images(root, self.extensions), self.transform(train=False))

    def make_dataset(self, split: Split, transform: ImageTransform) -> Dataset | None:
        target = super().make_dataset(split, transform)
        if target is None:
            return None
        partner_root = self.partner_root if split == "train" else (self.partner_val_root or self.partner_root)
        partner = self._folder(find_images(partner_root, self.extensions), transform)
        return PairedDataset(target, partner, random_pairs=split == "train", seed=self.split_seed)
