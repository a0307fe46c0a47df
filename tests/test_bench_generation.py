"""bench_generation runs end to end on CPU at a tiny budget and writes its JSON, its RESULTS.md section and picture
(the figures themselves are printed, never asserted)."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_generation


def test_a_tiny_generation_benchmark_writes_its_table_section_and_picture(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\nkept\n")
    args = ["--methods", "quickstart", "hot", "--steps", "2", "--num", "40", "--batch-size", "20",
            "--work", str(tmp_path / "work"), "--json", str(tmp_path / "g.json"), "--results", str(results),
            "--picture", str(tmp_path / "g.png")]
    payload = bench_generation.main(args)
    saved = json.loads((tmp_path / "g.json").read_text())
    # the quickstart is scored as configured and with the other bandwidths of its prior; hot once
    assert [(r["method"], r["sampling"]) for r in saved["results"]] == [
        ("quickstart", "as configured (prior bandwidth 0.1)"), ("quickstart", "prior bandwidth 0"),
        ("quickstart", "prior bandwidth 0.05"), ("hot", "improved")]
    assert saved["floor"]["N_fake"] == 2000 and all(r["N_fake"] == 40 for r in saved["results"])
    assert (tmp_path / "work" / "hot-2.seconds").is_file() and (tmp_path / "g.png").is_file()
    text = results.read_text()
    assert "kept" in text and text.count("<!-- bench_generation:2:quickstart+hot:start -->") == 1
    assert "| real vs real (floor) |" in text and payload["steps"] == 2
    # a rerun at another budget adds its own section; the same budget replaces its section
    bench_generation.write_results("## at 8 steps", results, bench_generation.section_key(8, ["quickstart", "hot"]))
    bench_generation.write_results("## again at 2 steps", results, "2:quickstart+hot")
    text = results.read_text()
    assert "## at 8 steps" in text and "## again at 2 steps" in text and "| real vs real (floor) |" not in text
    # --reuse reloads the trained model and its recorded training time
    again = bench_generation.main([*args, "--methods", "hot", "--reuse"])
    assert again["results"][0]["train_seconds"] == pytest.approx(saved["results"][-1]["train_seconds"], abs=1e-3)
    assert again["results"][0]["FD"] == saved["results"][-1]["FD"]
