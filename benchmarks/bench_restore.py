"""Restoring degraded images of unknown level: the level estimate and the restoration it gives, measured.

    python train.py fit --config configs/quickstart.yaml          # once: runs/quickstart/checkpoints/last.ckpt
    python -m benchmarks.bench_restore --ckpt runs/quickstart/checkpoints/last.ckpt \\
        --json benchmarks/results/restore-cpu-quickstart.json --picture docs/images/restore_before_after.png

On the embedded test digits (``colddiff.datasets.EmbeddedMNIST``, split ``test``, ``--num`` images), every image is
degraded with the model's own degradation at a known random level ``t`` uniform in ``{0, ..., T}``.  Then:

* the level estimate ``t_hat`` of :func:`colddiff.estimation.estimate_level` (``model.restore``, the EMA network):
  median, 90th percentile and mean of ``|t_hat - t|``, the fraction exact, network evaluations per image;
* PSNR/SSIM (8-bit quantised, as ``evaluate.py restoration``) of the restoration from the estimated level, from the
  true level, and from wrong fixed levels (``T`` and ``T // 2``), with ``sample_improved`` and ``sample_direct``;
* images blurred by a *different* blur than the model's (a box blur and a horizontal motion blur, circular
  borders): the degraded input's PSNR/SSIM against the restoration's (estimated level, improved sampler), so a user
  knows whether restoring helps;
* for a JPEG model (:class:`colddiff.degradations.JPEG`, e.g. ``configs/dejpeg_mnist.yaml``), **real JPEG files**:
  the same digits at the same levels, encoded by Pillow (libjpeg) at each level's quality and decoded to 8 bits, as
  a user's own ``.jpg`` files reach ``sample.py restore --level auto``: the level estimate against the level whose
  quality made the file, and the restoration from it.  The model was trained on kornia's differentiable codec, an
  approximation of libjpeg's, so this measures how well it carries over.

Any restoration model works: the degradation is the model's own (``python -m benchmarks.bench_restore --ckpt
runs/dejpeg_mnist/checkpoints/last.ckpt`` for the JPEG digits).

Prints Markdown tables, writes JSON (``--json``) and a picture (``--picture``): degraded | restored with the
estimated level | original.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from benchmarks.common import machine, pick_device, print_table, report
from colddiff.datasets import EmbeddedMNIST, ImageTransform
from colddiff.degradations import JPEG, GaussianBlur
from colddiff.estimation import check_estimable, estimate_level, sample_at_levels
from colddiff.evaluation.metrics import RestorationMetrics
from colddiff.io import restoration_grid, save_png_atomic
from colddiff.sampling import sample

DEFAULT_CKPT = "runs/quickstart/checkpoints/last.ckpt"
ROW_DEGRADED = "none (the degraded input)"
HOW_TO_MAKE_ONE = (
    "make one with `python train.py fit --config configs/quickstart.yaml` (about 6-10 minutes on 2 CPU cores; it "
    f"writes {DEFAULT_CKPT}), then run `python -m benchmarks.bench_restore --ckpt {DEFAULT_CKPT}`"
)


def box_blur(x: Tensor, size: int) -> Tensor:
    """A ``size x size`` box blur with circular borders."""
    kernel = torch.full((size, size), 1.0 / size**2, dtype=x.dtype, device=x.device)
    return _convolve(x, kernel)


def motion_blur(x: Tensor, length: int) -> Tensor:
    """A horizontal motion blur over ``length`` pixels (a ``1 x length`` box) with circular borders."""
    kernel = torch.full((1, length), 1.0 / length, dtype=x.dtype, device=x.device)
    return _convolve(x, kernel)


def _convolve(x: Tensor, kernel: Tensor) -> Tensor:
    kh, kw = kernel.shape
    padded = F.pad(x, (kw // 2, kw - 1 - kw // 2, kh // 2, kh - 1 - kh // 2), mode="circular")
    weight = kernel.expand(x.shape[1], 1, kh, kw)
    return F.conv2d(padded, weight, groups=x.shape[1]).clamp(0.0, 1.0)


def pillow_jpeg(x: Tensor, quality: Tensor) -> Tensor:
    """Each image written as a JPEG file by Pillow (libjpeg, baseline, 4:2:0 for RGB) at its own integer quality and
    read back as 8 bits ``/ 255``; quality 0 stands for level 0, a clean image stored losslessly in 8 bits.

    Shape:
        ``x``: ``(B, C, H, W)``, ``C`` 1 or 3; ``quality``: ``(B,)`` integers in ``[0, 100]``; output: like ``x``.
    """
    out = []
    for image, q in zip(x.detach().cpu(), quality.tolist()):
        pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        if q == 0:
            out.append(torch.from_numpy(pixels.astype(np.float32) / 255).permute(2, 0, 1))
            continue
        picture = Image.fromarray(pixels[..., 0], "L") if pixels.shape[-1] == 1 else Image.fromarray(pixels, "RGB")
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=int(q))
        buffer.seek(0)
        decoded = np.asarray(Image.open(buffer), dtype=np.float32) / 255
        out.append(torch.from_numpy(decoded.reshape(*decoded.shape[:2], -1).copy()).permute(2, 0, 1))
    return torch.stack(out).to(x.device, x.dtype)


def _error_summary(t_hat: Tensor, t: Tensor) -> dict:
    errors = (t_hat - t).abs()
    values = [float(e) for e in errors.tolist()]
    by_level = {int(level): {"n": int((t == level).sum()), "mean_estimate": float(t_hat[t == level].float().mean())}
                for level in sorted(set(t.tolist()))}
    return {"num_images": len(values), "median_abs_error": statistics.median(values),
            "p90_abs_error": _percentile(values, 0.9), "mean_abs_error": sum(values) / len(values),
            "exact_fraction": sum(e == 0 for e in values) / len(values),
            "within_1_fraction": sum(e <= 1 for e in values) / len(values),
            "mean_signed_error": float((t_hat - t).float().mean()), "by_true_level": by_level}


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def load(ckpt: str, device: torch.device):
    path = Path(ckpt)
    if not path.exists():
        raise SystemExit(f"bench_restore: no checkpoint at {str(path)!r}: {HOW_TO_MAKE_ONE}")
    from colddiff.export import load_model  # Lightning is needed only to load the model

    return load_model(path, map_location=device)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default=DEFAULT_CKPT, help="checkpoint or export folder of a restoration model")
    parser.add_argument("--num", type=int, default=1000, help="test digits (at most 1000)")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random levels (and params)")
    parser.add_argument("--box", type=int, default=7, help="box blur size for the different-blur rows")
    parser.add_argument("--motion", type=int, default=9, help="motion blur length for the different-blur rows")
    parser.add_argument("--picture", default=None, help="write degraded | restored (estimated level) | original")
    parser.add_argument("--picture-num", type=int, default=8)
    parser.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda if available)")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    args = parser.parse_args(argv)
    if not 1 <= args.num <= 1000:
        parser.error(f"--num must lie in [1, 1000] (the embedded test split), got {args.num}")
    device = pick_device(args.device)
    model = load(args.ckpt, device)
    degradation = model.degradation
    if degradation.context_keys:
        raise SystemExit(f"bench_restore: {type(degradation).__name__} needs context "
                         f"{list(degradation.context_keys)} that the digits do not provide")
    T = degradation.num_steps
    dataset = EmbeddedMNIST("test", ImageTransform(model.image_size, model.channels, train=False))
    x0_all = torch.stack([dataset[i] for i in range(args.num)])
    generator = torch.Generator().manual_seed(args.seed)
    t_all = torch.randint(0, T + 1, (args.num,), generator=generator)
    # random operators: the params are drawn here and known to the estimator (a synthetic test); deterministic
    # operators, the case of a user's image, need none
    params_all = degradation.make_params(x0_all.to(device), generator) if degradation.param_keys else None
    if params_all is None:
        check_estimable(degradation)
    restore = model.restore
    metrics = RestorationMetrics(device)
    errors: list[int] = []
    estimates: list[Tensor] = []
    evaluations: list[int] = []
    calls = 0
    estimate_s = 0.0
    fixed = {"fixed T": T, "fixed T/2": T // 2}

    def params_of(start: int, stop: int):
        return None if params_all is None else {k: v[start:stop] for k, v in params_all.items()}

    started = time.perf_counter()
    clean_changes: list[float] = []  # clean inputs (t = 0): RMSE between the input and its restoration
    for start, stop in _chunks(args.num, args.batch_size):
        x0, t = x0_all[start:stop].to(device), t_all[start:stop].to(device)
        params = params_of(start, stop)
        y = degradation(x0, t, params)
        tick = time.perf_counter()
        estimate = estimate_level(restore, degradation, y, params=params)
        estimate_s += time.perf_counter() - tick
        t_hat = estimate.levels
        estimates.append(t_hat.cpu())
        errors += (t_hat - t).abs().tolist()
        evaluations += estimate.evaluations
        calls += estimate.network_calls
        # PSNR/SSIM over the degraded images (t >= 1): a clean input restored from level 0 is itself (PSNR inf)
        degraded = t > 0
        if degraded.any():
            metrics.update(ROW_DEGRADED, y[degraded], x0[degraded], targets_are_new=True)
        for sampler in ("improved", "direct"):
            runs = [("true t", lambda: sample_at_levels(sampler, restore, degradation, y, t, params=params)),
                    ("estimated t_hat", lambda: sample_at_levels(sampler, restore, degradation, y, t_hat,
                                                                 params=params))]
            # the images hold their own levels; the sampler is told a wrong, fixed one
            runs += [(name, lambda level=level: sample(sampler, restore, degradation, y, level, params))
                     for name, level in fixed.items()]
            for name, run in runs:
                restored = run()
                if degraded.any():
                    metrics.update(f"{sampler}, {name}", restored[degraded], x0[degraded])
                if sampler == "improved" and name == "estimated t_hat":
                    clean = ~degraded
                    clean_changes += (restored[clean] - y[clean]).pow(2).flatten(1).mean(1).sqrt().tolist()
        print(f"  restored {stop}/{args.num}", file=sys.stderr)
    main_s = time.perf_counter() - started
    t_hat_all = torch.cat(estimates)
    by_level = {}
    for level in range(T + 1):
        mask = t_all == level
        if mask.any():
            by_level[level] = {"n": int(mask.sum()),
                               "mean_abs_error": float((t_hat_all[mask] - level).abs().float().mean()),
                               "mean_estimate": float(t_hat_all[mask].float().mean())}
    estimation = {
        "num_images": args.num,
        "num_steps": T,
        "median_abs_error": statistics.median(errors),
        "p90_abs_error": _percentile([float(e) for e in errors], 0.9),
        "mean_abs_error": sum(errors) / len(errors),
        "exact_fraction": sum(e == 0 for e in errors) / len(errors),
        "within_1_fraction": sum(e <= 1 for e in errors) / len(errors),
        "mean_signed_error": float((t_hat_all - t_all).float().mean()),
        "evaluations_per_image_mean": sum(evaluations) / len(evaluations),
        "evaluations_per_image_max": max(evaluations),
        "candidate_levels": T + 1,
        "network_calls": calls,
        "estimate_seconds": estimate_s,
        "by_true_level": by_level,
        "clean_inputs": len(clean_changes),
        "clean_inputs_left_unchanged_fraction": (sum(c == 0 for c in clean_changes) / len(clean_changes)
                                                 if clean_changes else None),
        "clean_inputs_mean_rmse_change": sum(clean_changes) / len(clean_changes) if clean_changes else None,
    }

    # images blurred by another blur than the model's
    other_rows, other_results = [], []
    if isinstance(degradation, GaussianBlur):
        for name, blur in ((f"box blur {args.box}x{args.box}", lambda x: box_blur(x, args.box)),
                           (f"motion blur 1x{args.motion}", lambda x: motion_blur(x, args.motion))):
            other = RestorationMetrics(device)
            levels_found: list[int] = []
            for start, stop in _chunks(args.num, args.batch_size):
                x0 = x0_all[start:stop].to(device)
                y = blur(x0)
                t_hat = estimate_level(restore, degradation, y).levels
                levels_found += t_hat.tolist()
                other.update("degraded", y, x0, targets_are_new=True)
                other.update("restored", sample_at_levels("improved", restore, degradation, y, t_hat), x0)
            values = other.compute()
            entry = {"blur": name, "degraded": values["degraded"], "restored": values["restored"],
                     "median_estimated_level": statistics.median(levels_found),
                     "psnr_gain_db": values["restored"]["PSNR"] - values["degraded"]["PSNR"]}
            other_results.append(entry)
            other_rows.append([name, f"{values['degraded']['PSNR']:.2f}", f"{values['restored']['PSNR']:.2f}",
                               f"{entry['psnr_gain_db']:+.2f}", f"{values['degraded']['SSIM']:.4f}",
                               f"{values['restored']['SSIM']:.4f}", f"{entry['median_estimated_level']:g}"])

    # a JPEG model: the digits as real JPEG files (Pillow), at the qualities of their levels
    files_result, files_rows = None, []
    if isinstance(degradation, JPEG):
        files = RestorationMetrics(device)
        qualities = degradation.severity.round().long().cpu()
        found: list[Tensor] = []
        tick = time.perf_counter()
        for start, stop in _chunks(args.num, args.batch_size):
            x0, t = x0_all[start:stop].to(device), t_all[start:stop]
            y = pillow_jpeg(x0, torch.where(t == 0, 0, qualities[t]))
            t_hat = estimate_level(restore, degradation, y).levels
            found.append(t_hat.cpu())
            degraded = (t > 0).to(device)
            if degraded.any():
                files.update("JPEG file (the degraded input)", y[degraded], x0[degraded], targets_are_new=True)
                for sampler in ("improved", "direct"):
                    restored = sample_at_levels(sampler, restore, degradation, y, t_hat)
                    files.update(f"{sampler}, estimated t_hat", restored[degraded], x0[degraded])
                    restored = sample_at_levels(sampler, restore, degradation, y, t.to(device))
                    files.update(f"{sampler}, true t", restored[degraded], x0[degraded])
            print(f"  JPEG files {stop}/{args.num}", file=sys.stderr)
        values = files.compute()
        files_result = {"encoder": f"Pillow {Image.__version__} (libjpeg), quality round(q_t), 8-bit decode",
                        "qualities_by_level": qualities.tolist(), "seconds": time.perf_counter() - tick,
                        "estimation": _error_summary(torch.cat(found), t_all), "restoration": values}
        files_rows = [[name, f"{v['PSNR']:.2f}", f"{v['SSIM']:.4f}", f"{v['RMSE']:.4f}"] for name, v in values.items()]

    if args.picture:
        n = min(args.picture_num, args.num)
        x0 = x0_all[:n].to(device)
        params = params_of(0, n)
        y = degradation(x0, t_all[:n].to(device), params)
        t_hat = estimate_level(restore, degradation, y, params=params).levels
        restored = sample_at_levels("improved", restore, degradation, y, t_hat, params=params)
        save_png_atomic(restoration_grid([y, restored, x0]), args.picture, nrow=3, scale=3)
        print(f"wrote {args.picture}")

    results = metrics.compute()
    true_psnr = {sampler: results[f"{sampler}, true t"]["PSNR"] for sampler in ("improved", "direct")}
    rows, records = [], []
    for name, values in results.items():
        sampler, _, level = name.partition(", ") if name != ROW_DEGRADED else ("-", "", name)
        gap = values["PSNR"] - true_psnr[sampler] if sampler in true_psnr else None
        records.append({"sampler": sampler, "level": level, "psnr_minus_true_level_psnr": gap, **values})
        rows.append([sampler, level, f"{values['PSNR']:.2f}", "-" if gap is None else f"{gap:+.2f}",
                     f"{values['SSIM']:.4f}", f"{values['RMSE']:.4f}"])
    info = machine(device)
    print(f"\nLevel estimate on {args.num} test digits, {type(degradation).__name__} T {T}, levels uniform in "
          f"[0, {T}] (seed {args.seed})\n")
    print_table(["median |t_hat - t|", "p90 |t_hat - t|", "mean |t_hat - t|", "exact", "within 1",
                 "mean t_hat - t", "evaluations / image", "estimate time"],
                [[f"{estimation['median_abs_error']:g}", f"{estimation['p90_abs_error']:g}",
                  f"{estimation['mean_abs_error']:.3f}", f"{100 * estimation['exact_fraction']:.1f}%",
                  f"{100 * estimation['within_1_fraction']:.1f}%", f"{estimation['mean_signed_error']:+.3f}",
                  f"{estimation['evaluations_per_image_mean']:.1f} of {T + 1} (max "
                  f"{estimation['evaluations_per_image_max']})",
                  f"{estimate_s:.1f} s ({1000 * estimate_s / args.num:.1f} ms/image)"]])
    if clean_changes:
        print(f"\nClean inputs (t = 0): {len(clean_changes)}; left unchanged (t_hat = 0): "
              f"{100 * estimation['clean_inputs_left_unchanged_fraction']:.1f}%; mean RMSE change by the restoration "
              f"from t_hat: {estimation['clean_inputs_mean_rmse_change']:.4f}")
    if other_rows:
        print(f"\nImages blurred by a different blur than the model's ({args.num} test digits; restored from the "
              "estimated level, improved sampler)\n")
        print_table(["input", "degraded PSNR", "restored PSNR", "gain", "degraded SSIM", "restored SSIM",
                     "median t_hat"], other_rows)
    if files_result is not None:
        e = files_result["estimation"]
        print(f"\nReal JPEG files ({args.num} test digits, Pillow at quality round(q_t) of each digit's level, the "
              f"clean file at level 0): level estimate |t_hat - t| median {e['median_abs_error']:g}, 90th pct. "
              f"{e['p90_abs_error']:g}, exact {100 * e['exact_fraction']:.1f}%, within 1 "
              f"{100 * e['within_1_fraction']:.1f}%, mean t_hat - t {e['mean_signed_error']:+.3f}\n")
        print_table(["digits with t >= 1", "PSNR", "SSIM", "RMSE"], files_rows)
    count = next(iter(results.values()))["N"] if results else 0
    return report("restore", info, f"Restoration of the {count} degraded test digits (t >= 1) by the level the sampler "
                  "is told (PSNR/SSIM/RMSE on 8-bit images)",
                  ["sampler", "level told", "PSNR", "PSNR - true-level PSNR", "SSIM", "RMSE"], rows, records,
                  args.json, checkpoint=str(args.ckpt), degradation=repr(degradation), seed=args.seed,
                  estimation=estimation, other_blurs=other_results, jpeg_files=files_result, seconds_total=main_s)


if __name__ == "__main__":
    main()
