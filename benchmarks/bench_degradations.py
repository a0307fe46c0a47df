"""Cost of ``D(x, t)`` at ``t = 1`` and ``t = T`` for every operator, against the original implementation's approach.

    python -m benchmarks.bench_degradations                  # batch 32, 128x128, GPU if available
    python -m benchmarks.bench_degradations --device cpu --json benchmarks/results/degradations-cpu.json
    python -m benchmarks.bench_degradations --operators kornia     # the kornia operators only

The blur is the paper's CelebA generation blur (T 300, kernel 27, sigma_i = exp(0.01 i), circular); the other
operators use the paper's CelebA-128 settings.  The baseline iterates per-step operators as the original code did
(see ``benchmarks/baselines.py``).  Figures are medians of repeated calls.

The operators built on kornia (second table) are measured at ``t = 1``, ``t = T`` and at mixed levels (uniform in
``1 .. T``, one per image, as in training), beside what a user would otherwise write: the kornia call looped over the
images with each image's parameter (``baselines.kornia_loop``).
"""

from __future__ import annotations

import argparse
import sys

import torch

import colddiff.degradations as cd
from benchmarks.baselines import kornia_loop, naive_degrade
from benchmarks.common import fmt_time, format_table, machine, pick_device, report, timeit
from colddiff.degradations.functional import elastic_noise


def operators() -> dict[str, cd.Degradation]:
    return {
        "GaussianBlur (T 300, k 27, exp 0.01, circular)": cd.GaussianBlur(300, kernel_size=27, schedule="exponential",
                                                                          sigma=1.0, rate=0.01),
        "GaussianBlur (T 200, k 15, exp 0.01, reflect)": cd.GaussianBlur(200, kernel_size=15, schedule="exponential",
                                                                         sigma=1.0, rate=0.01, border="reflect"),
        "GaussianMask (T 100, centred)": cd.GaussianMask(100, sigma=0.2, sigma_step=0.2),
        "Pixelate (T 4, 128 -> 8)": cd.Pixelate(4),
        "Snow (T 200, level 4)": cd.Snow(200, level=4),
        "Desaturate (T 20)": cd.Desaturate(20),
        "Mix (T 200)": cd.Mix(200),
        "GaussianNoise (T 200)": cd.GaussianNoise(200),
    }


def kornia_operators() -> dict[str, cd.Transform]:
    """The kornia operators at settings for 128² images (whole odd motion lengths and whole bits, so the kornia
    loop computes the same images)."""
    return {
        "MotionBlur (T 10, length 1 -> 21, random angle)": cd.MotionBlur(10, max_length=21.0),
        "DefocusBlur (T 20, radius 0.5 -> 5)": cd.DefocusBlur(20, max_radius=5.0),
        "JPEG (T 20, quality 100 -> 10)": cd.JPEG(20),
        "Rotate (T 20, 0 -> 90 degrees)": cd.Rotate(20),
        "Zoom (T 20, 1 -> 2)": cd.Zoom(20),
        "Posterize (T 7, 8 -> 1 bits, truncate)": cd.Posterize(7, rounding="truncate"),
        "ContrastLoss (T 20, 1 -> 0)": cd.ContrastLoss(20),
        "Elastic (T 20, RMS 0 -> 3 px, sigma 4)": cd.Elastic(20),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of repeats per measurement")
    parser.add_argument("--only", default=None, help="substring filter on operator names")
    parser.add_argument("--operators", choices=("all", "paper", "kornia"), default="all",
                        help="the paper's operators (first table), the kornia operators (second table), or both")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    args = parser.parse_args(argv)

    device = pick_device(args.device)
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    rows, results = [], []
    for name, op in (operators() if args.operators != "kornia" else {}).items():
        if args.only and args.only.lower() not in name.lower():
            continue
        op = op.to(device)
        params = op.make_params(x, **({"partner": torch.rand_like(x)} if "partner" in op.context_keys else {}))
        T = op.num_steps
        entry = {"operator": name, "num_steps": T}
        for t in (1, T):
            level = torch.full((args.batch,), t, device=device, dtype=torch.long)
            ours = timeit(lambda op=op, level=level, params=params: op.degrade(x, level, params), device, args.budget)
            naive = timeit(lambda op=op, t=t, params=params: naive_degrade(op, x, t, params), device, args.budget)
            entry[f"ours_t{'1' if t == 1 else 'T'}_s"] = ours
            entry[f"naive_t{'1' if t == 1 else 'T'}_s"] = naive
        entry["speedup_at_T"] = entry["naive_tT_s"] / entry["ours_tT_s"]
        results.append(entry)
        rows.append([name, fmt_time(entry["ours_t1_s"]), fmt_time(entry["ours_tT_s"]), fmt_time(entry["naive_t1_s"]),
                     fmt_time(entry["naive_tT_s"]), f"{entry['speedup_at_T']:.1f}x"])
        print(f"  measured {name}", file=sys.stderr)
    kornia_rows, kornia_results = [], []
    for name, op in (kornia_operators() if args.operators != "paper" else {}).items():
        if args.only and args.only.lower() not in name.lower():
            continue
        op = op.to(device)
        params = op.make_params(x, torch.Generator(device).manual_seed(0))
        loop_params = dict(params)
        if isinstance(op, cd.Elastic):  # the kornia call takes the unsmoothed noise of the same draw
            loop_params["noise"] = elastic_noise(x, op.draw_options["sigma"], torch.Generator(device).manual_seed(0))
        T = op.num_steps
        levels = {"t1": torch.full((args.batch,), 1, device=device, dtype=torch.long),
                  "tT": torch.full((args.batch,), T, device=device, dtype=torch.long),
                  "mixed": torch.randint(1, T + 1, (args.batch,), device=device,
                                         generator=torch.Generator(device).manual_seed(0))}
        entry = {"operator": name, "num_steps": T, "baseline": "kornia call looped over the images"}
        for key, level in levels.items():
            ours_out, loop_out = op.degrade(x, level, params), kornia_loop(op, x, level, loop_params)
            entry[f"max_abs_difference_{key}"] = float((ours_out - loop_out).abs().max())  # same images
            entry[f"ours_{key}_s"] = timeit(lambda op=op, level=level, params=params: op.degrade(x, level, params),
                                            device, args.budget)
            entry[f"loop_{key}_s"] = timeit(lambda op=op, level=level: kornia_loop(op, x, level, loop_params),
                                            device, args.budget)
        entry["speedup_mixed"] = entry["loop_mixed_s"] / entry["ours_mixed_s"]
        kornia_results.append(entry)
        kornia_rows.append([name, *(fmt_time(entry[f"ours_{k}_s"]) for k in levels),
                            *(fmt_time(entry[f"loop_{k}_s"]) for k in levels), f"{entry['speedup_mixed']:.1f}x"])
        print(f"  measured {name}", file=sys.stderr)
    info = machine(device)
    kornia_table = format_table(["operator", "ours t=1", "ours t=T", "ours mixed t", "loop t=1", "loop t=T",
                                 "loop mixed t", "speed-up, mixed t"], kornia_rows)
    payload = report("degradations", info, f"D(x, t), batch {args.batch}, 3x{args.size}x{args.size}, fp32",
                     ["operator", "ours t=1", "ours t=T", "naive t=1", "naive t=T", "speed-up at T"], rows, results,
                     args.json, batch=args.batch, size=args.size, kornia_results=kornia_results,
                     kornia_table=kornia_table)
    if kornia_rows:
        print(f"\nkornia operators, the same batch: colddiff (one batched call) vs the kornia call looped over the "
              f"images (mixed t: levels uniform in 1 .. T, one per image)\n\n{kornia_table}")
    return payload

if __name__ == "__main__":
    main()
