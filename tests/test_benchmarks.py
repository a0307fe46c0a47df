"""The benchmark scripts run end to end on CPU and write their JSON (figures are printed, never asserted)."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import bench_degradations, bench_sample
from benchmarks.common import timeit
from tests.helpers import SHARED_DATA, make_image_folder


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


def test_the_kornia_loop_baseline_computes_the_operators_images():
    """The baseline of the kornia operators (their kornia call looped over the images) gives the same images as the
    one batched call, at mixed levels: the timings compare like with like."""
    import colddiff.degradations as cd
    from benchmarks.baselines import kornia_loop
    from colddiff.degradations.functional import elastic_noise

    x = torch.rand(4, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    for name, op in bench_degradations.kornia_operators().items():
        params = op.make_params(x, torch.Generator().manual_seed(1))
        loop_params = dict(params)
        if isinstance(op, cd.Elastic):
            loop_params["noise"] = elastic_noise(x, op.draw_options["sigma"], torch.Generator().manual_seed(1))
        t = torch.tensor([0, 1, op.num_steps // 2, op.num_steps])
        torch.testing.assert_close(kornia_loop(op, x, t, loop_params), op.degrade(x, t, params), atol=1e-5, rtol=0,
                                   msg=name)


def test_bench_degradations_times_the_kornia_operators_beside_the_loop(tmp_path):
    out = tmp_path / "degradations.json"
    bench_degradations.main(["--device", "cpu", "--batch", "2", "--size", "32", "--budget", "0", "--only", "JPEG",
                             "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["results"] == [] and [r["operator"] for r in saved["kornia_results"]] == [
        "JPEG (T 20, quality 100 -> 10)"]
    (entry,) = saved["kornia_results"]
    # batched against the per-image kornia loop: two code paths, equal to float rounding
    assert entry["max_abs_difference_mixed"] < 1e-5 and entry["loop_tT_s"] > 0 and entry["ours_mixed_s"] > 0
    elastic = bench_degradations.main(["--device", "cpu", "--batch", "2", "--size", "32", "--budget", "0", "--only",
                                       "Elastic", "--operators", "kornia"])["kornia_results"][0]
    assert elastic["max_abs_difference_mixed"] < 1e-5
    assert "| JPEG (T 20, quality 100 -> 10) |" in saved["kornia_table"]


@pytest.mark.skipif(not (SHARED_DATA / "cifar10_classifier" / "resnet56-4bfd9763.th").is_file(),
                    reason="needs the CIFAR-10 ResNet-56 of ../shared/data")
def test_bench_cifar10_restoration_scores_a_run_folder_and_its_curve(tmp_path):
    """The CIFAR-10 restoration benchmark on a tiny deblurring run (two checkpoints) and six test images: the paper's
    rows (Degraded, Direct, Sampled) with FD-resnet56, SSIM, PSNR and RMSE, the curve of the direct restoration against
    training steps, the JSON (named for its task and data), the RESULTS.md section and the picture."""
    import lightning as L

    import colddiff.degradations as cd
    from benchmarks import bench_cifar10_restoration
    from colddiff.data import ImageFolderDataModule
    from colddiff.module import ColdDiffusion
    from colddiff.nets import DDPMUNet

    make_image_folder(tmp_path / "test", n=6, size=32, formats=("png",))
    make_image_folder(tmp_path / "train", n=8, size=32, formats=("png",), seed=1)
    torch.manual_seed(0)
    model = ColdDiffusion(cd.GaussianBlur(3, kernel_size=5, sigma=1.0, border="reflect"),
                          DDPMUNet(3, dim=8, dim_mults=(1, 2), num_blocks=1, attention_resolutions=[], dropout=0.0,
                                   image_size=32), image_size=32, channels=3, val_sample_batches=0)
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "runs" / "deblur_cifar10_cpu" / "checkpoints", every_n_train_steps=1, save_last=True,
        save_top_k=-1, filename="step{step:07d}", auto_insert_metric_name=False)
    L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
              limit_val_batches=0, callbacks=[checkpoints], default_root_dir=tmp_path).fit(
        model, ImageFolderDataModule(str(tmp_path / "train"), image_size=32, channels=3, batch_size=4,
                                     val_fraction=0.25))
    results = tmp_path / "RESULTS.md"
    out = tmp_path / "cifar10-restoration-cpu.json"
    payload = bench_cifar10_restoration.main([
        "--runs", str(tmp_path / "runs"), "--tasks", "deblur", "--test-root", str(tmp_path / "test"),
        "--extractor-weights", str(SHARED_DATA / "cifar10_classifier" / "resnet56-4bfd9763.th"), "--curve", "deblur",
        "--batch-size", "6", "--json", str(out), "--results", str(results), "--pictures", str(tmp_path / "pics")])
    rows = json.loads(out.read_text())["tasks"]["deblur"]["rows"]
    assert set(rows) == {"Degraded", "Direct", "Sampled"} and all("FD-resnet56" in r for r in rows.values())
    assert [p["step"] for p in payload["curve"]["points"]] == [1, 2]
    assert "## CIFAR-10 restoration, CPU-sized models" in results.read_text()
    assert (tmp_path / "pics" / "cifar10_deblur.png").is_file()
