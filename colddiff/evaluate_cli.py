"""Evaluate models: ``python evaluate.py {restoration,generation,replication} ...`` (or ``colddiff-evaluate``).

* ``restoration``: over a whole split, rows Degraded (``x_T``), Direct (``R(x_T, T)``) and Sampled (the sampler's
  final image); columns SSIM, PSNR, RMSE and, with a feature extractor, FID (or ``FD-<extractor>``): the layout of
  the paper's Tables 1-4.  Writes ``restoration.md`` and ``restoration.json``.
* ``generation``: FID and KID (torchmetrics) between generated images (made now from the checkpoint, or a folder
  from ``sample.py generate --save-images``) and a reference split; reference features are cached per (dataset,
  split, size, extractor).  Writes ``generation.md`` and ``generation.json`` with the protocol.
* ``replication``: nearest training images of generated images (pixel L2, Carlini et al.'s patch-wise L2 and
  calibrated score, cosine similarity of features); writes ``replication.json`` (every pair, with the start-state
  provenance), ``replication_hist.png`` and ``replication_pairs.png`` (generated | nearest training image).

All metrics see 8-bit-quantised images; random degradations and generation use ``--seed``.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from colddiff._cli import (
    UsageError,
    add_data_arguments,
    add_run_arguments,
    add_sampling_arguments,
    check_folder,
    check_output_locations,
    conversion_of,
    dataset_from_args,
    dataset_id,
    device_from,
    error_text,
    partners_from_args,
    positive_int,
    prepare_prior,
)
from colddiff.datasets import ImageTransform, find_images, unpack_batch
from colddiff.evaluation import (
    AuditConfig,
    FeatureExtractor,
    ReferenceCache,
    build_extractor,
    evaluate_generation,
    evaluate_restoration,
    generate_images,
    nearest_training_images,
    write_audit,
)
from colddiff.evaluation.features import FeatureWeightsError
from colddiff.export import load_model
from colddiff.io import atomic_write_bytes, match_channels, read_image
from colddiff.pipeline import Pipeline

__all__ = ["main", "build_parser"]


# ----------------------------------------------------------------------------------------------- arguments
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", default="evaluation", help="output folder (default: evaluation)")
    add_run_arguments(common, batch_size=64)
    common.add_argument("--num-workers", type=int, default=0, help="data loader workers")
    common.add_argument("--extractor-weights", default=None, help="weights file of a resnetNN extractor")
    common.add_argument("--inception-weights", default=None,
                        help="pt_inception-2015-12-05-6726825d.pth (default: torch-fidelity downloads it)")
    sampling = argparse.ArgumentParser(add_help=False)
    add_sampling_arguments(sampling)

    parser = argparse.ArgumentParser(prog="evaluate.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_subparsers(dest="mode", required=True, metavar="MODE")

    rest = modes.add_parser("restoration", parents=[common, sampling], help="the paper's restoration tables")
    rest.add_argument("--ckpt", required=True, help="checkpoint (.ckpt) or export folder")
    add_data_arguments(rest, split="test")
    rest.add_argument("--level", type=int, default=None, help="degradation level (default T)")
    rest.add_argument("--limit", type=positive_int, default=None,
                      help="evaluate only the first N images (default: all)")
    rest.add_argument("--extractor", default="none",
                      help="none, inception (FID), mnist-cnn, resnet20..resnet110, pixels")

    gen = modes.add_parser("generation", parents=[common, sampling], help="FID/KID of generated images")
    gen.add_argument("--ckpt", default=None, help="generate with this model (or give --generated)")
    gen.add_argument("--generated", default=None, help="a folder of generated images (sample.py --save-images)")
    gen.add_argument("--convert-generated", action="store_true",
                     help="resize and convert --generated images of mixed sizes or channels to the shape most of "
                          "them have, and colour images to grayscale for a grayscale extractor (reported; default: "
                          "refuse)")
    gen.add_argument("--num", type=positive_int, default=6400, help="images to generate (the paper: 6,400)")
    add_data_arguments(gen, split="train", prefix="reference-")
    gen.add_argument("--reference-size", type=positive_int, default=None, help="reference images used (default: all)")
    add_data_arguments(gen, split="test", prefix="floor-")
    gen.add_argument("--no-floor", action="store_true",
                     help="skip the real-vs-real floor (default: as many held-out real images as generated ones, "
                          "from --floor-folder/--floor-dataset or the reference's source at --floor-split)")
    gen.add_argument("--extractor", default="inception",
                     help="inception (FID/KID), mnist-cnn (colddiff's MNIST classifier), resnet20..resnet110, pixels")
    gen.add_argument("--kid-subsets", type=positive_int, default=100)
    gen.add_argument("--kid-subset-size", type=positive_int, default=1000)
    gen.add_argument("--cache-dir", default=None, help="reference feature cache (default ~/.cache/colddiff)")

    rep = modes.add_parser("replication", parents=[common, sampling], help="nearest training images of samples")
    rep.add_argument("--ckpt", default=None, help="generate with this model (or give --generated)")
    rep.add_argument("--generated", default=None, help="a folder of generated images (reads provenance.json)")
    rep.add_argument("--convert-generated", action="store_true",
                     help="resize and convert --generated images of mixed sizes or channels to the shape most of "
                          "them have (reported; default: refuse)")
    rep.add_argument("--num", type=positive_int, default=1000, help="images to generate when --ckpt is given")
    add_data_arguments(rep, split="train", prefix="train-")
    rep.add_argument("--extractor", default="pixels", help="pixels, resnet20..resnet110, inception, or none")
    rep.add_argument("--neighbours", type=positive_int, default=50, help="n nearest kept (Carlini's calibration set)")
    rep.add_argument("--alpha", type=float, default=0.5)
    rep.add_argument("--delta", type=float, default=1 / 3)
    rep.add_argument("--grid", type=positive_int, default=4, help="patches per side of the patch-wise L2")
    rep.add_argument("--cosine-threshold", type=float, default=0.95)
    rep.add_argument("--top", type=positive_int, default=16, help="pairs shown in replication_pairs.png")
    rep.add_argument("--scale", type=positive_int, default=1, help="enlargement of images in the pairs grid")
    rep.add_argument("--float32", action="store_true", help="float32 distances (faster on consumer GPUs)")
    return parser


# ------------------------------------------------------------------------------------------------- helpers
def _extractor(args: argparse.Namespace) -> FeatureExtractor | None:
    if args.extractor == "none":
        return None
    weights = args.inception_weights if args.extractor == "inception" else args.extractor_weights
    return build_extractor(args.extractor, weights)


def _write(out: Path, name: str, markdown: str, payload: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes((markdown + "\n").encode(), out / f"{name}.md")
    atomic_write_bytes(json.dumps(payload, indent=2, default=str).encode(), out / f"{name}.json")
    return out / f"{name}.md"


# --------------------------------------------------------------------------------------------- restoration
def run_restoration(args: argparse.Namespace, device: torch.device) -> Path:
    model = load_model(args.ckpt).to(device)
    T = model.degradation.num_steps
    if args.level is not None and not 0 <= args.level <= T:
        raise UsageError(f"--level must lie in [0, {T}], got {args.level}")
    dataset = dataset_from_args(args, model.image_size, model.channels, args.ckpt)
    if args.limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(args.limit, len(dataset))))
    report = evaluate_restoration(
        model, dataset, level=args.level, sampler=args.sampler, steps=args.steps, noise=args.noise,
        extractor=_extractor(args),
        partners=partners_from_args(args, model), batch_size=args.batch_size, num_workers=args.num_workers,
        seed=args.seed, device=device, precision=args.precision, progress=True,
    )
    protocol = {"checkpoint": str(args.ckpt), "split": args.split, **report.protocol,
                "image_conversion": conversion_of(dataset, model.image_size, model.channels) or
                "none (same size and channels)"}
    return _write(Path(args.out), "restoration", report.markdown(), {"protocol": protocol, "results": report.rows})


# ---------------------------------------------------------------------------------------------- generation
def _generating_model(args: argparse.Namespace, device: torch.device) -> Pipeline | None:
    """The model of ``--ckpt``, checked able to generate (``None`` with ``--generated``)."""
    if bool(args.generated) == bool(args.ckpt):
        raise UsageError("give exactly one of --generated FOLDER and --ckpt PATH")
    if args.generated:
        return None
    model = load_model(args.ckpt).to(device)
    prepare_prior(model, args)
    return model


def _kind(channels: int) -> str:
    return "grayscale" if channels == 1 else "RGB"


def _read_generated(folder: Path, extractor: FeatureExtractor | None, convert: bool) -> tuple[Tensor, list[Path],
                                                                                               str | None]:
    """The images of a ``--generated`` folder as one batch, the files, and what was converted (``None``: nothing).

    A generated set is one model's output: images of different sizes or channel counts are refused unless
    ``convert`` (then resized, shorter side and centre crop, and converted to the shape most of them have).  RGB files
    whose three channels are equal are read as grayscale, losslessly, for an extractor that takes grayscale only
    (``sample.py`` wrote 1-channel images as RGB before); other colour images need ``convert`` (luma) for it.
    """
    files = find_images(folder)
    images = [read_image(path) for path in files]  # each at its own channels and bit depth (errors name the file)
    shapes = Counter(tuple(image.shape) for image in images)
    channels, height, width = shapes.most_common(1)[0][0]  # the set's own shape: most images have it
    accepted = extractor.input_channels if extractor is not None else (1, 3)
    target = channels if channels in accepted else accepted[0]
    if len(shapes) > 1 and not convert:
        example = {tuple(image.shape): path for image, path in zip(images, files)}
        found = ", ".join(f"{n} {w}x{h} {_kind(c)} (e.g. {example[(c, h, w)].name})"
                          for (c, h, w), n in shapes.most_common())
        raise UsageError(f"--generated {str(folder)!r}: the images differ in size or channels ({found}); colddiff "
                         "scores one set of one shape and never resizes or converts it silently: pass "
                         f"--convert-generated to convert them all to {min(height, width)}x{min(height, width)} "
                         f"{_kind(target)} (reported)")
    if height != width and not convert:
        raise UsageError(f"--generated {str(folder)!r}: the images are {width}x{height}; colddiff evaluates square "
                         "images (pass --convert-generated to centre-crop them, reported)")
    size = min(height, width)
    lossless_grey = False
    if channels != target:
        lossless_grey = target == 1 and all(image.shape[0] == 1 or (torch.equal(image[0], image[1]) and
                                                                     torch.equal(image[1], image[2]))
                                            for image in images)
        if not lossless_grey and not convert:
            raise UsageError(f"--generated {str(folder)!r}: the images are {_kind(channels)} but the {extractor.name} "
                             f"extractor takes {_kind(target)} images; pass --convert-generated to convert them "
                             "(RGB to luma, reported)")
        channels = target
    changes: Counter[str] = Counter()
    transform = ImageTransform(size, channels, train=False)
    batch = []
    for image in images:
        have, h, w = image.shape
        if have != channels:
            if lossless_grey and have == 3:
                image = image[:1]
                changes["RGB with three equal channels read as grayscale (lossless)"] += 1
            else:
                image = match_channels(image, channels)
                changes[f"converted from {_kind(have)} to {_kind(channels)}"
                        + (" (luma)" if channels == 1 else " (grey replicated)")] += 1
        if (h, w) != (size, size):
            image = transform(image)
            changes[f"resized (shorter side) and centre-cropped from {w}x{h} to {size}x{size}"] += 1
        batch.append(image)
    conversion = "; ".join(f"{n} of {len(images)} {change}" for change, n in changes.items()) or None
    return torch.stack(batch), files, conversion


def _generated_images(args: argparse.Namespace, device: torch.device, model: Pipeline | None,
                      extractor: FeatureExtractor | None = None) -> tuple[Tensor, list[dict], str, str | None]:
    """Generated images (from a folder, or made now by ``model``), their provenance, their source, and the
    conversion applied to a folder's images (``None``: none)."""
    if model is None:
        folder = check_folder(args.generated, "--generated",
                              " (sample.py generate --save-images writes them to OUT/images)")
        images, files, conversion = _read_generated(folder, extractor, args.convert_generated)
        if conversion:
            print(f"evaluate.py {args.mode}: note: the generated images: {conversion} (written into the report)",
                  file=sys.stderr)
        return images, _folder_provenance(folder, files), f"folder {args.generated} ({len(files)} images)", \
            conversion
    images, records = generate_images(model, args.num, seed=args.seed, sampler=args.sampler, steps=args.steps,
                                      noise=args.noise, batch_size=args.batch_size, device=device,
                                      precision=args.precision, progress=True)
    return images, records, f"checkpoint {args.ckpt}", None


def _folder_provenance(folder: Path, files: list[Path]) -> list[dict]:
    sidecar = folder / "provenance.json"
    if not sidecar.is_file():
        sidecar = folder.parent / "provenance.json"
    if not sidecar.is_file():
        return [{"file": str(f)} for f in files]
    records = {r.get("file"): r for r in json.loads(sidecar.read_text()).get("images", [])}
    return [records.get(str(f.relative_to(sidecar.parent)), {"file": str(f)}) for f in files]


def _floor(args: argparse.Namespace, size: int, channels: int) -> Dataset | None:
    """Held-out real images for the floor row: --floor-folder/--floor-dataset, else the reference's own source at
    --floor-split (``None`` with --no-floor, or where that would be the reference split itself)."""
    if args.no_floor:
        return None
    if not (args.floor_folder or args.floor_dataset):
        if args.floor_split == args.reference_split:
            return None
        for name in ("folder", "dataset", "root", "download"):
            setattr(args, f"floor_{name}", getattr(args, f"reference_{name}"))
        if args.floor_folder:  # a reference folder has no other split
            return None
    try:
        return dataset_from_args(args, size, channels, args.ckpt, prefix="floor_")
    except (UsageError, ValueError) as err:
        print(f"evaluate.py generation: no real-vs-real floor ({err}); pass --floor-folder or --floor-dataset",
              file=sys.stderr)
        return None


def run_generation(args: argparse.Namespace, device: torch.device) -> Path:
    model = _generating_model(args, device)
    extractor = _extractor(args)
    if extractor is None:
        raise UsageError("generation metrics need a feature extractor (--extractor inception, resnetNN or pixels)")
    images, _, source, generated_conversion = _generated_images(args, device, model, extractor)
    size, channels = images.shape[-1], images.shape[1]
    reference = dataset_from_args(args, size, channels, args.ckpt, prefix="reference_")
    if args.reference_size is not None:
        reference = torch.utils.data.Subset(reference, range(min(args.reference_size, len(reference))))
    reference_id = f"{dataset_id(args, args.ckpt, prefix='reference_')} ({args.reference_split})"
    conversion = conversion_of(reference, size, channels)
    if conversion:
        print(f"evaluate.py generation: note: the reference images are {conversion} to match the generated "
              "images (written into the report)", file=sys.stderr)
    report = evaluate_generation(
        images, reference, extractor, floor=_floor(args, size, channels), reference_id=reference_id,
        split=args.reference_split, cache=ReferenceCache(args.cache_dir),
        kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size, seed=args.seed,
        batch_size=args.batch_size, num_workers=args.num_workers, device=device, progress=True,
        protocol={"generated": source,
                  "generated_conversion": generated_conversion or ("none (same size and channels)" if model is None
                                                                   else "none (generated now by the model)"),
                  "reference_conversion": conversion or "none (same size and channels)",
                  "seed": args.seed, "sampler": args.sampler or "model default",
                  "steps": args.steps or "all levels", "noise": args.noise, "precision": args.precision},
    )
    return _write(Path(args.out), "generation", report.markdown(), {"protocol": report.protocol,
                                                                    "results": report.rows})


# --------------------------------------------------------------------------------------------- replication
def run_replication(args: argparse.Namespace, device: torch.device) -> Path:
    model = _generating_model(args, device)
    extractor = _extractor(args)
    generated, provenance, source, _ = _generated_images(args, device, model, extractor)
    train = dataset_from_args(args, generated.shape[-1], generated.shape[1], args.ckpt, prefix="train_")
    config = AuditConfig(neighbours=args.neighbours, alpha=args.alpha, delta=args.delta, grid=args.grid,
                         cosine_threshold=args.cosine_threshold, exact=not args.float32)
    loader = DataLoader(train, batch_size=args.batch_size, shuffle=False, num_workers=args.num_workers)
    batches = (unpack_batch(b)[0] for b in tqdm(loader, desc="search"))
    result = nearest_training_images(generated, batches, extractor, config, device)
    paths = write_audit(result, Path(args.out), generated, train, provenance, args.top,
                        None if extractor is None else extractor.name, args.scale)
    print(json.dumps(result.summary, indent=2), file=sys.stderr)
    print(f"generated: {source}", file=sys.stderr)
    return paths["json"]


MODES = {"restoration": run_restoration, "generation": run_generation, "replication": run_replication}
OUTPUTS = {"restoration": ("restoration.md", "restoration.json"), "generation": ("generation.md", "generation.json"),
           "replication": ("replication.json", "replication_hist.png", "replication_pairs.png")}


def _check_outputs(args: argparse.Namespace) -> None:
    """--out must be a folder (or not exist yet) where every report file can be written: checked before any work."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out!r} is an existing file; it must be a folder (created if missing)")
    check_output_locations([out / name for name in OUTPUTS[args.mode]], [args.ckpt] if args.ckpt else [])


def main(argv: Sequence[str] | None = None) -> Path:
    """Run ``evaluate.py``; returns the main output file.  Errors exit with a one-line message (status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check_outputs(args)
        device = device_from(args.device)
        with torch.no_grad():
            path = MODES[args.mode](args, device)
    except (UsageError, FileNotFoundError, ValueError, FeatureWeightsError, pickle.UnpicklingError, NotADirectoryError,
            IsADirectoryError, PermissionError) as err:
        parser.exit(2, f"evaluate.py {args.mode}: error: {error_text(err, args.ckpt)}\n")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
