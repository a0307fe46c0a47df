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
    autocast,
    dataset_from_args,
    dataset_id,
    device_from,
    image_shape_of,
    partner_folder,
    partner_images,
)
from colddiff.data import ImageFolder, ImageTransform, find_images
from colddiff.datasets import unpack_batch
from colddiff.evaluation import (
    AuditConfig,
    FeatureExtractor,
    ReferenceCache,
    RestorationMetrics,
    build_extractor,
    extract_features,
    frechet_distance,
    kernel_distance,
    nearest_training_images,
    quantize,
    write_audit,
)
from colddiff.evaluation.features import FeatureWeightsError
from colddiff.export import load_model
from colddiff.io import atomic_write_bytes
from colddiff.sampling import SAMPLERS

__all__ = ["main", "build_parser", "markdown_table"]


# ----------------------------------------------------------------------------------------------- arguments
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", default="evaluation", help="output folder (default: evaluation)")
    common.add_argument("--batch-size", type=int, default=64)
    common.add_argument("--num-workers", type=int, default=0, help="data loader workers")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--device", default="auto")
    common.add_argument("--precision", choices=("32", "bf16", "16"), default="32")
    common.add_argument("--extractor-weights", default=None, help="weights file of a resnetNN extractor")
    common.add_argument("--inception-weights", default=None,
                        help="pt_inception-2015-12-05-6726825d.pth (default: torch-fidelity downloads it)")
    common.add_argument("--partner-root", default=None, help="partner images for mixing models")
    sampling = argparse.ArgumentParser(add_help=False)
    sampling.add_argument("--sampler", choices=SAMPLERS, default=None, help="default: the model's (improved)")
    sampling.add_argument("--steps", type=int, default=None, help="sampling steps (step skipping)")

    parser = argparse.ArgumentParser(prog="evaluate.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_subparsers(dest="mode", required=True, metavar="MODE")

    rest = modes.add_parser("restoration", parents=[common, sampling], help="the paper's restoration tables")
    rest.add_argument("--ckpt", required=True, help="checkpoint (.ckpt) or export folder")
    add_data_arguments(rest, split="test")
    rest.add_argument("--level", type=int, default=None, help="degradation level (default T)")
    rest.add_argument("--limit", type=int, default=None, help="evaluate only the first N images (default: all)")
    rest.add_argument("--extractor", default="none", help="none, inception (FID), resnet20..resnet110, pixels")

    gen = modes.add_parser("generation", parents=[common, sampling], help="FID/KID of generated images")
    gen.add_argument("--ckpt", default=None, help="generate with this model (or give --generated)")
    gen.add_argument("--generated", default=None, help="a folder of generated images (sample.py --save-images)")
    gen.add_argument("--num", type=int, default=6400, help="images to generate (the paper: 6,400)")
    add_data_arguments(gen, split="train", prefix="reference-")
    gen.add_argument("--reference-size", type=int, default=None, help="reference images used (default: all)")
    gen.add_argument("--extractor", default="inception", help="inception (FID/KID), resnet20..resnet110, pixels")
    gen.add_argument("--kid-subsets", type=int, default=100)
    gen.add_argument("--kid-subset-size", type=int, default=1000)
    gen.add_argument("--cache-dir", default=None, help="reference feature cache (default ~/.cache/colddiff)")

    rep = modes.add_parser("replication", parents=[common, sampling], help="nearest training images of samples")
    rep.add_argument("--ckpt", default=None, help="generate with this model (or give --generated)")
    rep.add_argument("--generated", default=None, help="a folder of generated images (reads provenance.json)")
    rep.add_argument("--num", type=int, default=1000, help="images to generate when --ckpt is given")
    add_data_arguments(rep, split="train", prefix="train-")
    rep.add_argument("--extractor", default="pixels", help="pixels, resnet20..resnet110, inception, or none")
    rep.add_argument("--neighbours", type=int, default=50, help="n nearest kept (Carlini's calibration set)")
    rep.add_argument("--alpha", type=float, default=0.5)
    rep.add_argument("--delta", type=float, default=1 / 3)
    rep.add_argument("--grid", type=int, default=4, help="patches per side of the patch-wise L2")
    rep.add_argument("--cosine-threshold", type=float, default=0.95)
    rep.add_argument("--top", type=int, default=16, help="pairs shown in replication_pairs.png")
    rep.add_argument("--scale", type=int, default=1, help="enlargement of images in the pairs grid")
    rep.add_argument("--float32", action="store_true", help="float32 distances (faster on consumer GPUs)")
    return parser


# ------------------------------------------------------------------------------------------------- helpers
def _extractor(args: argparse.Namespace) -> FeatureExtractor | None:
    if args.extractor == "none":
        return None
    weights = args.inception_weights if args.extractor == "inception" else args.extractor_weights
    return build_extractor(args.extractor, weights)


def _loader(dataset: Dataset, args: argparse.Namespace) -> DataLoader:
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    return DataLoader(dataset, batch_size=args.batch_size, shuffle=False, drop_last=False,
                      num_workers=args.num_workers)


def _fmt(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 100 else f"{value:.2f}"


def markdown_table(rows: dict[str, dict[str, float]], columns: Sequence[str]) -> str:
    """A Markdown table: one row per entry of ``rows``, the given metric columns."""
    lines = ["| | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name, values in rows.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(values[c]) for c in columns) + " |")
    return "\n".join(lines)


def _write(out: Path, name: str, markdown: str, payload: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes((markdown + "\n").encode(), out / f"{name}.md")
    atomic_write_bytes(json.dumps(payload, indent=2, default=str).encode(), out / f"{name}.json")
    return out / f"{name}.md"


# --------------------------------------------------------------------------------------------- restoration
def run_restoration(args: argparse.Namespace, device: torch.device) -> Path:
    model = load_model(args.ckpt).to(device)
    T = model.degradation.num_steps
    level = T if args.level is None else args.level
    if not 0 <= level <= T:
        raise UsageError(f"--level must lie in [0, {T}], got {level}")
    dataset = dataset_from_args(args, model.image_size, model.channels, args.ckpt)
    if args.limit is not None:
        if args.limit < 1:
            raise UsageError(f"--limit must be >= 1, got {args.limit}")
        dataset = torch.utils.data.Subset(dataset, range(min(args.limit, len(dataset))))
    extractor = _extractor(args)
    metrics = RestorationMetrics(device, extractor)
    generator = torch.Generator().manual_seed(args.seed)
    sampler = args.sampler or model.sampler
    seen = 0
    for batch in tqdm(_loader(dataset, args), desc="restoration"):
        x0, context = unpack_batch(batch)
        x0 = quantize(x0.to(device))
        if "partner" in model.degradation.context_keys and "partner" not in context:
            context = {"partner": partner_images(args.partner_root, model.image_size, model.channels, len(x0),
                                                 generator)}
        params = {k: v.to(device) for k, v in
                  model.degradation.make_params(x0, generator, **{k: v.to(device) for k, v in context.items()}).items()}
        x_t = model.degradation(x0, level, params)
        with autocast(device, args.precision):
            direct = model.sample(x_t, t=level, params=params, sampler="direct")
            sampled = model.sample(x_t, t=level, params=params, sampler=sampler, steps=args.steps)
        metrics.update("Degraded", x_t, x0, targets_are_new=True)
        metrics.update("Direct", direct, x0)
        metrics.update("Sampled", sampled, x0)
        seen += len(x0)
    if seen != len(dataset):  # every image, none skipped
        raise RuntimeError(f"evaluated {seen} images but the split has {len(dataset)}")
    rows = metrics.compute()
    columns = ([extractor.metric_names()[0]] if extractor is not None else []) + ["SSIM", "PSNR", "RMSE"]
    protocol = {
        "checkpoint": str(args.ckpt), "images": seen, "split": args.split, "level": level, "num_steps": T,
        "sampler": sampler, "steps": args.steps or "all levels", "seed": args.seed,
        "quantisation": "8-bit (round(255 x) / 255) for every image before metrics",
        "SSIM": "Gaussian window 11, sigma 1.5, data range 1, mean over images",
        "PSNR": "per image (data range 1), mean over images", "RMSE": "over all pixels of the split, [0, 1] units",
        "features": None if extractor is None else extractor.name, "precision": args.precision,
    }
    title = (f"Restoration of {seen} {args.split} images, {type(model.degradation).__name__} at level {level}/{T}, "
             f"{sampler} sampler")
    markdown = f"{title}\n\n{markdown_table(rows, columns)}\n"
    return _write(Path(args.out), "restoration", markdown, {"protocol": protocol, "results": rows})


# ---------------------------------------------------------------------------------------------- generation
def _generated_images(args: argparse.Namespace, device: torch.device) -> tuple[Tensor, list[dict], int, int, str]:
    """Generated images (from a folder or made now), their provenance, image size and channels, and the source."""
    if bool(args.generated) == bool(args.ckpt):
        raise UsageError("give exactly one of --generated FOLDER and --ckpt PATH")
    if args.generated:
        files = find_images(args.generated)
        size, channels = image_shape_of(files[0])
        dataset = ImageFolder(files, ImageTransform(size, channels, train=False))
        images = torch.stack([dataset[i] for i in range(len(dataset))])
        provenance = _folder_provenance(Path(args.generated), files)
        return images, provenance, size, channels, f"folder {args.generated} ({len(files)} images)"
    if args.num < 1:
        raise UsageError(f"--num must be >= 1, got {args.num}")
    model = load_model(args.ckpt).to(device)
    if model.prior is None:
        raise UsageError("this model has no start-state prior, so it cannot generate; evaluate it with "
                         "'evaluate.py restoration'")
    if not model.prior.is_fitted:
        if getattr(model.prior, "attach", None) is not None and args.partner_root:
            model.prior.attach(partner_folder(args.partner_root, model.image_size, model.channels))
        else:
            raise UsageError(f"the model's {type(model.prior).__name__} is not ready: fit it with 'sample.py "
                             "generate --fit-prior' (or pass --partner-root for mixing models)")
    generator = torch.Generator().manual_seed(args.seed)
    images, provenance = [], []
    for start in tqdm(range(0, args.num, args.batch_size), desc="generate"):
        n = min(args.batch_size, args.num - start)
        with autocast(device, args.precision):
            batch, draw = model.generate(n, generator, sampler=args.sampler, steps=args.steps)
        images.append(quantize(batch).cpu())
        provenance += [{"index": start + i, "seed": args.seed, "start_state": p} for i, p in enumerate(draw.provenance)]
    return torch.cat(images), provenance, model.image_size, model.channels, f"checkpoint {args.ckpt}"


def _folder_provenance(folder: Path, files: list[Path]) -> list[dict]:
    sidecar = folder / "provenance.json"
    if not sidecar.is_file():
        sidecar = folder.parent / "provenance.json"
    if not sidecar.is_file():
        return [{"file": str(f)} for f in files]
    records = {r.get("file"): r for r in json.loads(sidecar.read_text()).get("images", [])}
    return [records.get(str(f.relative_to(sidecar.parent)), {"file": str(f)}) for f in files]


def run_generation(args: argparse.Namespace, device: torch.device) -> Path:
    images, _, size, channels, source = _generated_images(args, device)
    if len(images) < 2:
        raise UsageError(f"FID/KID need at least 2 generated images, got {len(images)}")
    extractor = _extractor(args)
    if extractor is None:
        raise UsageError("generation metrics need a feature extractor (--extractor inception, resnetNN or pixels)")
    fd_name, kd_name = extractor.metric_names()
    reference = dataset_from_args(args, size, channels, args.ckpt, prefix="reference_")
    if args.reference_size is not None:
        reference = torch.utils.data.Subset(reference, range(min(args.reference_size, len(reference))))
    cache = ReferenceCache(args.cache_dir)
    ref_id = dataset_id(args, args.ckpt, prefix="reference_")
    key = cache.key(ref_id, args.reference_split, size, channels, extractor, len(reference))
    ref_features = cache.get(key)
    cached = ref_features is not None
    if ref_features is None:
        loader = _loader(reference, args)
        ref_features = extract_features(extractor, (unpack_batch(b)[0] for b in tqdm(loader, desc="reference")),
                                        device)
        cache.put(key, ref_features, {"dataset": ref_id, "split": args.reference_split, "size": size,
                                      "extractor": extractor.name, "count": len(reference)})
    fake_features = extract_features(extractor, images.split(args.batch_size), device)
    fd = frechet_distance(ref_features.to(device), fake_features)
    kd_mean, kd_std = kernel_distance(ref_features.to(device), fake_features, args.kid_subsets,
                                      args.kid_subset_size, seed=args.seed)
    protocol = {
        "generated": source, "N_generated": len(images), "reference": ref_id, "reference_split": args.reference_split,
        "N_reference": len(reference), "image_size": size, "channels": channels,
        "extractor": extractor.name, "extractor_preprocessing": _preprocessing(extractor),
        "quantisation": "8-bit (round(255 x) / 255) before feature extraction, generated and reference alike",
        "seed": args.seed, "sampler": args.sampler or "model default", "steps": args.steps or "all levels",
        "KID": f"polynomial kernel, {args.kid_subsets} subsets of {min(args.kid_subset_size, len(images))}",
        "reference_features": "cache" if cached else "computed", "precision": args.precision,
    }
    rows = {"generated": {fd_name: fd, kd_name: kd_mean, f"{kd_name} std": kd_std}}
    lines = [f"Generation: {len(images)} images ({source}) vs {len(reference)} {args.reference_split} images of "
             f"{ref_id}, features {extractor.name}", "", markdown_table(rows, [fd_name, kd_name, f"{kd_name} std"]),
             "", "Protocol: " + "; ".join(f"{k}: {v}" for k, v in protocol.items())]
    return _write(Path(args.out), "generation", "\n".join(lines), {"protocol": protocol, "results": rows})


def _preprocessing(extractor: FeatureExtractor) -> str:
    if extractor.is_fid_inception:
        return "RGB uint8, bilinear resize to 299 (TensorFlow-1 compatible, as the standard FID)"
    if extractor.name.startswith("resnet"):
        return "RGB, bilinear (antialiased) resize to 32, ImageNet normalisation"
    return "none"


# --------------------------------------------------------------------------------------------- replication
def run_replication(args: argparse.Namespace, device: torch.device) -> Path:
    generated, provenance, size, channels, source = _generated_images(args, device)
    train = dataset_from_args(args, size, channels, args.ckpt, prefix="train_")
    extractor = _extractor(args)
    config = AuditConfig(neighbours=args.neighbours, alpha=args.alpha, delta=args.delta, grid=args.grid,
                         cosine_threshold=args.cosine_threshold, exact=not args.float32)
    batches = (unpack_batch(b)[0] for b in tqdm(_loader(train, args), desc="search"))
    result = nearest_training_images(generated, batches, extractor, config, device)
    paths = write_audit(result, Path(args.out), generated, train, provenance, args.top,
                        None if extractor is None else extractor.name, args.scale)
    print(json.dumps(result.summary, indent=2), file=sys.stderr)
    print(f"generated: {source}", file=sys.stderr)
    return paths["json"]


MODES = {"restoration": run_restoration, "generation": run_generation, "replication": run_replication}


def main(argv: Sequence[str] | None = None) -> Path:
    """Run ``evaluate.py``; returns the main output file.  Errors exit with a one-line message (status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        device = device_from(args.device)
        with torch.no_grad():
            path = MODES[args.mode](args, device)
    except (UsageError, FileNotFoundError, ValueError, FeatureWeightsError, pickle.UnpicklingError) as err:
        parser.exit(2, f"evaluate.py {args.mode}: error: {err}\n")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
