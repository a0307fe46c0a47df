"""Sampling throughput at full T (improved sampler), against T bare network calls and the original's approach.

    python -m benchmarks.bench_sample                         # GPU: CelebA-128 blur generation, batch 16 and 128
    python -m benchmarks.bench_sample --device cpu --tiny --setups cifar10 --batches 4

Ours: ``colddiff.sampling.sample_improved`` (one closed-form operator call per step) with the model's ``restore`` (the
EMA network read by the objective) in bf16 autocast, channels-last and ``torch.compile`` (``--compile-mode``; CUDA
graphs with ``reduce-overhead``).  "Bare"
times the same compiled network called T times on the same batch, so ``ours / bare`` is the cost of everything but
the network.  Naive: fp32 eager network, and Algorithm 2 recomputing ``D(x0_hat, s)`` and ``D(x0_hat, s - 1)`` from
scratch with per-step convolutions at every step (``O(T^2)`` operator steps), as the original code does.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

import torch

from benchmarks.baselines import naive_sample_improved
from benchmarks.common import (
    add_speed_arguments,
    machine,
    report,
    resolve_speed,
    speed_description,
    timeit,
)
from benchmarks.setups import SETUPS, Setup
from colddiff.module import ColdDiffusion
from colddiff.sampling import sample_improved


def build(setup: Setup, device: torch.device, tiny: bool, fast: bool, compile_mode: str | None, bf16: bool = True):
    """``restore`` and the degradation.  Ours: the model's own ``restore`` (the EMA network through the objective,
    channels-last, optionally compiled); naive: the bare fp32 network."""
    torch.manual_seed(0)
    network = setup.network(tiny).to(device).eval()
    degradation = setup.degradation().to(device)
    if not fast:
        return network, degradation
    model = ColdDiffusion(degradation, network, image_size=setup.image_size, channels=setup.channels,
                          channels_last=True).to(device).eval()
    if compile_mode:
        model.pipeline.compile_for_sampling(compile_mode)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def restore(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with autocast:
            return model.restore(x_t, t)

    return restore, model.degradation


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setups", nargs="+", default=["celeba128"], choices=list(SETUPS))
    parser.add_argument("--batches", nargs="+", type=int, default=[16, 128])
    parser.add_argument("--skip-to", type=int, default=30, help="levels visited with step skipping")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--naive", choices=("run", "skip"), default="run",
                        help="skip the O(T^2) baseline (it takes minutes on a GPU, hours on a CPU)")
    add_speed_arguments(parser)
    args = parser.parse_args(argv)
    device, compile_mode, bf16 = resolve_speed(args)
    repeats = {"budget_s": 0.0, "min_repeats": args.repeats}  # a warm-up call, then exactly --repeats timed calls
    rows, results = [], []
    for key in args.setups:
        setup = SETUPS[key]()
        for batch in args.batches:
            restore, degradation = build(setup, device, args.tiny, True, compile_mode, bf16)
            T = degradation.num_steps
            x_T = torch.rand(batch, setup.channels, setup.image_size, setup.image_size, device=device)
            levels = torch.full((batch,), T, device=device, dtype=torch.long)

            def bare() -> None:
                for _ in range(T):
                    restore(x_T, levels)

            ours = timeit(lambda: sample_improved(restore, degradation, x_T, params={}), device, **repeats)
            bare_s = timeit(bare, device, **repeats)
            skipping = timeit(lambda: sample_improved(restore, degradation, x_T, params={}, steps=args.skip_to),
                              device, **repeats)
            entry = {"setup": setup.name, "batch": batch, "num_steps": T, "tiny_network": args.tiny,
                     "ours_images_per_s": batch / ours, "bare_network_images_per_s": batch / bare_s,
                     "sampler_over_bare": ours / bare_s, f"skip_{args.skip_to}_images_per_s": batch / skipping,
                     "hours_for_50k_images": 50_000 / (batch / ours) / 3600}
            if args.naive == "run":
                naive_restore, naive_degradation = build(setup, device, args.tiny, False, None)
                naive = timeit(lambda: naive_sample_improved(naive_restore, naive_degradation, x_T, {}), device,
                               budget_s=0.0)
                entry["naive_images_per_s"] = batch / naive
                entry["speedup"] = naive / ours
            results.append(entry)
            rows.append([setup.name + (" (tiny net)" if args.tiny else ""), str(batch),
                         f"{entry['ours_images_per_s']:.2f}", f"{entry['bare_network_images_per_s']:.2f}",
                         f"{100 * (entry['sampler_over_bare'] - 1):+.1f}%",
                         f"{entry[f'skip_{args.skip_to}_images_per_s']:.1f}",
                         f"{entry['hours_for_50k_images']:.2f} h",
                         f"{entry['naive_images_per_s']:.3f}" if "naive_images_per_s" in entry else "-",
                         f"{entry['speedup']:.1f}x" if "speedup" in entry else "-"])
            print(f"  measured {setup.name} batch {batch}", file=sys.stderr)
    return report("sample", machine(device, speed_description(compile_mode, bf16)),
                  "Sampling at full T (improved sampler)",
                  ["setting", "batch", "ours img/s", "bare net img/s", "sampler overhead",
                   f"{args.skip_to} levels img/s", "50k images", "naive img/s", "speed-up"], rows, results, args.json)

if __name__ == "__main__":
    main()
