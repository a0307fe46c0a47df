"""Turn a checkpoint into pictures: ``python sample.py MODE --ckpt PATH [options]`` (or ``colddiff-sample``).

Modes:

* ``reconstruct``: degrade images of a dataset split or folder to level ``--level`` (default ``T``) and restore them;
  grid columns ``x_t | direct | sampled | x0``.
* ``restore``: restore your own degraded images (``--input`` file or folder) that are at level ``--level``; writes
  the restored images and a before/after grid.
* ``generate``: ``--num`` new images from the model's start-state prior; a grid, optionally one PNG per image
  (``--save-images``, for metric tools), and ``provenance.json`` recording where each start state came from.
* ``trajectory``: for a few images, the forward strip ``x0 -> x_T`` and the reverse strip ``x_T -> x0_hat`` at
  ``--columns`` levels (the paper's Figure 1); ``--from-prior`` starts reverse strips from prior draws instead.

Every run also writes ``<mode>.json`` with its settings.  The same ``--seed`` gives identical images.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from colddiff._checks import check_finite_output
from colddiff._cli import (
    UsageError,
    add_data_arguments,
    add_run_arguments,
    add_sampling_arguments,
    check_output_locations,
    conversion_of,
    dataset_from_args,
    device_from,
    error_text,
    partners_from_args,
    positive_int,
    prepare_prior,
)
from colddiff.datasets import ImageTransform, find_images, stack_items, unpack_batch, with_partners
from colddiff.estimation import check_estimable, estimate_level
from colddiff.export import load_model, save_model_as
from colddiff.files import CONFIG, WEIGHTS
from colddiff.io import (
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    atomic_write_bytes,
    read_image,
    restoration_grid,
    save_image_atomic,
    save_png_atomic,
)
from colddiff.pipeline import Pipeline
from colddiff.sampling import autocast
from colddiff.tiling import any_size

__all__ = ["main", "build_parser"]


# ----------------------------------------------------------------------------------------------- arguments
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--ckpt", required=True, help="training checkpoint (.ckpt) or export folder")
    common.add_argument("--out", default="samples", help="output folder (default: samples)")
    add_sampling_arguments(common)
    add_run_arguments(common, batch_size=16)
    common.add_argument("--scale", type=positive_int, default=1, help="nearest-neighbour enlargement in the grid PNGs")
    common.add_argument("--compile", action="store_true",
                        help="torch.compile the network (CUDA graphs on GPU): faster for many images")

    data = argparse.ArgumentParser(add_help=False)
    add_data_arguments(data)

    parser = argparse.ArgumentParser(
        prog="sample.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_subparsers(dest="mode", required=True, metavar="MODE")
    rec = modes.add_parser("reconstruct", parents=[common, data], help="degrade dataset images and restore them")
    rec.add_argument("--num", type=positive_int, default=16, help="number of images")
    rec.add_argument("--level", type=int, default=None, help="degradation level t (default T)")
    rec.add_argument("--save-images", action="store_true", help="also write every sampled image as a PNG")
    res = modes.add_parser("restore", parents=[common], help="restore your own degraded images")
    res.add_argument("--input", required=True, help="a degraded image file or a folder of them")
    res.add_argument("--level", type=_level_argument, required=True,
                     help="the level t your images are at, or 'auto': estimate each image's level (written to "
                          "restore.json)")
    res.add_argument("--tile", type=positive_int, default=None,
                     help="restore images larger than this in overlapping tiles blended without seams (default: "
                          "whole images, at their own size)")
    res.add_argument("--overlap", type=int, default=None, help="tile overlap in pixels (default: tile / 4)")
    res.add_argument("--channels", choices=("strict", "convert"), default="strict",
                     help="a grayscale image for an RGB model (or the reverse): refuse (strict, default) or convert "
                          "(grey replicated to RGB, RGB to luma)")
    res.add_argument("--alpha-background", type=float, default=None,
                     help="composite transparent images onto this grey level in [0, 1] (default: refuse them)")
    res.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                     help=f"refuse larger images (default {DEFAULT_MAX_PIXELS:,} pixels)")
    res.add_argument("--resize", action="store_true",
                     help="resize and centre-crop inputs to the model's size (default: restore at their own size)")
    gen = modes.add_parser("generate", parents=[common, data], help="generate new images from the prior")
    gen.add_argument("--num", type=positive_int, default=64, help="number of images")
    gen.add_argument("--nrow", type=positive_int, default=None, help="images per grid row (default: square)")
    gen.add_argument("--save-images", action="store_true", help="also write every image as a PNG (metric tools)")
    gen.add_argument("--fit-prior", action="store_true",
                     help="fit the prior on --folder/--dataset (or the checkpoint's data) and save the model with it "
                          "as --output (the model file given by --ckpt is never modified)")
    gen.add_argument("--output", default=None,
                     help="with --fit-prior: the new model file (.ckpt) or export folder to write (a new path)")
    gen.add_argument("--overwrite", action="store_true",
                     help="with --fit-prior: let --output replace an existing model file or export folder")
    gen.add_argument("--fit-images", type=positive_int, default=10_000, help="images used by --fit-prior")
    gen.add_argument("--fit-resize", action="store_true",
                     help="with --fit-prior: resize and convert --folder/--dataset images that differ from the "
                          "model's size or channels (default: refuse them)")
    traj = modes.add_parser("trajectory", parents=[common, data], help="forward and reverse strips")
    traj.add_argument("--num", type=positive_int, default=4, help="number of images (two strips each)")
    traj.add_argument("--columns", type=int, default=8, help="levels shown per strip")
    traj.add_argument("--from-prior", action="store_true", help="reverse strips from prior draws (generation)")
    return parser


# ------------------------------------------------------------------------------------------------- helpers
def _check_level(model: Pipeline, level: int | None) -> int:
    T = model.degradation.num_steps
    if level is None:
        return T
    if not 0 <= level <= T:
        raise UsageError(f"--level must lie in [0, {T}] (the model's num_steps), got {level}")
    return level


def _dataset(args: argparse.Namespace, model: Pipeline, split: str | None = None) -> Dataset:
    """Images at the model's size and channels from --folder, --dataset, or the checkpoint's own data config."""
    return dataset_from_args(args, model.image_size, model.channels, args.ckpt, split)


def _take(dataset: Dataset, num: int) -> tuple[Tensor, dict[str, Tensor]]:
    if len(dataset) == 0:
        raise UsageError("the dataset is empty")
    return unpack_batch(stack_items([dataset[i] for i in range(min(num, len(dataset)))]))


def _batches(total: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, total)) for start in range(0, total, size)]


def _write_settings(out: Path, mode: str, args: argparse.Namespace, model: Pipeline, **extra: Any) -> None:
    settings = {"mode": mode, **{k: v for k, v in vars(args).items() if k != "mode"},
                "degradation": type(model.degradation).__name__, "num_steps": model.degradation.num_steps,
                "image_size": model.image_size, "channels": model.channels, **extra}
    atomic_write_bytes(json.dumps(settings, indent=2, default=str).encode(), out / f"{mode}.json")


def _progress(args: argparse.Namespace, model: Pipeline, level: int, callback: Callable | None = None,
              sampler: str | None = None) -> tuple[tqdm, Callable[[dict], None]]:
    """A per-step progress bar for one sampler run, and the sampler callback that advances it."""
    sampler = sampler or args.sampler or model.sampler
    n_steps = model.sampling_steps(sampler, args.steps, level)
    bar = tqdm(total=n_steps, desc=f"  {sampler}", leave=False, disable=n_steps < 2)

    def step(info: dict) -> None:
        bar.update(1)
        if callback is not None:
            callback(info)

    return bar, step


def _sample(model: Pipeline, args: argparse.Namespace, device: torch.device, x_t: Tensor, level: int,
            params: dict[str, Tensor] | None, generator: torch.Generator, callback: Callable | None = None) -> Tensor:
    bar, step = _progress(args, model, level, callback)
    with bar, autocast(device, args.precision):
        out = model.sample(x_t.to(device), t=level, params=params, sampler=args.sampler, steps=args.steps,
                           callback=step, generator=generator, noise=args.noise)
    return out.float().clamp(0, 1)


def _partners(args: argparse.Namespace, model: Pipeline) -> Dataset | None:
    """--partner-root's images for a mixing model (found once per run; ``None`` for other models or without it)."""
    return partners_from_args(args, model) if "partner" in model.degradation.context_keys else None


def _context(model: Pipeline, context: dict[str, Tensor], partners: Dataset | None, n: int,
             generator: torch.Generator) -> dict[str, Tensor]:
    """The batch's degradation context, with mixing partners drawn from --partner-root when the data has none."""
    return with_partners(context, model.degradation.context_keys, partners, n, generator, "pass --partner-root PATH")


def _each_name(count: int) -> list[str]:
    return [f"{i:06d}.png" for i in range(count)]


def _save_each(images: Tensor, folder: Path, names: Sequence[str] | None = None) -> list[Path]:
    """One PNG per image with the model's channels (a 1-channel model's images are grayscale PNGs)."""
    names = _each_name(len(images)) if names is None else names
    return [save_image_atomic(image, folder / name) for image, name in zip(images, names)]


_EXPORT_FILES = (WEIGHTS, CONFIG)


def _model_files(path: str | Path) -> list[Path]:
    """The files of a model: a checkpoint, or an export folder's weights and config (to protect from outputs)."""
    path = Path(path)
    folder = path.parent if path.name == _EXPORT_FILES[0] else path
    return [folder / name for name in _EXPORT_FILES] if folder.is_dir() else [path]


def _planned_outputs(args: argparse.Namespace, plan: _RestorePlan | None = None) -> tuple[list[Path], list[Path]]:
    """Every file this run will write under --out, and the files it must never write (inputs, the model); restore's
    from its ``plan`` (made here when not given)."""
    out = Path(args.out)
    protected = _model_files(args.ckpt)
    if args.mode == "restore":
        plan = plan or _restore_plan(args)
        protected += plan.files
        return [out / "restored" / name for name in plan.names] + [out / "restore_grid.png",
                                                                    out / "restore.json"], protected
    main_file = {"reconstruct": "reconstruct_grid.png", "generate": "generate_grid.png",
                 "trajectory": "trajectory.png"}[args.mode]
    outputs = [out / main_file, out / f"{args.mode}.json"]
    if args.mode == "generate":
        outputs.append(out / "provenance.json")
    if getattr(args, "save_images", False):
        outputs += [out / "images" / name for name in _each_name(args.num)]
    return outputs, protected


def _check_outputs(args: argparse.Namespace, plan: _RestorePlan | None = None) -> None:
    """Every output location is checked before the model is loaded: --out must be a folder (or not exist yet), no
    output may be an input or the model file, and every file must be writable."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out!r} is an existing file; it must be a folder (created if missing)")
    outputs, protected = _planned_outputs(args, plan)
    check_output_locations(outputs, protected)


# --------------------------------------------------------------------------------------------------- modes
def run_reconstruct(args: argparse.Namespace, model: Pipeline, device: torch.device, out: Path) -> Path:
    level = _check_level(model, args.level)
    x0_all, context_all = _take(_dataset(args, model), args.num)
    generator = torch.Generator().manual_seed(args.seed)
    columns: list[list[Tensor]] = [[], [], [], []]
    partners = _partners(args, model)
    for start, stop in tqdm(_batches(len(x0_all), args.batch_size), desc="reconstruct"):
        x0 = x0_all[start:stop].to(device)
        context = _context(model, {k: v[start:stop] for k, v in context_all.items()}, partners, len(x0), generator)
        bar, step = _progress(args, model, level)
        with bar, autocast(device, args.precision):
            result = model.reconstruct(x0, level, sampler=args.sampler, steps=args.steps, generator=generator,
                                       callback=step, noise=args.noise,
                                       **{k: v.to(device) for k, v in context.items()})
        check_finite_output(result.direct, "direct restorations")
        check_finite_output(result.sampled, "sampled restorations")
        for column, images in zip(columns, (result.degraded, result.direct, result.sampled, result.x0)):
            column.append(images.float().cpu())
    grid = [torch.cat(c) for c in columns]
    path = save_png_atomic(restoration_grid(grid), out / "reconstruct_grid.png", nrow=4, scale=args.scale)
    if args.save_images:
        _save_each(grid[2], out / "images")
    _write_settings(out, "reconstruct", args, model, level=level, grid=str(path))
    return path


def _level_argument(text: str) -> int | str:
    """argparse type of ``restore --level``: an integer >= 0 or ``auto``."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a level (an integer >= 0) or 'auto', got {text!r}")
    return value


class _RestorePlan(NamedTuple):
    """The files ``restore`` reads, the names of their outputs under ``restored/``, and what it leaves out."""

    source: Path
    files: list[Path]
    names: list[str]
    skipped: list[tuple[Path, int]]  # (folder of an earlier restore run, files of its outputs left out)


def _output_name(relative: Path) -> Path:
    """``a.png`` keeps its name; any other file keeps its extension before ``.png`` (``a.jpg`` -> ``a.jpg.png``),
    so inputs that differ only in their extension (``a.png``, ``a.jpg``, ``a.PNG``) get different outputs."""
    return relative if relative.suffix == ".png" else relative.with_name(relative.name + ".png")


def _earlier_runs(folder: Path) -> list[Path]:
    """Folders below ``folder`` (itself included) that hold an earlier ``restore`` run's settings file."""
    runs = []
    for settings in sorted(folder.rglob("restore.json")):
        try:
            mode = json.loads(settings.read_text()).get("mode")
        except (OSError, ValueError, AttributeError):  # not this tool's settings file: an ordinary file
            continue
        if mode == "restore":
            runs.append(settings.parent)
    return runs


def _restore_plan(args: argparse.Namespace) -> _RestorePlan:
    """The input files and their output names, checked before any work (nothing is read or written here)."""
    source = Path(args.input)
    if not source.exists():
        raise UsageError(f"--input {str(source)!r} does not exist")
    skipped: list[tuple[Path, int]] = []
    if source.is_file():
        files = [source]
    elif source.is_dir():
        files = find_images(source)
        for run in _earlier_runs(source):  # outputs of an earlier run (e.g. --out equal to --input) are no inputs
            outputs = {run / "restore_grid.png"}
            kept = [f for f in files if f not in outputs and run / "restored" not in f.parents]
            if len(kept) < len(files):
                skipped.append((run, len(files) - len(kept)))
            files = kept
        if not files:
            raise UsageError(f"--input {str(source)!r} holds no images other than the outputs of an earlier restore "
                             "run (restore_grid.png, restored/)")
    else:
        raise UsageError(f"--input {str(source)!r} is neither an image file nor a folder of images")
    names, seen = [], {}
    for path in files:
        name = _output_name(path.relative_to(source) if source.is_dir() else Path(path.name)).as_posix()
        other = seen.setdefault(name.casefold(), path)
        if other != path:
            raise UsageError(f"{str(other)!r} and {str(path)!r} would both be restored to restored/{name}; rename "
                             "one of them")
        names.append(name)
    return _RestorePlan(source, files, names, skipped)


def _read_inputs(args: argparse.Namespace, model: Pipeline, files: list[Path]) -> list[Tensor]:
    images = []
    for path in files:
        try:
            image = read_image(path, model.channels, convert_channels=args.channels == "convert",
                               max_pixels=args.max_pixels, alpha_background=args.alpha_background)
        except ImageReadError as err:  # the library's advice names its arguments: say it with this tool's flags
            reason = err.reason.split(";")[0]
            if "alpha" in reason or "transparen" in reason:
                reason += "; pass --alpha-background G to composite it onto the grey level G in [0, 1]"
            elif "expected" in reason and "channel" in reason:
                reason += "; pass --channels convert to convert it (grey replicated to RGB, RGB to luma)"
            raise UsageError(f"cannot read image file {err.path!r}: {reason}") from err
        if args.resize:
            image = ImageTransform(model.image_size, model.channels, train=False)(image)
        try:
            model.degradation.check_image_size(image.shape[-2], image.shape[-1])
        except ValueError as err:
            raise UsageError(f"{str(path)!r} is {image.shape[-1]}x{image.shape[-2]}: {err} (or pass --resize)") \
                from err
        images.append(image)
    return images


def run_restore(args: argparse.Namespace, model: Pipeline, device: torch.device, out: Path,
                plan: _RestorePlan | None = None) -> Path:
    """``restore``; ``plan``: the input files, already found and their outputs checked (:func:`main` walks --input
    once), else found and checked here."""
    degradation = model.degradation
    if "partner" in degradation.context_keys:
        raise UsageError("restore cannot serve a mixing model: undoing a mix needs the partner image that was mixed "
                         "in; use reconstruct (with --partner-root) instead")
    if args.level != "auto":
        _check_level(model, args.level)
    else:
        try:
            check_estimable(degradation)
        except ValueError as err:
            raise UsageError(f"--level auto: {err}; give the level with --level N") from err
    if plan is None:
        plan = _restore_plan(args)
        _check_outputs(args, plan)
    for run, count in plan.skipped:
        print(f"sample.py restore: note: skipping {count} file(s) that an earlier restore run wrote in {str(run)!r} "
              "(restore_grid.png, restored/): they are outputs, not inputs", file=sys.stderr)
    files = plan.files
    images = _read_inputs(args, model, files)
    restore = any_size(model.restore, multiple=getattr(model.network, "size_multiple", 1), tile=args.tile,
                       overlap=args.overlap)
    sampler = args.sampler or model.sampler
    generator = torch.Generator().manual_seed(args.seed)
    restored: list[Tensor | None] = [None] * len(images)
    records: list[dict[str, Any]] = [{} for _ in images]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):  # images of one size are restored together, in batches
        groups.setdefault(tuple(image.shape), []).append(i)
    batches = [(shape, index[i:i + args.batch_size]) for shape, index in groups.items()
               for i in range(0, len(index), args.batch_size)]
    for _, index in tqdm(batches, desc="restore"):
        y = torch.stack([images[i] for i in index]).to(device)
        with autocast(device, args.precision):
            if args.level == "auto":  # the search's restorations at the estimated levels answer the samplers'
                estimate = estimate_level(restore, degradation, y, keep_restorations=True)  # first calls
                levels, notes, start = estimate.levels, estimate.to_records(), estimate
            else:
                levels, notes = torch.full((len(index),), args.level, dtype=torch.long), [{} for _ in index]
                start = levels
            # through the pipeline: the model's sampler, sample_steps and sample_noise as in every other mode
            result = model.restore_at_levels(y, start, sampler=sampler, steps=args.steps, generator=generator,
                                             noise=args.noise, restore=restore)
        check_finite_output(result, "restored images")
        for i, image, level, note in zip(index, result.float().clamp(0, 1).cpu(), levels.tolist(), notes):
            restored[i] = image
            records[i] = {"file": str(files[i]), "output": f"restored/{plan.names[i]}",
                          "height": image.shape[-2], "width": image.shape[-1],
                          "level": int(level), "level_source": "estimated" if args.level == "auto" else "given",
                          **({"estimate": note} if note else {})}
    _save_each(restored, out / "restored", plan.names)
    pairs = [torch.stack(pair) for pair in zip(images, restored)]
    height, width = max(p.shape[-2] for p in pairs), max(p.shape[-1] for p in pairs)
    padded = [torch.nn.functional.pad(p, (0, width - p.shape[-1], 0, height - p.shape[-2]), value=1.0) for p in pairs]
    path = save_png_atomic(torch.cat(padded), out / "restore_grid.png", nrow=2, scale=args.scale)
    _write_settings(out, "restore", args, model, sampler=sampler, images=records)
    return path


def _check_generate_arguments(args: argparse.Namespace) -> None:
    """Everything about --fit-prior/--output/--overwrite is checked before any work starts."""
    if not args.fit_prior:
        if args.output is not None:
            raise UsageError("--output is only used with --fit-prior (it names the model file to write)")
        if args.overwrite:
            raise UsageError("--overwrite is only used with --fit-prior (it lets --output replace a model file)")
        return
    if args.output is None:
        raise UsageError("--fit-prior needs --output NEW_FILE: the refitted model is written there, and the model "
                         f"file {args.ckpt!r} is never modified")
    output, ckpt = Path(args.output), Path(args.ckpt)
    export = ckpt.is_dir() or ckpt.name == _EXPORT_FILES[0]
    model_paths = {p.resolve() for p in _model_files(ckpt)} | {ckpt.resolve()}
    if export:
        model_paths.add(_model_files(ckpt)[0].parent.resolve())  # the export folder itself
    if output.resolve() in model_paths:
        raise UsageError(f"--output must be a new file, not the model file itself ({args.ckpt!r})")
    if output.exists() or output.is_symlink():
        if not args.overwrite:
            raise UsageError(f"--output {args.output!r} already exists: --fit-prior writes a new model file and never "
                             "replaces one silently; choose a new path, or pass --overwrite to replace it")
        if export and not output.is_dir():
            raise UsageError(f"--output {args.output!r} is a file, but the model is an export: its refit is written "
                             "as an export folder")
        if not export and output.is_dir():
            raise UsageError(f"--output {args.output!r} is a folder, but the model is a checkpoint: its refit is "
                             "written as a .ckpt file")
        if export and {p.name for p in output.iterdir()} - set(_EXPORT_FILES):
            raise UsageError(f"--output {args.output!r} holds other files than an export ({', '.join(_EXPORT_FILES)})"
                             "; --overwrite replaces an export, never a folder of other files")
    written = [output / name for name in _EXPORT_FILES] if export else [output]
    check_output_locations(written, _model_files(ckpt))
    outputs, _ = _planned_outputs(args)
    clash = {p.resolve() for p in written} & {p.resolve() for p in outputs}
    if clash:
        raise UsageError(f"--output {args.output!r} is also where this run writes {str(sorted(clash)[0])!r}; choose "
                         "another --output or --out")


def run_generate(args: argparse.Namespace, model: Pipeline, device: torch.device, out: Path) -> Path:
    fit_images = _dataset(args, model, split="train") if args.fit_prior else None
    if fit_images is not None and (args.folder or args.dataset) and not args.fit_resize:
        change = conversion_of(fit_images, model.image_size, model.channels)
        if change:
            raise UsageError(f"--fit-prior: these images do not match the model ({model.image_size}x"
                             f"{model.image_size}, {model.channels} channel(s)); they would be {change}. Fit the "
                             "prior on images like the model's training images, or pass --fit-resize to accept that")
    prepare_prior(model, args, fit_images, limit=args.fit_images)
    with autocast(device, args.precision):
        images, draw = model.generate(args.num, torch.Generator().manual_seed(args.seed), sampler=args.sampler,
                                      steps=args.steps, batch_size=args.batch_size, noise=args.noise)
    check_finite_output(images, "generated images")  # before anything is written, the refitted model included
    if args.fit_prior:
        print(f"saved the model with its refitted {type(model.prior).__name__} as "
              f"{save_model_as(model, args.ckpt, args.output)}")
    images = images.float().cpu()
    records = [{"index": i, "seed": args.seed, "start_state": p} for i, p in enumerate(draw.provenance)]
    nrow = args.nrow or max(1, round(len(images) ** 0.5))
    path = save_png_atomic(images, out / "generate_grid.png", nrow=nrow, scale=args.scale)
    if args.save_images:
        files = _save_each(images, out / "images")
        for record, file in zip(records, files):
            record["file"] = str(file.relative_to(out))
    atomic_write_bytes(json.dumps({"images": records}, indent=2).encode(), out / "provenance.json")
    _write_settings(out, "generate", args, model, grid=str(path), prior=type(model.prior).__name__)
    return path


def run_trajectory(args: argparse.Namespace, model: Pipeline, device: torch.device, out: Path) -> Path:
    T = model.degradation.num_steps
    if args.columns < 2:
        raise UsageError(f"--columns must be >= 2, got {args.columns}")
    levels = sorted({round(i * T / (args.columns - 1)) for i in range(args.columns)})
    generator = torch.Generator().manual_seed(args.seed)
    rows: list[Tensor] = []
    if args.from_prior:
        prepare_prior(model, args)
        start = model.prior.sample(args.num, (model.channels, model.image_size, model.image_size), generator)
        x_T, params = start.x_T.to(device), {k: v.to(device) for k, v in start.params.items()} or None
        forward = None
    else:
        x0, context = _take(_dataset(args, model), args.num)
        x0 = x0.to(device)
        context = _context(model, context, _partners(args, model), len(x0), generator)
        params = model.degradation.make_params(x0, generator, **{k: v.to(device) for k, v in context.items()})
        params = {k: v.to(device) for k, v in params.items()}
        forward = [model.degradation(x0, level, params).float().clamp(0, 1).cpu() for level in levels]
        x_T = model.degradation(x0, T, params)
    visited: dict[int, Tensor] = {}
    wanted = set(levels)

    def record(info: dict) -> None:
        if info["t"] in wanted:
            visited[info["t"]] = info["x"].float().clamp(0, 1).cpu()

    final = _sample(model, args, device, x_T, T, params, generator, callback=record)
    check_finite_output(final, "restored images")
    for level, images in visited.items():
        check_finite_output(images, f"images at level {level}")
    visited[0] = final.cpu()
    shown = sorted(visited, reverse=True)  # with step skipping, the visited levels nearest to the chosen ones
    reverse = [visited[level] for level in shown]
    for i in range(len(x_T)):
        if forward is not None:
            rows.append(torch.stack([f[i] for f in forward]))
            pad = len(forward) - len(reverse)
            rows.append(torch.stack([r[i] for r in reverse] + [torch.ones_like(reverse[0][i])] * max(pad, 0)))
        else:
            rows.append(torch.stack([r[i] for r in reverse]))
    ncol = max(len(levels), len(reverse))
    rows = [torch.cat([r, torch.ones(ncol - len(r), *r.shape[1:])]) if len(r) < ncol else r for r in rows]
    path = save_png_atomic(torch.cat(rows), out / "trajectory.png", nrow=ncol, scale=args.scale)
    _write_settings(out, "trajectory", args, model, forward_levels=levels, reverse_levels=shown)
    return path


MODES = {"reconstruct": run_reconstruct, "restore": run_restore, "generate": run_generate,
         "trajectory": run_trajectory}


def main(argv: Sequence[str] | None = None) -> Path:
    """Run ``sample.py``; returns the main output file.  Errors exit with a one-line message (status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.mode == "generate":
            _check_generate_arguments(args)
        plan = _restore_plan(args) if args.mode == "restore" else None  # --input is walked once
        _check_outputs(args, plan)
        device = device_from(args.device)
        model = load_model(args.ckpt, map_location="cpu").to(device)
        if args.compile:
            model.compile_for_sampling("reduce-overhead" if device.type == "cuda" else None)
        out = Path(args.out)
        with torch.no_grad():
            path = MODES[args.mode](args, model, device, out, **({"plan": plan} if plan is not None else {}))
    except (UsageError, FileNotFoundError, ValueError, pickle.UnpicklingError, NotADirectoryError, IsADirectoryError,
            PermissionError) as err:
        parser.exit(2, f"sample.py {args.mode}: error: {error_text(err, args.ckpt)}\n")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
