"""Evaluation: restoration table, FID/KID against hand computations, the replication audit, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

import colddiff.degradations as cd
from colddiff.checkpoint import AtomicCheckpointIO
from colddiff.data import EmbeddedMNIST, EmbeddedMNISTDataModule, ImageTransform
from colddiff.evaluate_cli import main
from colddiff.evaluation import (
    AuditConfig,
    ModuleFeatures,
    PixelFeatures,
    RestorationMetrics,
    frechet_distance,
    kernel_distance,
    nearest_training_images,
    quantize,
    write_audit,
)
from colddiff.evaluation.features import CifarResNetFeatures, FeatureWeightsError, InceptionV3Features
from colddiff.module import ColdDiffusion
from colddiff.nets import ConvNeXtUNet
from colddiff.priors import ChannelMeanPrior
from tests.helpers import SHARED_DATA

SIZE = 16


class TinyFeatures(torch.nn.Module):
    """A small substitute feature extractor: fixed random projection of 4x4-pooled images."""

    def __init__(self, channels: int = 1, dim: int = 8):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("projection", torch.randn(channels * 16, dim, generator=g))

    def forward(self, images):
        return torch.nn.functional.adaptive_avg_pool2d(images.float(), 4).flatten(1) @ self.projection


def hand_frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_frechet_distance_equals_hand_computation():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 6, generator=g), torch.randn(200, 6, generator=g) * 1.5 + 0.3
    assert frechet_distance(a, b) == pytest.approx(hand_frechet(a.double().numpy(), b.double().numpy()), rel=1e-8)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_kernel_distance_is_near_zero_for_one_distribution_and_reproducible():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(400, 6, generator=g), torch.randn(400, 6, generator=g)
    far = torch.randn(400, 6, generator=g) + 2
    same, _ = kernel_distance(a, b, subsets=20, subset_size=200)
    different, _ = kernel_distance(a, far, subsets=20, subset_size=200)
    assert abs(same) < 0.05 < different
    assert kernel_distance(a, far, 10, 100, seed=3) == kernel_distance(a, far, 10, 100, seed=3)


def test_identity_restoration_is_perfect_and_metrics_match_torchmetrics():
    x0 = torch.rand(10, 3, 16, 16)
    noisy = (x0 + 0.1 * torch.randn(10, 3, 16, 16, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    metrics = RestorationMetrics()
    for i in range(0, 10, 4):  # uneven batches
        metrics.update("Sampled", x0[i:i + 4], x0[i:i + 4], targets_are_new=True)
        metrics.update("Degraded", noisy[i:i + 4], x0[i:i + 4])
    rows = metrics.compute()
    assert rows["Sampled"]["SSIM"] == pytest.approx(1.0) and rows["Sampled"]["RMSE"] == 0.0
    assert rows["Sampled"]["N"] == rows["Degraded"]["N"] == 10
    q, qn = quantize(x0), quantize(noisy)
    assert rows["Degraded"]["SSIM"] == pytest.approx(float(structural_similarity_index_measure(qn, q, data_range=1.0)),
                                                     rel=1e-5)
    psnr = peak_signal_noise_ratio(qn, q, data_range=1.0, dim=(1, 2, 3), reduction="elementwise_mean")
    assert rows["Degraded"]["PSNR"] == pytest.approx(float(psnr), rel=1e-5)
    assert rows["Degraded"]["RMSE"] == pytest.approx(float((qn - q).pow(2).mean().sqrt()), rel=1e-5)


def test_restoration_fd_with_a_substitute_extractor_matches_hand_computation():
    extractor = ModuleFeatures(TinyFeatures(3), "tiny")
    x0, other = torch.rand(40, 3, 16, 16), torch.rand(40, 3, 16, 16) * 0.5
    metrics = RestorationMetrics(extractor=extractor)
    metrics.update("Direct", other, x0, targets_are_new=True)
    value = metrics.compute()["Direct"]["FD-tiny"]
    with torch.no_grad():
        fa, fb = extractor(quantize(x0)).double().numpy(), extractor(quantize(other)).double().numpy()
    assert value == pytest.approx(hand_frechet(fa, fb), rel=1e-6)


def test_audit_finds_planted_copies_first_and_none_in_fresh_images(tmp_path):
    dataset = EmbeddedMNIST("train", ImageTransform(SIZE, 1, train=False))
    train = torch.stack([dataset[i] for i in range(600)])
    planted = [5, 77, 301]
    fresh = torch.stack([EmbeddedMNIST("test", ImageTransform(SIZE, 1, train=False))[i] for i in range(9)])
    generated = torch.cat([fresh[:4], train[planted], fresh[4:]])
    config = AuditConfig(neighbours=10)
    result = nearest_training_images(generated, train.split(128), PixelFeatures(), config)
    copies = [4, 5, 6]
    assert result.l2_index[copies, 0].tolist() == planted and result.patch_index[copies, 0].tolist() == planted
    assert torch.allclose(result.cosine[copies, 0], torch.ones(3), atol=1e-5)
    assert (result.l2[copies, 0] < 1e-6).all() and (result.calibrated[copies] < 1e-6).all()
    from colddiff.evaluation.replication import ranking

    assert set(ranking(result)[:3].tolist()) == set(copies)
    fresh_only = nearest_training_images(fresh, train.split(128), PixelFeatures(), config)
    assert fresh_only.summary["fraction_likely_copies"] == 0.0  # Carlini's calibrated score flags none
    assert fresh_only.summary["fraction_exact_copies"] == 0.0
    assert fresh_only.l2[:, 0].min() > 0.02  # far from any training image, unlike the planted copies (< 1e-6)
    assert result.summary["fraction_exact_copies"] == pytest.approx(3 / 12)
    provenance = [{"start_state": {"source": "prior", "component": i}} for i in range(12)]
    paths = write_audit(result, tmp_path, generated, train, provenance, top=4, extractor_name="pixels")
    payload = json.loads(paths["json"].read_text())
    assert len(payload["pairs"]) == 12 and payload["pairs"][4]["nearest_l2"]["train_index"] == 5
    assert payload["pairs"][4]["provenance"]["start_state"]["component"] == 4
    assert len(payload["pairs"][0]["neighbours_by_patch_l2"]) == 10
    assert Image.open(paths["histogram"]).size[0] > 300
    assert Image.open(paths["pairs"]).size == (8 * (SIZE + 2) + 2, 1 * (SIZE + 2) + 2)


def test_exact_search_agrees_with_brute_force():
    g = torch.Generator().manual_seed(4)
    train, gen = torch.rand(300, 1, 8, 8, generator=g), torch.rand(7, 1, 8, 8, generator=g)
    result = nearest_training_images(gen, train.split(64), None, AuditConfig(neighbours=5, grid=2))
    qg, qt = quantize(gen).double(), quantize(train).double()
    brute = ((qg[:, None] - qt[None]) ** 2).flatten(2).mean(-1).sqrt()
    values, index = brute.topk(5, dim=1, largest=False)
    assert torch.equal(result.l2_index, index)
    torch.testing.assert_close(result.l2.double(), values, atol=1e-6, rtol=0)
    patches = torch.stack([((qg[:, None, :, r:r + 4, c:c + 4] - qt[None, :, :, r:r + 4, c:c + 4]) ** 2)
                           .flatten(2).mean(-1).sqrt() for r in (0, 4) for c in (0, 4)]).amax(0)
    assert torch.equal(result.patch_index[:, 0], patches.argmin(1))


def test_inception_without_weights_is_a_clear_error(tmp_path):
    with pytest.raises(FeatureWeightsError, match="does not exist"):
        InceptionV3Features(tmp_path / "missing.pth")


@pytest.mark.skipif(not (SHARED_DATA / "cifar10_classifier").is_dir(), reason="needs ../shared/data")
def test_cifar_resnet_features_load_the_shipped_classifier():
    extractor = CifarResNetFeatures(SHARED_DATA / "cifar10_classifier" / "resnet20-12fca82f.th", depth=20)
    assert extractor.name == "resnet20" and extractor.metric_names() == ("FD-resnet20", "KD-resnet20")
    assert extractor(torch.rand(2, 3, 32, 32)).shape == (2, 64)
    with pytest.raises(FeatureWeightsError, match="not a CIFAR ResNet-56"):
        CifarResNetFeatures(SHARED_DATA / "cifar10_classifier" / "resnet20-12fca82f.th", depth=56)


# ---------------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("eval")
    paths = {}
    for name, degradation, prior in (("restore", cd.GaussianBlur(4, kernel_size=5), None),
                                     ("generate", cd.GaussianBlur(4, kernel_size=5, final_mean=True),
                                      ChannelMeanPrior(1))):
        torch.manual_seed(0)
        model = ColdDiffusion(degradation, ConvNeXtUNet(in_channels=1, dim=8, dim_mults=(1, 2), num_blocks=1,
                                                attention="none", image_size=SIZE),
                              prior=prior, image_size=SIZE, channels=1, val_sample_batches=0, prior_fit_images=64)
        trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                            default_root_dir=tmp, plugins=[AtomicCheckpointIO()])
        trainer.fit(model, EmbeddedMNISTDataModule(image_size=SIZE, batch_size=8))
        paths[name] = tmp / f"{name}.ckpt"
        trainer.save_checkpoint(paths[name])
    return paths


def test_cli_restoration_table(checkpoints, tmp_path):
    path = main(["restoration", "--ckpt", str(checkpoints["restore"]), "--dataset", "embedded-mnist", "--limit", "70",
                 "--batch-size", "32", "--steps", "2", "--out", str(tmp_path)])
    table = path.read_text()
    assert "| Degraded |" in table and "| Direct |" in table and "| Sampled |" in table and "SSIM" in table
    payload = json.loads((tmp_path / "restoration.json").read_text())
    assert payload["protocol"]["images"] == 70 and payload["results"]["Sampled"]["N"] == 70
    again = main(["restoration", "--ckpt", str(checkpoints["restore"]), "--dataset", "embedded-mnist", "--limit",
                  "70", "--batch-size", "16", "--steps", "2", "--out", str(tmp_path / "b")])
    second = json.loads((again.parent / "restoration.json").read_text())["results"]
    assert second["Degraded"]["SSIM"] == pytest.approx(payload["results"]["Degraded"]["SSIM"])


def test_restoration_evaluation_is_a_library_function_with_known_rows(checkpoints):
    """A notebook user calls the same procedure as evaluate.py; the Degraded row is exactly D(x0, T) measured."""
    from colddiff.evaluation import evaluate_restoration
    from colddiff.export import load_model

    model = load_model(checkpoints["restore"])
    images = EmbeddedMNIST("test", ImageTransform(SIZE, 1, train=False))
    dataset = torch.utils.data.Subset(images, range(10))
    report = evaluate_restoration(model, dataset, steps=2, batch_size=4)
    assert list(report.rows) == ["Degraded", "Direct", "Sampled"] and report.rows["Sampled"]["N"] == 10
    x0 = quantize(torch.stack([dataset[i] for i in range(10)]))
    degraded = quantize(model.degradation(x0, 4))
    expected = torch.stack([peak_signal_noise_ratio(d[None], x[None], data_range=1.0) for d, x in zip(degraded, x0)])
    assert report.rows["Degraded"]["PSNR"] == pytest.approx(expected.mean().item(), rel=1e-5)
    assert "| Sampled |" in report.markdown() and report.protocol["level"] == 4


def test_cli_generation_and_cache(checkpoints, tmp_path, capsys):
    args = ["generation", "--ckpt", str(checkpoints["generate"]), "--num", "40", "--steps", "2", "--extractor",
            "pixels", "--reference-dataset", "embedded-mnist", "--reference-size", "100", "--cache-dir",
            str(tmp_path / "cache"), "--kid-subsets", "5", "--kid-subset-size", "20", "--out", str(tmp_path)]
    main(args)
    payload = json.loads((tmp_path / "generation.json").read_text())
    assert set(payload["results"]["generated"]) == {"FD-pixels", "KD-pixels", "KD-pixels std", "precision", "recall",
                                                    "N"}
    floor = payload["results"]["real vs real (floor)"]  # 40 held-out test digits against the same reference
    assert floor["N"] == 40 and floor["FD-pixels"] < payload["results"]["generated"]["FD-pixels"]
    assert payload["protocol"]["reference_features"].startswith("computed and stored as ")
    assert payload["protocol"]["N_generated"] == 40
    assert len(list((tmp_path / "cache" / "reference").glob("*.safetensors"))) == 1
    main(args)
    again = json.loads((tmp_path / "generation.json").read_text())
    assert again["protocol"]["reference_features"].startswith("cache ")
    assert again["results"] == payload["results"]
    main([*args, "--extractor", "mnist-cnn", "--no-floor"])
    classifier = json.loads((tmp_path / "generation.json").read_text())["results"]
    assert list(classifier) == ["generated"] and 0 <= classifier["generated"]["class entropy"] <= 1
    assert "FD-mnist-cnn" in classifier["generated"]


def test_cli_replication_on_a_generated_folder(checkpoints, tmp_path):
    from colddiff.sample_cli import main as sample_main

    sample_main(["generate", "--ckpt", str(checkpoints["generate"]), "--num", "6", "--steps", "2", "--save-images",
                 "--out", str(tmp_path / "gen")])
    path = main(["replication", "--generated", str(tmp_path / "gen" / "images"), "--train-dataset", "embedded-mnist",
                 "--neighbours", "5", "--top", "4", "--out", str(tmp_path / "audit")])
    payload = json.loads(path.read_text())
    assert len(payload["pairs"]) == 6 and payload["summary"]["training_images"] == 6000
    assert payload["pairs"][0]["provenance"]["start_state"]["source"] == "prior"
    assert (tmp_path / "audit" / "replication_hist.png").is_file()


def test_cli_errors(checkpoints, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["generation", "--ckpt", str(checkpoints["restore"]), "--reference-dataset", "embedded-mnist",
              "--out", str(tmp_path)])
    assert "cannot generate" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generation", "--ckpt", str(checkpoints["generate"]), "--num", "4", "--reference-dataset",
              "embedded-mnist", "--inception-weights", str(tmp_path / "none.pth"), "--out", str(tmp_path)])
    assert "Inception-v3 weights file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["restoration", "--ckpt", str(checkpoints["restore"]), "--dataset", "embedded-mnist", "--level", "9",
              "--out", str(tmp_path)])
    assert "--level must lie in [0, 4]" in capsys.readouterr().err
