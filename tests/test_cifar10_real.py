"""The CPU-sized CIFAR-10 restoration configs end to end on the real CIFAR-10 files of ../shared/data (slow: laying
out the 60,000 images takes about half a minute). Run with ``pytest -m slow``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
PREPARE = SHARED_DATA.parent / "tools" / "prepare_data.py"
WEIGHTS = SHARED_DATA / "cifar10_classifier" / "resnet56-4bfd9763.th"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (SHARED_DATA / "cifar10").is_dir() or not PREPARE.is_file(),
                                                   reason="needs ../shared/data/cifar10 and ../shared/tools")]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("task", ["deblur", "inpaint", "superres"])
def test_a_cifar10_config_trains_and_is_scored_on_the_real_files(tmp_path_factory, task):
    data = tmp_path_factory.getbasetemp() / "cifar10-data"  # laid out once for the three tasks
    if not (data / "cifar10_lossless" / "test").is_dir():
        _run(str(PREPARE), "cifar10", str(data), cwd=ROOT)
        _run(str(PREPARE), "cifar10-lossless", str(data), cwd=ROOT)
    run = tmp_path_factory.mktemp(task)
    _run("train.py", "fit", "--config", f"configs/{task}_cifar10_cpu.yaml", "--trainer.max_steps", "4",
         "--trainer.default_root_dir", str(run), "--trainer.val_check_interval", "4",
         "--data.init_args.root", str(data / "cifar10" / "train"),
         "--data.init_args.val_root", str(data / "cifar10" / "test"),
         "--data.init_args.test_root", str(data / "cifar10_lossless" / "test"),
         "--data.init_args.val_size", "8", "--model.val_sample_batches", "1", cwd=ROOT)
    checkpoint = run / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    _run("evaluate.py", "restoration", "--ckpt", str(checkpoint), "--folder", str(data / "cifar10_lossless" / "test"),
         "--limit", "16", "--batch-size", "16", "--extractor", "resnet56", "--extractor-weights", str(WEIGHTS),
         "--out", str(run / "eval"), cwd=ROOT)
    report = json.loads((run / "eval" / "restoration.json").read_text())
    assert set(report["results"]) == {"Degraded", "Direct", "Sampled"}
    assert all(row["N"] == 16 and "FD-resnet56" in row for row in report["results"].values())
