"""Training throughput (images/s), peak memory and model FLOPs utilisation, ours vs the original's approach.

    python -m benchmarks.bench_train                       # GPU: both paper settings, batch 32 and the largest
    python -m benchmarks.bench_train --device cpu --tiny --setups cifar10 --batches 8

Ours: the path ``ColdDiffusion.loss`` takes in training (closed-form degradation), bf16 autocast, channels-last,
``torch.compile`` (``--compile-mode``; CUDA graphs with ``reduce-overhead``), fused Adam.  Naive: the same network in
fp32, eager, contiguous memory, foreach Adam, and the original ``q_sample`` (per-step convolutions over the whole
batch up to the largest level).  A step is forward, backward and optimiser step; Lightning's loop is not included.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch
import torch.nn.functional as F

from benchmarks.baselines import naive_q_sample
from benchmarks.common import (
    add_speed_arguments,
    machine,
    report,
    resolve_speed,
    speed_description,
    synchronize,
)
from benchmarks.setups import SETUPS, Setup
from colddiff.module import ColdDiffusion

#: dense bf16 tensor-core peaks (FLOP/s) for model FLOPs utilisation
BF16_PEAK = {"H100 SXM": 989.4e12, "H100 NVL": 835e12, "H100 PCIe": 756e12, "H100": 989.4e12, "H200": 989.4e12,
             "A100": 312e12, "L40S": 362e12, "RTX 4090": 165e12}


def bf16_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(BF16_PEAK, key=len, reverse=True):
        if key.replace(" ", "").lower() in name.replace(" ", "").lower():
            return BF16_PEAK[key]
    return None


def training_flops(network: torch.nn.Module, batch: int, setup: Setup, device: torch.device) -> float:
    """FLOPs of one forward + backward of the network (torch's flop counter: convolutions and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(batch, setup.channels, setup.image_size, setup.image_size, device=device)
    t = torch.randint(1, 10, (batch,), device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        network(x, t).float().mean().backward()
    network.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def make_step(setup: Setup, variant: str, batch: int, device: torch.device, tiny: bool, compile_mode: str | None,
              bf16: bool = True):
    torch.manual_seed(0)
    fast = variant == "ours"
    model = ColdDiffusion(setup.degradation(), setup.network(tiny), image_size=setup.image_size,
                          channels=setup.channels, channels_last=fast,  # the layout is set at construction
                          compile=(compile_mode or False) if fast else False).to(device)
    model.setup("fit")  # compiles the training network when asked, as Lightning's fit does
    network = model.network
    fused = fast and device.type == "cuda"
    optimizer = torch.optim.Adam(model.network.parameters(), lr=2e-5, fused=fused or None,
                                 foreach=None if fused else True)
    data = torch.rand(batch, setup.channels, setup.image_size, setup.image_size, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if fast and bf16 else contextlib.nullcontext()
    T = model.degradation.num_steps

    def step() -> torch.Tensor:
        if fast:  # the module's own training objective: level draw, closed-form degradation, network, loss
            with autocast:
                loss = model.loss(data)
        else:
            t = torch.randint(1, T + 1, (batch,), device=device)
            x_t = naive_q_sample(model.degradation, data, t)
            loss = F.l1_loss(network(x_t, t).float(), data)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step, model.network


def measure(step, device: torch.device, steps: int, warmup: int) -> tuple[float, float | None]:
    """Seconds per step and peak memory (GiB, CUDA only)."""
    for _ in range(warmup):
        step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    elapsed = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return elapsed, peak


def largest_batch(setup: Setup, device: torch.device, tiny: bool, compile_mode: str | None, start: int,
                  bf16: bool) -> int:
    """Double the batch until the fast path runs out of GPU memory; the largest that ran."""
    best, batch = start, start * 2
    while batch <= 8192:
        try:
            step, _ = make_step(setup, "ours", batch, device, tiny, compile_mode, bf16)
            step()
            synchronize(device)
            best, batch = batch, batch * 2
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
    return best


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--batches", nargs="+", default=["32", "max"], help="batch sizes; 'max' = largest that fits")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (ours)")
    parser.add_argument("--naive-steps", type=int, default=5, help="timed steps (naive)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    add_speed_arguments(parser)
    args = parser.parse_args(argv)
    device, compile_mode, bf16 = resolve_speed(args)
    peak_flops = bf16_peak(device)
    rows, results = [], []
    for key in args.setups:
        setup = SETUPS[key]()
        for batch_spec in args.batches:
            if batch_spec == "max":
                if device.type != "cuda":
                    continue
                batch = largest_batch(setup, device, args.tiny, compile_mode, 32, bf16)
            else:
                batch = int(batch_spec)
            entry = {"setup": setup.name, "batch": batch, "tiny_network": args.tiny}
            for variant, steps, warm in (("ours", args.steps, args.warmup), ("naive", args.naive_steps, 1)):
                step, network = make_step(setup, variant, batch, device, args.tiny,
                                          compile_mode if variant == "ours" else None, bf16)
                seconds, peak = measure(step, device, steps, warm)
                entry[f"{variant}_images_per_s"] = batch / seconds
                entry[f"{variant}_peak_GiB"] = peak
                if variant == "ours":
                    entry["flops_per_step"] = training_flops(network, batch, setup, device)
                del step, network
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            entry["speedup"] = entry["ours_images_per_s"] / entry["naive_images_per_s"]
            entry["mfu"] = (entry["flops_per_step"] * entry["ours_images_per_s"] / batch / peak_flops
                            if peak_flops else None)
            results.append(entry)
            rows.append([setup.name + (" (tiny net)" if args.tiny else ""), str(batch),
                         f"{entry['ours_images_per_s']:.1f}", f"{entry['naive_images_per_s']:.1f}",
                         f"{entry['speedup']:.1f}x",
                         "-" if entry["ours_peak_GiB"] is None else f"{entry['ours_peak_GiB']:.1f}",
                         "-" if entry["mfu"] is None else f"{100 * entry['mfu']:.1f}%"])
            print(f"  measured {setup.name} batch {batch}", file=sys.stderr)
    return report("train", machine(device, speed_description(compile_mode, bf16)), "Training throughput",
                  ["setting", "batch", "ours img/s", "naive img/s", "speed-up", "peak GiB", "MFU (bf16)"], rows,
                  results, args.json)

if __name__ == "__main__":
    main()
