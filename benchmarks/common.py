"""Timing, machine description and result files shared by the benchmark scripts."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch


def machine(device: torch.device, precision: str = "fp32") -> dict:
    """What the figures were measured on."""
    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "precision": precision,
    }
    return info


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn: Callable[[], object], device: torch.device, budget_s: float = 2.0, warmup: int = 1,
           max_repeats: int = 50, min_repeats: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds: ``warmup`` untimed calls, then repeats until ``budget_s`` is spent
    (at least ``min_repeats`` timed calls, at most ``max_repeats`` unless the minimum needs more)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    spent = 0.0
    while len(times) < max(1, min_repeats) or (spent < budget_s and len(times) < max_repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        spent += elapsed
    return statistics.median(times)


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (no rows: the header alone)."""
    widths = [max([len(str(h)), *(len(str(r[i])) for r in rows)]) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    return "\n".join(lines)


def print_table(headers: list[str], rows: list[list[str]]) -> str:
    """Print (and return) a Markdown table."""
    text = format_table(headers, rows)
    print(text)
    return text


def report(benchmark: str, info: dict, title: str, headers: list[str], rows: list[list[str]], results: list[dict],
           json_path: str | None, **extra: object) -> dict:
    """Print the title and the table; write the payload (machine, results, table) as JSON when asked; return it."""
    print(f"\n{title}, {info['device_name']} ({info['device']}), torch {info['torch']}\n")
    table = print_table(headers, rows)
    payload = {"benchmark": benchmark, "machine": info, **extra, "results": results, "table": table}
    if json_path:
        write_json(json_path, payload)
    return payload


def write_json(path: str | Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)
    print(f"wrote {path}")


def add_speed_arguments(parser) -> None:
    """``--device``, ``--compile-mode``, ``--precision``, ``--tiny`` and ``--json``, shared by the benchmarks."""
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--compile-mode", default="auto",
                        help="torch.compile mode for ours (auto: reduce-overhead on CUDA, off on CPU; none: off)")
    parser.add_argument("--precision", choices=("auto", "bf16", "32"), default="auto",
                        help="ours: bf16 autocast (auto: on CUDA; CPUs without bf16 units are faster in fp32)")
    parser.add_argument("--tiny", action="store_true", help="small networks (for CPU runs)")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")


def resolve_speed(args) -> tuple[torch.device, str | None, bool]:
    """The device, the compile mode (``None``: eager) and whether ours runs in bf16 autocast."""
    device = pick_device(args.device)
    compile_mode = {"auto": "reduce-overhead" if device.type == "cuda" else None, "none": None}.get(
        args.compile_mode, args.compile_mode)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda")
    return device, compile_mode, bf16


def speed_description(compile_mode: str | None, bf16: bool) -> str:
    precision = "bf16 autocast" if bf16 else "fp32"
    compiled = f"compile {compile_mode}" if compile_mode else "eager"
    return f"ours: {precision}, {compiled}, channels-last; naive: fp32 eager"


def pick_device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
