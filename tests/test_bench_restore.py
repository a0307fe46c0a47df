"""The restoration benchmark runs end to end on a tiny untrained model (figures are printed, never asserted)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from PIL import Image

from benchmarks import bench_restore
from colddiff.degradations import JPEG, GaussianBlur
from colddiff.export import export_model
from colddiff.module import ColdDiffusion
from colddiff.nets import ConvNeXtUNet, UNet


@pytest.fixture
def tiny_export(tmp_path):
    torch.manual_seed(0)
    network = UNet(in_channels=1, dim=8, dim_mults=(1, 2), num_blocks=1, attention="none")
    model = ColdDiffusion(GaussianBlur(4, kernel_size=5, sigma=1.0), network, image_size=16, channels=1)
    return export_model(model, tmp_path / "tiny")


def test_bench_restore_writes_its_tables_json_and_picture(tiny_export, tmp_path):
    out, picture = tmp_path / "restore.json", tmp_path / "before_after.png"
    payload = bench_restore.main(["--ckpt", str(tiny_export), "--num", "6", "--batch-size", "4", "--device", "cpu",
                                  "--json", str(out), "--picture", str(picture), "--picture-num", "3"])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(payload))
    estimation = saved["estimation"]
    assert estimation["num_images"] == 6 and estimation["num_steps"] == 4 and estimation["candidate_levels"] == 5
    assert 0 <= estimation["median_abs_error"] <= 4 and estimation["evaluations_per_image_max"] <= 5
    rows = {(r["sampler"], r["level"]) for r in saved["results"]}
    assert rows == {("-", "none (the degraded input)")} | {(s, level) for s in ("improved", "direct")
                                                           for level in ("true t", "estimated t_hat", "fixed T",
                                                                         "fixed T/2")}
    degraded = sum(e["n"] for level, e in estimation["by_true_level"].items() if level != "0")
    assert all(r["N"] == degraded for r in saved["results"]) and degraded + estimation["clean_inputs"] == 6
    assert all(r["PSNR"] < float("inf") for r in saved["results"])
    assert [b["blur"] for b in saved["other_blurs"]] == ["box blur 7x7", "motion blur 1x9"]
    assert re.search(r"\| improved +\| estimated t_hat +\|", saved["table"])
    true_row = next(r for r in saved["results"] if (r["sampler"], r["level"]) == ("improved", "true t"))
    assert true_row["psnr_minus_true_level_psnr"] == 0.0
    assert Image.open(picture).size == (3 * (16 * 3 + 2) + 2, 3 * (16 * 3 + 2) + 2)


def test_bench_restore_without_a_checkpoint_says_how_to_make_one(tmp_path):
    with pytest.raises(SystemExit, match="configs/quickstart.yaml"):
        bench_restore.main(["--ckpt", str(tmp_path / "missing.ckpt")])


def test_bench_restore_measures_a_jpeg_model_on_real_jpeg_files(tmp_path):
    """For a JPEG model the digits are also written as Pillow JPEG files at their levels' qualities (a user's own
    .jpg files) and their levels estimated."""
    torch.manual_seed(0)
    network = ConvNeXtUNet(in_channels=1, dim=8, dim_mults=(1, 2), num_blocks=1, attention="none", image_size=16)
    model = ColdDiffusion(JPEG(4, quantize=True), network, image_size=16, channels=1)
    export = export_model(model, tmp_path / "tiny_jpeg")
    saved = bench_restore.main(["--ckpt", str(export), "--num", "6", "--batch-size", "4", "--device", "cpu",
                                "--json", str(tmp_path / "restore.json")])
    files = saved["jpeg_files"]
    assert files["qualities_by_level"] == [100, 78, 55, 32, 10]
    assert files["estimation"]["num_images"] == 6 and 0 <= files["estimation"]["median_abs_error"] <= 4
    assert set(files["restoration"]) == {"JPEG file (the degraded input)", "improved, estimated t_hat",
                                         "improved, true t", "direct, estimated t_hat", "direct, true t"}
    assert saved["other_blurs"] == []


def test_pillow_jpeg_files_are_libjpeg_at_that_quality():
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    y = bench_restore.pillow_jpeg(x, torch.tensor([0, 95, 10]))
    assert torch.equal(y[0], torch.round(x[0] * 255) / 255)  # level 0: the clean image, stored in 8 bits
    assert torch.equal(y, torch.round(y * 255) / 255)
    assert (y[2] - x[2]).abs().mean() > (y[1] - x[1]).abs().mean() > 0
