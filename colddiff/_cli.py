"""Helpers shared by the command-line tools (sample.py, evaluate.py): devices, precision, image sources, and the
argument groups both tools take.

No Lightning: sampling and evaluation run on the torch-only core.  Only a training checkpoint's own data module
(the images a run was trained on, used when no ``--folder``/``--dataset`` is given) is a Lightning data module;
:mod:`colddiff.data` is imported then and only then.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

from colddiff._checks import NonFiniteOutputError, check_positive_int
from colddiff._config import ModelFileError, resolve_component
from colddiff.datasets import (
    DatasetSource,
    EmbeddedMNIST,
    ImageFolder,
    ImageTransform,
    find_images,
    native_shapes,
    torchvision_dataset,
)
from colddiff.io import load_checkpoint
from colddiff.sampling import check_sampler_name, sampler_names

if TYPE_CHECKING:
    from colddiff.data import ImageDataModule

__all__ = ["UsageError", "device_from", "positive_int", "non_negative_float", "add_data_arguments",
           "add_sampling_arguments", "add_run_arguments",
           "dataset_from_args", "dataset_id", "datamodule_from_checkpoint", "partners_from_args",
           "prepare_prior", "conversion_of", "check_output_locations", "error_text", "check_folder"]

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


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """``--sampler``, ``--steps``, ``--noise``: the sampler settings, each defaulting to the model's."""
    parser.add_argument("--sampler", type=sampler_name, default=None, metavar="NAME", help=sampler_help())
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="sampling steps, evenly spaced levels (step skipping); default: the model's sample_steps "
                             "(every level unless it was trained with fewer)")
    parser.add_argument("--noise", type=non_negative_float, default=None,
                        help="sampling noise delta added at every level (IHDM-style ancestral sampling); default: "
                             "the model's sample_noise (none unless it was trained with one)")


def add_run_arguments(parser: argparse.ArgumentParser, batch_size: int) -> None:
    """``--batch-size``, ``--seed``, ``--device``, ``--precision``, ``--partner-root``: how a run computes."""
    parser.add_argument("--batch-size", type=positive_int, default=batch_size)
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of degradation params, prior draws and sampling noise")
    parser.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:1 ...")
    parser.add_argument("--precision", choices=("32", "bf16", "16"), default="32",
                        help="network precision (autocast); the sampler's state stays in float32")
    parser.add_argument("--partner-root", default=None,
                        help="folder of partner images for mixing models (start states / degradation partners)")


def add_data_arguments(parser: argparse.ArgumentParser, split: str = "test", prefix: str = "") -> None:
    """``--folder``, ``--dataset``, ``--root``, ``--download``, ``--split`` (with an optional prefix)."""
    parser.add_argument(f"--{prefix}folder", default=None, help="a folder of images (recursive)")
    parser.add_argument(f"--{prefix}dataset", choices=DATASETS, default=None,
                        help="a torchvision dataset, or embedded-mnist (the digits shipped with colddiff)")
    parser.add_argument(f"--{prefix}root", default="data", help="torchvision dataset root")
    parser.add_argument(f"--{prefix}download", action="store_true", help="let torchvision download the dataset")
    parser.add_argument(f"--{prefix}split", choices=("train", "val", "test"), default=split)


def check_output_locations(paths: Iterable[str | os.PathLike], protected: Iterable[str | os.PathLike] = ()) -> None:
    """Check, before any work, that every file in ``paths`` can be written, and that none is a protected file.

    A location fails when the path is an existing folder, when the nearest existing folder above it is a file (e.g.
    ``--out`` names an existing file) or cannot be written to, or when the path is one of ``protected`` (the
    command's inputs and model file: the same file, also through a link or another spelling of its name).

    Raises:
        UsageError: naming the first such path and why.
    """
    guarded: dict[tuple[int, int], str] = {}
    for item in protected:
        try:
            stat = os.stat(item)
        except OSError:
            continue
        guarded[(stat.st_dev, stat.st_ino)] = str(item)
    checked: dict[Path, None] = {}
    for path in map(Path, paths):
        if path.is_dir():
            raise UsageError(f"cannot write {str(path)!r}: it is an existing folder")
        if guarded and path.exists():
            stat = path.stat()
            source = guarded.get((stat.st_dev, stat.st_ino))
            if source is not None:
                raise UsageError(f"refusing to write {str(path)!r}: it is the input file {source!r}, which would be "
                                 "overwritten; choose another --out")
        parent = path.parent
        while parent not in checked and not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if parent in checked:
            continue
        if not parent.is_dir():
            raise UsageError(f"cannot write {str(path)!r}: {str(parent)!r} is a file, not a folder (output "
                             "folders are created where missing, but never replace files)")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UsageError(f"cannot write {str(path)!r}: the folder {str(parent)!r} is not writable")
        checked[parent] = None


def check_folder(path: str | os.PathLike, flag: str, hint: str = "") -> Path:
    """``path`` as an existing folder, or a :class:`UsageError` that says what it is instead."""
    folder = Path(path)
    if not folder.exists():
        raise UsageError(f"{flag} {str(folder)!r} does not exist")
    if not folder.is_dir():
        kind = "a file" if folder.is_file() else "not a folder (a device or another special file)"
        raise UsageError(f"{flag} {str(folder)!r} is {kind}; expected a folder of images{hint}")
    return folder


def error_text(err: BaseException, model_file: str | os.PathLike | None) -> str:
    """The one-line message of an error, naming ``model_file`` where the error came from its content (its config,
    its stored state, or images it produced) and does not name it yet."""
    if isinstance(err, ModelFileError):
        err.with_source(model_file)
    if isinstance(err, NonFiniteOutputError) and model_file is not None:
        return f"{str(model_file)!r}: {err}"
    if isinstance(err, (NotADirectoryError, IsADirectoryError, PermissionError)):
        return f"{err.strerror or type(err).__name__}: {err.filename!r}" if err.filename else str(err)
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__


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
        return torchvision_dataset(dataset, split, transform, root=_get(args, "root", prefix),
                                   download=_get(args, "download", prefix))
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
    # read once per file version and process (the tools ask for the data source and its description), its tensors
    # mapped, not read: only the metadata is needed here
    return load_checkpoint(path, mmap=True).get("datamodule_hyper_parameters") or {}


def datamodule_from_checkpoint(path: str | None, image_size: int, channels: int) -> ImageDataModule | None:
    """Rebuild the data module recorded in a training checkpoint (only colddiff data modules).  Data modules are
    Lightning's: this is the one path of the command lines that imports Lightning, and only when it is taken."""
    hparams = _datamodule_hparams(path) if path is not None else {}
    if "_class_path" not in hparams:
        return None
    from colddiff.data import ImageDataModule  # Lightning: only for a checkpoint's own data

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
