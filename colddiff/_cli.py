"""Helpers shared by the command-line tools (sample.py, evaluate.py): devices, precision, image sources."""

from __future__ import annotations

import argparse
import functools
import math
import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from colddiff._checks import check_positive_int
from colddiff._config import resolve_component
from colddiff.data import ImageDataModule, TorchvisionDataModule
from colddiff.datasets import DatasetSource, EmbeddedMNIST, ImageFolder, ImageTransform, find_images, native_shapes
from colddiff.io import load_checkpoint
from colddiff.sampling import check_sampler_name, sampler_names

__all__ = ["UsageError", "device_from", "positive_int", "non_negative_float", "add_data_arguments",
           "dataset_from_args", "dataset_id", "datamodule_from_checkpoint", "image_shape_of", "partners_from_args",
           "prepare_prior", "conversion_of"]

DATASETS = ("MNIST", "FashionMNIST", "CIFAR10", "CelebA", "Flowers102", "embedded-mnist")


class UsageError(ValueError):
    """A bad command line, or a request the model cannot serve (reported without a traceback)."""


def device_from(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1`` …"""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UsageError(f"--device: {err}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA device is available")
    return device


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (checked while parsing, before any work starts)."""
    try:
        return check_positive_int(int(text), "value")
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None


def sampler_name(text: str) -> str:
    """argparse type: a registered sampler's name, or an import path to a sampler function (the user's own command
    line names it, so any path is trusted; see :func:`colddiff.sampling.check_sampler_name`)."""
    try:
        return check_sampler_name(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def sampler_help() -> str:
    """--sampler's help: the samplers registered when the parser is built (no list of names is kept here)."""
    return (f"a registered sampler ({', '.join(sampler_names())}) or an import path package.module.function; "
            "default: the model's")


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def add_data_arguments(parser: argparse.ArgumentParser, split: str = "test", prefix: str = "") -> None:
    """``--folder``, ``--dataset``, ``--root``, ``--download``, ``--split`` (with an optional prefix)."""
    parser.add_argument(f"--{prefix}folder", default=None, help="a folder of images (recursive)")
    parser.add_argument(f"--{prefix}dataset", choices=DATASETS, default=None,
                        help="a torchvision dataset, or embedded-mnist (the digits shipped with colddiff)")
    parser.add_argument(f"--{prefix}root", default="data", help="torchvision dataset root")
    parser.add_argument(f"--{prefix}download", action="store_true", help="let torchvision download the dataset")
    parser.add_argument(f"--{prefix}split", choices=("train", "val", "test"), default=split)


def _get(args: argparse.Namespace, name: str, prefix: str) -> Any:
    return getattr(args, f"{prefix}{name}".replace("-", "_"))


def dataset_from_args(args: argparse.Namespace, image_size: int, channels: int, checkpoint: str | None = None,
                      split: str | None = None, prefix: str = "") -> Dataset:
    """Images at ``image_size``/``channels`` from ``--folder``, ``--dataset``, or a checkpoint's data config."""
    split = split or _get(args, "split", prefix)
    transform = ImageTransform(image_size, channels, train=False)
    folder, dataset = _get(args, "folder", prefix), _get(args, "dataset", prefix)
    if folder:
        return ImageFolder(find_images(folder), transform)
    if dataset == "embedded-mnist":
        return EmbeddedMNIST("train" if split == "train" else "test", transform)
    if dataset:
        module = TorchvisionDataModule(dataset, root=_get(args, "root", prefix),
                                       download=_get(args, "download", prefix), image_size=image_size,
                                       channels=channels)
        return module.make_dataset(split, transform)
    datamodule = datamodule_from_checkpoint(checkpoint, image_size, channels) if checkpoint else None
    if datamodule is None:
        dash = prefix.replace("_", "-")
        flag = f"--{dash}folder PATH or --{dash}dataset NAME"
        raise UsageError(f"no images given: pass {flag} (the model file does not record its training data)")
    result = datamodule.make_dataset(split, transform)
    if result is None:
        raise UsageError(f"the checkpoint's data module has no {split} split; choose another --split or --folder")
    return result


def dataset_id(args: argparse.Namespace, checkpoint: str | None = None, prefix: str = "") -> str:
    """A description of the image source for cache keys and reports."""
    folder, dataset = _get(args, "folder", prefix), _get(args, "dataset", prefix)
    if folder:
        files = find_images(folder)
        return f"folder:{Path(folder).resolve()}:{len(files)}"
    if dataset:
        return f"dataset:{dataset}:{Path(_get(args, 'root', prefix)).resolve()}"
    hparams = _datamodule_hparams(checkpoint) if checkpoint else {}
    return "checkpoint-data:" + ",".join(f"{k}={hparams[k]}" for k in sorted(hparams) if k in
                                         ("_class_path", "name", "root", "val_root", "test_root"))


def _datamodule_hparams(path: str | os.PathLike) -> dict[str, Any]:
    """The data module's hyper-parameters recorded in a training checkpoint (``{}`` for exports)."""
    path = Path(path)
    if path.is_dir() or path.suffix != ".ckpt":
        return {}
    return _read_datamodule_hparams(path, path.stat().st_mtime_ns if path.is_file() else -1)


@functools.lru_cache(maxsize=4)
def _read_datamodule_hparams(path: Path, mtime_ns: int) -> dict[str, Any]:
    # read once per file version and process: the tools ask for the data source and its description
    return load_checkpoint(path).get("datamodule_hyper_parameters") or {}


def datamodule_from_checkpoint(path: str | None, image_size: int, channels: int) -> ImageDataModule | None:
    """Rebuild the data module recorded in a training checkpoint (only colddiff data modules)."""
    hparams = _datamodule_hparams(path) if path is not None else {}
    if "_class_path" not in hparams:
        return None
    try:
        cls = resolve_component(hparams["_class_path"], "the checkpoint's data module", base=ImageDataModule,
                                kind="colddiff data modules")
    except ValueError as err:
        raise UsageError(str(err)) from err
    kwargs = {k: v for k, v in hparams.items() if not k.startswith("_")}
    kwargs.update(image_size=image_size, channels=channels, num_workers=0)
    return cls(**kwargs)


def conversion_of(dataset: Dataset, size: int, channels: int) -> str | None:
    """What loading ``dataset`` at ``size``/``channels`` changes in its images (``None``: nothing, or unknown)."""
    shapes = native_shapes(dataset)
    changes = []
    sizes = sorted({(h, w) for h, w, _ in shapes if (h, w) != (size, size)})
    if sizes:
        shown = ", ".join(f"{w}x{h}" for h, w in sizes[:3]) + (" ..." if len(sizes) > 3 else "")
        changes.append(f"resized (shorter side) and centre-cropped from {shown} to {size}x{size}")
    kinds = {c for _, _, c in shapes} - {channels}
    if kinds:
        changes.append("converted from " + ("RGB to grayscale (luma)" if channels == 1 else "grayscale to RGB"))
    return "; ".join(changes) or None


def partners_from_args(args: argparse.Namespace, model: Any) -> ImageFolder | None:
    """The partner images of ``--partner-root`` at the model's size and channels (``None`` when not given)."""
    root = getattr(args, "partner_root", None)
    return ImageFolder(find_images(root), ImageTransform(model.image_size, model.channels, train=False)) if root \
        else None


def prepare_prior(model: Any, args: argparse.Namespace, fit_images: Dataset | None = None, limit: int = 10_000) -> None:
    """Make the model's prior ready from the command line's data through the prior's one hook,
    :meth:`~colddiff.priors.Prior.fit_from`: ``fit_images`` (``--fit-prior``) and/or ``--partner-root``.

    A prior that is already fitted is left as it is unless ``fit_images`` asks for a refit.
    """
    prior = model.prior
    if prior is None:
        raise UsageError(
            f"this model cannot generate: it has no start-state prior (degradation {type(model.degradation).__name__})"
            ". Generation needs e.g. GaussianBlur(final_mean=True) with ChannelMeanPrior, or GaussianNoise with "
            "GaussianNoisePrior; use reconstruct or restore instead")
    if prior.is_fitted and fit_images is None:
        return
    try:
        prior.fit_from(DatasetSource(fit_images, partners_from_args(args, model)), limit=limit)
    except ValueError as err:
        raise UsageError(f"the model's {type(prior).__name__} is not ready ({err}); fit it with 'sample.py generate "
                         "--fit-prior --folder/--dataset ... --output NEW_FILE', or pass --partner-root for mixing "
                         "models") from err


def image_shape_of(path: Path) -> tuple[int, int]:
    """``(size, channels)`` of a square image file (channels 1 for grayscale, else 3)."""
    with Image.open(path) as img:
        if img.size[0] != img.size[1]:
            raise UsageError(f"{str(path)!r} is {img.size[0]}x{img.size[1]}; colddiff evaluates square images")
        return img.size[0], 1 if img.mode in ("L", "1", "I", "I;16", "F") else 3
