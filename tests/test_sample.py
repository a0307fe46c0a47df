"""sample.py modes, determinism, generation priors, export/load, and clear errors (tiny checkpoints made here)."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

import colddiff.degradations as cd
from colddiff.checkpoint import AtomicCheckpointIO
from colddiff.data import EmbeddedMNISTDataModule
from colddiff.datasets import DatasetSource, EmbeddedMNIST, ImageTransform
from colddiff.export import export_model, load_model
from colddiff.module import ColdDiffusion
from colddiff.nets import ConvNeXtUNet
from colddiff.priors import ChannelMeanPrior, GaussianMixture, GaussianNoisePrior, LowResPrior
from colddiff.sample_cli import main

SIZE = 16


def _train(tmp: Path, name: str, **kwargs) -> Path:
    torch.manual_seed(0)
    defaults = dict(degradation=cd.GaussianBlur(6, kernel_size=5, sigma=1.0, final_mean=True),
                    network=ConvNeXtUNet(in_channels=1, dim=8, dim_mults=(1, 2), num_blocks=1, attention="none",
                                 image_size=SIZE),
                    prior=ChannelMeanPrior(channels=1), image_size=SIZE, channels=1, val_sample_batches=0,
                    prior_fit_images=64)
    defaults.update(kwargs)
    model = ColdDiffusion(**defaults)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp, plugins=[AtomicCheckpointIO()])
    trainer.fit(model, EmbeddedMNISTDataModule(image_size=SIZE, batch_size=8))
    path = tmp / f"{name}.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("gen"), "blur_gen")


@pytest.fixture(scope="module")
def restoration_ckpt(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("rest"), "mask", degradation=cd.GaussianMask(6, center="random"),
                  prior=None)


def run(*args: str) -> Path:
    return main([*args])


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


def grid_size(cols: int, rows: int, side: int = SIZE, pad: int = 2) -> tuple[int, int]:
    return cols * (side + pad) + pad, rows * (side + pad) + pad


def test_reconstruct(ckpt, tmp_path):
    path = run("reconstruct", "--ckpt", str(ckpt), "--out", str(tmp_path), "--dataset", "embedded-mnist", "--num", "5",
               "--batch-size", "2", "--steps", "3", "--save-images")
    assert path == tmp_path / "reconstruct_grid.png" and size_of(path) == grid_size(4, 5)
    images = sorted((tmp_path / "images").glob("*.png"))
    assert len(images) == 5 and all(size_of(p) == (SIZE, SIZE) for p in images)
    settings = json.loads((tmp_path / "reconstruct.json").read_text())
    assert settings["level"] == 6 and settings["seed"] == 0


def test_reconstruct_uses_the_checkpoint_data_by_default(restoration_ckpt, tmp_path):
    path = run("reconstruct", "--ckpt", str(restoration_ckpt), "--out", str(tmp_path), "--num", "3", "--level", "2")
    assert size_of(path) == grid_size(4, 3)


def test_restore_own_images(restoration_ckpt, tmp_path):
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.png", "sub/b.jpg", "c.png"]):
        Image.fromarray(np.full((SIZE, SIZE), 40 * i, np.uint8), "L").save(inputs / name)
    path = run("restore", "--ckpt", str(restoration_ckpt), "--out", str(tmp_path / "out"), "--input", str(inputs),
               "--level", "4", "--steps", "2")
    folder = tmp_path / "out" / "restored"
    restored = sorted(p.relative_to(folder) for p in folder.rglob("*.png"))
    assert [str(p) for p in restored] == ["a.png", "c.png", "sub/b.jpg.png"]  # a non-PNG keeps its extension
    assert size_of(path) == grid_size(2, 3)


def _digits(folder: Path, sizes: list[tuple[int, int]], levels: list[int], model) -> list[Path]:
    """Embedded test digits resized to ``sizes`` and blurred by ``model``'s degradation to ``levels``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ((h, w), level) in enumerate(zip(sizes, levels)):
        digit = EmbeddedMNIST("test", ImageTransform(SIZE, 1, train=False))[i][None]
        x0 = torch.nn.functional.interpolate(digit, size=(h, w), mode="bilinear", align_corners=False)
        y = model.degradation(x0, level)[0, 0]
        Image.fromarray((y.clamp(0, 1).numpy() * 255).round().astype(np.uint8), "L").save(folder / f"d{i}.png")
        paths.append(folder / f"d{i}.png")
    return paths


def test_restore_at_any_size_with_estimated_levels(ckpt, tmp_path):
    """Images of other sizes are restored at their own size (padded for the network, cropped back; in tiles when
    larger than --tile), and --level auto writes each image's estimate into restore.json."""
    model = load_model(ckpt)
    _digits(tmp_path / "in", [(16, 16), (20, 28), (40, 36)], [2, 4, 6], model)
    run("restore", "--ckpt", str(ckpt), "--out", str(tmp_path / "out"), "--input", str(tmp_path / "in"),
        "--level", "auto", "--tile", "16", "--steps", "2")
    for name, size in (("d0.png", (16, 16)), ("d1.png", (28, 20)), ("d2.png", (36, 40))):
        assert size_of(tmp_path / "out" / "restored" / name) == size
    records = json.loads((tmp_path / "out" / "restore.json").read_text())["images"]
    assert [r["level_source"] for r in records] == ["estimated"] * 3
    assert all(0 <= r["level"] <= 6 and r["estimate"]["curve"] for r in records)
    assert [(r["height"], r["width"]) for r in records] == [(16, 16), (20, 28), (40, 36)]


def test_restore_keeps_the_models_sample_steps_and_reuses_the_level_search(tmp_path, monkeypatch):
    """restore goes through the pipeline: a model set to 2 of 6 levels restores in 2 network calls, not 6, and with
    --level auto the search's restoration at the estimated level is not computed a second time."""
    import colddiff.sample_cli as sample_cli
    from colddiff.pipeline import Pipeline

    torch.manual_seed(0)
    model = Pipeline(cd.GaussianBlur(6, kernel_size=5, sigma=1.0),
                     ConvNeXtUNet(in_channels=1, dim=8, dim_mults=(1, 2), num_blocks=1, attention="none",
                                  image_size=SIZE), image_size=SIZE, channels=1, sample_steps=2)
    export = model.save(tmp_path / "export")
    _digits(tmp_path / "in", [(SIZE, SIZE)], [6], model)
    calls: list[int] = []
    run_network = Pipeline.run_network
    monkeypatch.setattr(Pipeline, "run_network", lambda self, x, t: calls.append(len(t)) or run_network(self, x, t))
    walks: list[Path] = []
    find_images = sample_cli.find_images
    monkeypatch.setattr(sample_cli, "find_images", lambda root: walks.append(root) or find_images(root))
    run("restore", "--ckpt", str(export), "--out", str(tmp_path / "given"), "--input", str(tmp_path / "in"),
        "--level", "6")
    assert len(calls) == 2
    assert len(walks) == 1  # the input folder is walked once
    searched: list[int] = []
    estimate_level = sample_cli.estimate_level

    def recorded(*args, **kwargs):
        estimate = estimate_level(*args, **kwargs)
        searched.append(estimate.network_calls)
        return estimate

    monkeypatch.setattr(sample_cli, "estimate_level", recorded)
    for sampler in ("direct", "improved"):  # the first network call of a run is the search's
        calls.clear()
        searched.clear()
        run("restore", "--ckpt", str(export), "--out", str(tmp_path / sampler), "--input", str(tmp_path / "in"),
            "--level", "auto", "--sampler", sampler)
        record = json.loads((tmp_path / sampler / "restore.json").read_text())["images"][0]
        runs = 0 if sampler == "direct" else min(2, record["level"]) - 1
        assert record["level"] > 0 and len(calls) == searched[0] + runs


def test_restore_refuses_what_it_cannot_read_faithfully(ckpt, restoration_ckpt, tmp_path, capsys):
    out = ["--out", str(tmp_path / "out"), "--level", "3"]
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8), "RGB").save(rgb)
    message = _error(capsys, "restore", "--ckpt", str(ckpt), "--input", str(rgb), *out)
    assert str(rgb) in message and "--channels convert" in message
    run("restore", "--ckpt", str(ckpt), "--input", str(rgb), "--channels", "convert", *out)
    alpha = tmp_path / "alpha.png"
    Image.fromarray(np.full((16, 16, 2), 128, np.uint8), "LA").save(alpha)
    message = _error(capsys, "restore", "--ckpt", str(ckpt), "--input", str(alpha), *out)
    assert str(alpha) in message and "--alpha-background" in message
    run("restore", "--ckpt", str(ckpt), "--input", str(alpha), "--alpha-background", "0", *out)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((16, 16), 31411, np.uint16)).save(deep)  # 16-bit: 31411 / 65535 = 0.479
    run("restore", "--ckpt", str(ckpt), "--input", str(deep), "--level", "0", "--out", str(tmp_path / "o16"))
    restored = np.asarray(Image.open(tmp_path / "o16" / "restored" / "deep.png"))
    assert abs(restored.mean() / 255 - 0.479) < 0.01  # level 0: the image itself, read at its true intensity
    message = _error(capsys, "restore", "--ckpt", str(restoration_ckpt), "--input", str(deep), "--level", "auto",
                     "--out", str(tmp_path / "o"))
    assert "--level auto" in message and "GaussianMask" in message and "--level N" in message


def test_generate_with_provenance(ckpt, tmp_path):
    path = run("generate", "--ckpt", str(ckpt), "--out", str(tmp_path), "--num", "6", "--batch-size", "4",
               "--save-images", "--steps", "3")
    assert size_of(path) == grid_size(2, 3)  # round(sqrt(6)) = 2 per row
    files = sorted((tmp_path / "images").glob("*.png"))
    assert len(files) == 6
    records = json.loads((tmp_path / "provenance.json").read_text())["images"]
    assert [r["index"] for r in records] == list(range(6))
    assert all(r["start_state"]["source"] == "prior" and r["file"].startswith("images/") for r in records)


def test_trajectory(ckpt, tmp_path):
    path = run("trajectory", "--ckpt", str(ckpt), "--out", str(tmp_path), "--dataset", "embedded-mnist", "--num", "2",
               "--columns", "4")
    assert size_of(path) == grid_size(4, 4)  # forward and reverse strip per image, 4 levels
    settings = json.loads((tmp_path / "trajectory.json").read_text())
    assert settings["forward_levels"] == [0, 2, 4, 6] and settings["reverse_levels"] == [6, 4, 2, 0]
    path = run("trajectory", "--ckpt", str(ckpt), "--out", str(tmp_path / "prior"), "--from-prior", "--num", "3",
               "--columns", "3")
    assert size_of(path) == grid_size(3, 3)


def test_same_seed_same_images(ckpt, tmp_path):
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        run("generate", "--ckpt", str(ckpt), "--out", str(tmp_path / name), "--num", "4", "--seed", seed,
            "--steps", "2")
    read = lambda name: np.asarray(Image.open(tmp_path / name / "generate_grid.png"))  # noqa: E731
    assert np.array_equal(read("a"), read("b"))
    assert not np.array_equal(read("a"), read("c"))


def test_the_seed_alone_fixes_generated_images_whatever_the_batch_size(ckpt, tmp_path):
    for name, batch in (("a", "3"), ("b", "16")):
        run("generate", "--ckpt", str(ckpt), "--out", str(tmp_path / name), "--num", "5", "--seed", "7",
            "--steps", "2", "--batch-size", batch, "--save-images")
    for i in range(5):
        a = np.asarray(Image.open(tmp_path / "a" / "images" / f"{i:06d}.png"))
        assert np.array_equal(a, np.asarray(Image.open(tmp_path / "b" / "images" / f"{i:06d}.png")))


def test_fit_prior_writes_a_new_model_file_and_never_the_given_one(ckpt, tmp_path, capsys):
    before = ckpt.read_bytes()
    out = ["--out", str(tmp_path / "g"), "--steps", "2", "--num", "2"]
    fit = ["--fit-prior", "--dataset", "embedded-mnist", "--fit-images", "50", "--fit-resize"]  # 28x28 -> 16x16
    assert "--fit-prior needs --output" in _error(capsys, "generate", "--ckpt", str(ckpt), *fit, *out)
    assert "must be a new file" in _error(capsys, "generate", "--ckpt", str(ckpt), *fit, "--output", str(ckpt), *out)
    with pytest.raises(SystemExit):  # a bad --num is refused while parsing, before anything is fitted or written
        main(["generate", "--ckpt", str(ckpt), *fit, "--output", str(tmp_path / "new.ckpt"), "--num", "0"])
    assert "expected a positive integer, got '0'" in capsys.readouterr().err
    assert ckpt.read_bytes() == before and not (tmp_path / "new.ckpt").exists()
    run("generate", "--ckpt", str(ckpt), *fit, "--output", str(tmp_path / "new.ckpt"), *out)
    assert ckpt.read_bytes() == before
    refitted = load_model(tmp_path / "new.ckpt")
    expected = ChannelMeanPrior(1).fit_from(DatasetSource(EmbeddedMNIST("train", ImageTransform(SIZE, 1, False))),
                                            limit=50)
    torch.testing.assert_close(refitted.prior.gmm.means, expected.gmm.means)
    assert not torch.equal(refitted.prior.gmm.means, load_model(ckpt).prior.gmm.means)


def test_fit_prior_refuses_images_unlike_the_models(ckpt, tmp_path, capsys):
    from tests.helpers import make_image_folder

    make_image_folder(tmp_path / "rgb", n=6, size=64, mode="RGB")
    fit = ["generate", "--ckpt", str(ckpt), "--fit-prior", "--folder", str(tmp_path / "rgb"), "--output",
           str(tmp_path / "new.ckpt"), "--out", str(tmp_path / "g"), "--num", "2", "--steps", "2"]
    message = _error(capsys, *fit)
    assert "do not match the model (16x16, 1 channel(s))" in message and "64x64" in message
    assert "converted from RGB to grayscale" in message and "--fit-resize" in message
    assert not (tmp_path / "new.ckpt").exists()
    run(*fit, "--fit-resize")
    assert (tmp_path / "new.ckpt").is_file()


def test_an_export_with_nan_weights_is_refused(ckpt, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = export_model(load_model(ckpt), tmp_path / "export")
    state = load_file(str(folder / "model.safetensors"))
    key = next(k for k in state if k.startswith("network.") and state[k].is_floating_point())
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=f"{key.removeprefix('network.')} holds NaN or infinite values"):
        load_model(folder)


def test_export_then_load_gives_identical_outputs(ckpt, tmp_path):
    model = load_model(ckpt)
    folder = export_model(model, tmp_path / "export")
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json"}
    loaded = load_model(folder)
    x, t = torch.rand(3, 1, SIZE, SIZE), torch.tensor([1, 3, 6])
    torch.testing.assert_close(loaded.restore(x, t), model.restore(x, t), rtol=0, atol=0)
    a, _ = model.generate(3, torch.Generator().manual_seed(0), steps=2)
    b, _ = loaded.generate(3, torch.Generator().manual_seed(0), steps=2)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    run("generate", "--ckpt", str(folder), "--out", str(tmp_path / "g"), "--num", "2", "--steps", "2")


def test_gmm_recovers_two_clusters():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(600, 3, generator=g) * 0.05 + torch.tensor([0.2, 0.3, 0.4])
    b = torch.randn(400, 3, generator=g) * 0.08 + torch.tensor([0.7, 0.6, 0.5])
    gmm = GaussianMixture(2, 3).fit(torch.cat([a, b]))
    order = gmm.means[:, 0].argsort()
    torch.testing.assert_close(gmm.means[order], torch.tensor([[0.2, 0.3, 0.4], [0.7, 0.6, 0.5]]), atol=0.02, rtol=0)
    torch.testing.assert_close(gmm.weights[order], torch.tensor([0.6, 0.4]), atol=0.02, rtol=0)
    draws, components = gmm.sample(4000, torch.Generator().manual_seed(1))
    assert abs((components == order[0]).float().mean().item() - 0.6) < 0.03
    assert gmm.log_prob(torch.tensor([[0.2, 0.3, 0.4]])) > gmm.log_prob(torch.tensor([[0.45, 0.45, 0.45]]))


def test_the_kde_prior_draws_training_thumbnails_plus_kernel_noise(tmp_path):
    from colddiff.priors import LowResKDEPrior

    images = torch.rand(30, 1, 16, 16)
    exact = LowResKDEPrior(1, low_size=4, bandwidth=0.0, max_samples=20).fit(images)
    assert exact.thumbnails.shape == (20, 16)
    draw = exact.sample(5, (1, 16, 16), torch.Generator().manual_seed(0))
    thumbnails = torch.nn.functional.adaptive_avg_pool2d(images, 4)
    for x_T, record in zip(draw.x_T, draw.provenance):  # bandwidth 0: exactly a fitted image's thumbnail
        expected = torch.nn.functional.interpolate(thumbnails[record["fit_index"]][None], size=16, mode="nearest")
        torch.testing.assert_close(x_T[None], expected)
    wide = LowResKDEPrior(1, low_size=4, bandwidth=0.1).fit(images)
    residual = wide.sample(400, (1, 16, 16), torch.Generator().manual_seed(0)).x_T[:, :, ::4, ::4]
    assert 0.08 < (residual - residual.mean(0)).std() < 0.4
    reloaded = LowResKDEPrior(1, low_size=4, bandwidth=0.0)  # how many thumbnails: known only from the file
    reloaded.load_state_dict(exact.state_dict())
    torch.testing.assert_close(reloaded.sample(5, (1, 16, 16), torch.Generator().manual_seed(0)).x_T, draw.x_T)
    with pytest.raises(ValueError, match="bandwidth must be >= 0"):
        LowResKDEPrior(1, bandwidth=-1)


def test_priors_draw_sensible_start_states():
    images = torch.rand(64, 3, 16, 16) * 0.5
    mean = ChannelMeanPrior(3).fit(images).sample(5, (3, 16, 16), torch.Generator().manual_seed(0))
    assert mean.x_T.shape == (5, 3, 16, 16) and mean.x_T.std(dim=(2, 3)).max() < 0.005  # constant + 0.002 noise
    low = LowResPrior(3, low_size=4, num_components=2).fit(images).sample(2, (3, 16, 16))
    assert torch.equal(low.x_T[..., :4, :4], low.x_T[..., :1, :1].expand(-1, -1, 4, 4))
    noise = GaussianNoisePrior().sample(2, (3, 8, 8), torch.Generator().manual_seed(0))
    torch.testing.assert_close(noise.x_T, 0.5 + 0.5 * noise.params["noise"])
    with pytest.raises(RuntimeError, match="not fitted"):
        ChannelMeanPrior(3).sample(2, (3, 8, 8))


def _error(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*args])
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_clear_errors(ckpt, restoration_ckpt, tmp_path, capsys):
    out = ["--out", str(tmp_path)]
    assert "does not exist" in _error(capsys, "generate", "--ckpt", str(tmp_path / "missing.ckpt"), *out)
    assert "cannot generate: it has no start-state prior" in _error(capsys, "generate", "--ckpt",
                                                                    str(restoration_ckpt), *out)
    assert "--level must lie in [0, 6]" in _error(capsys, "reconstruct", "--ckpt", str(ckpt), "--level", "7",
                                                   "--dataset", "embedded-mnist", *out)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    assert "not a PyTorch checkpoint" in _error(capsys, "generate", "--ckpt", str(garbage), *out)
    assert "expected a positive integer, got '0'" in _error(capsys, "generate", "--ckpt", str(ckpt), "--scale", "0",
                                                            *out)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[:5000])
    assert "truncated or not a checkpoint" in _error(capsys, "generate", "--ckpt", str(truncated), *out)


@pytest.mark.parametrize("class_path,match", [
    ("collections.OrderedDict", "refusing to import 'collections.OrderedDict'.*only colddiff data modules"),
    ("colddiff.module.ColdDiffusion", "refusing to build 'colddiff.module.ColdDiffusion'.*only colddiff data modules"),
    ("colddiff.no_such_module.DataModule", "cannot import 'colddiff.no_such_module.DataModule'"),
])
def test_checkpoint_data_module_must_be_a_colddiff_data_module(restoration_ckpt, tmp_path, capsys, class_path,
                                                               match):
    checkpoint = torch.load(restoration_ckpt, weights_only=True)
    checkpoint["datamodule_hyper_parameters"]["_class_path"] = class_path
    doctored = tmp_path / "doctored.ckpt"
    torch.save(checkpoint, doctored)
    message = _error(capsys, "reconstruct", "--ckpt", str(doctored), "--out", str(tmp_path))
    assert re.search(f"the checkpoint's data module: {match}", message), message


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/colddiff_pwned_by_pickle"),))


def test_crafted_pickle_is_refused_and_never_runs(tmp_path, capsys):
    marker = Path("/tmp/colddiff_pwned_by_pickle")
    marker.unlink(missing_ok=True)
    evil = tmp_path / "evil.ckpt"  # a real torch.save zip checkpoint whose pickle calls a function when loaded
    torch.save({"state_dict": {}, "hyper_parameters": {}, "payload": _Payload()}, evil)
    err = _error(capsys, "generate", "--ckpt", str(evil), "--out", str(tmp_path))
    assert "refusing to load" in err and "Unsupported global" in err
    raw = tmp_path / "raw.pkl"  # a plain pickle (protocol 2) with the same payload
    with open(raw, "wb") as handle:
        pickle.dump({"payload": _Payload()}, handle, protocol=2)
    assert "refusing to load" in _error(capsys, "generate", "--ckpt", str(raw), "--out", str(tmp_path))
    assert not marker.exists()
