"""The benchmark scripts run end to end on CPU and write their JSON (figures are printed, never asserted)."""

from __future__ import annotations

import json

import torch

from benchmarks import bench_degradations, bench_sample
from benchmarks.common import timeit


def test_timeit_warms_up_then_times_at_least_min_repeats():
    calls = []
    seconds = timeit(lambda: calls.append(1), torch.device("cpu"), budget_s=0.0, warmup=1, min_repeats=3)
    assert len(calls) == 4 and seconds >= 0


def test_bench_degradations_writes_its_table_and_machine(tmp_path):
    out = tmp_path / "degradations.json"
    payload = bench_degradations.main(["--device", "cpu", "--batch", "2", "--size", "32", "--budget", "0",
                                       "--only", "Desaturate", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(payload))
    assert saved["machine"]["device"] == "cpu" and saved["batch"] == 2 and saved["size"] == 32
    assert [r["operator"] for r in saved["results"]] == ["Desaturate (T 20)"]
    assert "| Desaturate (T 20) |" in saved["table"]


def test_bench_sample_compares_the_sampler_with_bare_network_calls(tmp_path):
    out = tmp_path / "sample.json"
    bench_sample.main(["--device", "cpu", "--tiny", "--setups", "cifar10", "--batches", "1", "--repeats", "1",
                       "--naive", "skip", "--json", str(out)])
    (result,) = json.loads(out.read_text())["results"]
    assert result["batch"] == 1 and result["num_steps"] == 50 and result["tiny_network"]
    assert result["ours_images_per_s"] > 0 and result["bare_network_images_per_s"] > 0
    assert "naive_images_per_s" not in result
