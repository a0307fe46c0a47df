"""Lightning CLI: every config parses; fast_dev_run fits of the quickstart and of one config per operator
(shrunk by overrides, on data made here); resume continues the global step; the grid callback writes its PNG."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from colddiff.cli import cli_main
from colddiff.io import load_checkpoint
from tests.helpers import make_image_folder

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
TINY_NET = ["--model.network.init_args.dim", "8", "--model.network.init_args.dim_mults", "[1, 2]",
            "--model.network.init_args.num_blocks", "1", "--model.network.init_args.heads", "2",
            "--model.network.init_args.dim_head", "4", "--model.network.init_args.dropout", "0.0"]


def quiet(tmp_path: Path) -> list[str]:
    return ["--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false"]


def test_every_paper_experiment_has_a_config():
    names = {p.stem for p in CONFIGS}
    expected = {"quickstart", "deblur_mnist", "deblur_cifar10", "deblur_celeba128", "inpaint_mnist", "inpaint_cifar10",
                "inpaint_celeba128", "superres_mnist", "superres_cifar10", "superres_celeba128", "snow_cifar10",
                "snow_celeba128", "desaturate_cifar10", "generate_blur_celeba128", "generate_blur_afhq128",
                "mix_afhq_celeba128", "noise_celeba128"}
    assert expected <= names


@pytest.mark.parametrize("config", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_prints(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (None, 0)
    printed = yaml.safe_load(capsys.readouterr().out)
    # image size and channels are given once, in data, and linked into the model and its network
    assert "image_size" in printed["data"]["init_args"] and "channels" in printed["data"]["init_args"]
    assert "image_size" not in printed["model"] and "channels" not in printed["model"]
    assert not {"image_size", "in_channels"} & set(printed["model"]["network"]["init_args"])
    assert printed["model"]["degradation"]["class_path"].startswith("colddiff.degradations")


#: configs with the quickstart's CPU budget and recipe rather than the paper's
QUICKSTART_BUDGET = {"dejpeg_mnist", "flow_mnist", "ihdm_mnist", "ihdm_algorithm2_mnist", "blurring_diffusion_mnist",
                     "indi_deblur_mnist"}

#: the generation methods on the embedded digits (issue 20), each as its paper trains and samples it
METHOD_CONFIGS = {"quickstart_hot": "PredictEpsilon", "flow_mnist": "PredictVelocity", "ihdm_mnist": "PredictPrevious",
                  "ihdm_algorithm2_mnist": "PredictX0", "blurring_diffusion_mnist": "PredictEpsilon",
                  "indi_deblur_mnist": "PredictX0"}


@pytest.mark.parametrize("name", sorted(METHOD_CONFIGS))
def test_each_methods_config_trains_as_its_paper_and_samples(tmp_path, name):
    """Two training steps from YAML with the paper's objective, the quickstart's budget (schedule from YAML), then
    generation (or restoration, for InDI) through the model's own sampler defaults."""
    cli = cli_main(["fit", "--config", str(ROOT / "configs" / f"{name}.yaml"), "--trainer.max_steps", "2",
                    "--trainer.limit_val_batches", "0", "--model.prior_fit_images", "64", *TINY_NET,
                    *quiet(tmp_path)])
    model = cli.model.eval()
    assert type(model.objective).__name__ == METHOD_CONFIGS[name]
    assert cli.datamodule.hparams["batch_size"] == 32
    if name != "indi_deblur_mnist":  # the generation quickstart's cosine decay; InDI keeps the deblurring quickstart's
        assert cli.trainer.lr_scheduler_configs[0].scheduler.T_max == 2000
    if model.prior is not None:  # IHDM's network predicts the next level: it samples on every one, no skipping
        steps = None if name == "ihdm_mnist" else 2
        images, _ = model.generate(2, torch.Generator().manual_seed(0), steps=steps)
    else:
        images = model.reconstruct(torch.rand(2, 1, 28, 28), steps=2).sampled
    assert images.shape == (2, 1, 28, 28) and bool(torch.isfinite(images).all())


def test_paper_hyperparameters_in_configs():
    for config in CONFIGS:
        if config.stem.startswith("quickstart") or config.stem in QUICKSTART_BUDGET or config.stem.endswith("_cpu"):
            continue
        cfg = yaml.safe_load(config.read_text())
        assert cfg["model"]["optimizer"]["init_args"]["lr"] == 2e-5, config.stem
        assert cfg["trainer"]["accumulate_grad_batches"] == 2, config.stem
        assert cfg["model"]["ema_decay"] == 0.995 and cfg["model"]["ema_start"] == 2000, config.stem
        batch = cfg["data"]["init_args"]["batch_size"]
        assert batch == (100 if config.stem == "inpaint_celeba128" else 32), config.stem


@pytest.mark.parametrize("task", ["deblur", "inpaint", "superres"])
def test_cpu_sized_cifar10_configs_keep_the_papers_degradation_and_data(task):
    """The CPU-sized CIFAR-10 restoration configs (issue 30) shrink the network and the steps only: the degradation
    and the sampler are the paper config's, the training images the 50k JPEG copy, the scored ones lossless."""
    cpu = yaml.safe_load((ROOT / "configs" / f"{task}_cifar10_cpu.yaml").read_text())
    paper = yaml.safe_load((ROOT / "configs" / f"{task}_cifar10.yaml").read_text())
    assert cpu["model"]["degradation"] == paper["model"]["degradation"]
    assert cpu["model"].get("sampler") == paper["model"].get("sampler")
    assert cpu["data"]["init_args"]["root"] == "data/cifar10/train"
    assert cpu["data"]["init_args"]["test_root"] == "data/cifar10_lossless/test"
    assert cpu["trainer"]["max_steps"] < paper["trainer"]["max_steps"] // 100
    assert "WALLTIME" not in (ROOT / "configs" / f"{task}_cifar10_cpu.yaml").read_text()


def test_help_lists_components(capsys):
    with pytest.raises(SystemExit):
        cli_main(["fit", "--help"])
    out = capsys.readouterr().out
    assert "--model.degradation" in out and "--model.sampler" in out and "--data" in out


def test_quickstart_fast_dev_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = cli_main(["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--trainer.fast_dev_run", "2",
                    *quiet(tmp_path)])
    assert cli.trainer.global_step == 2
    assert not list(tmp_path.rglob("*.ckpt"))  # a smoke run leaves no last.ckpt for `--ckpt_path last` to pick up


def _folder_data(root: Path, size: int, paired: bool = False) -> list[str]:
    make_image_folder(root / "a", n=10, size=size + 4, seed=1)
    args = ["--data", "colddiff.data.PairedFolderDataModule" if paired else "colddiff.data.ImageFolderDataModule",
            "--data.root", str(root / "a"), "--data.image_size", str(size), "--data.channels", "3",
            "--data.batch_size", "4", "--data.num_workers", "0", "--data.val_fraction", "0.2", "--data.pre_crop",
            "null"]
    if paired:
        make_image_folder(root / "b", n=6, size=size + 4, seed=2)
        args += ["--data.partner_root", str(root / "b"), "--data.partner_val_root", "null"]
    return args


def _shrink(config: Path, tmp_path: Path, size: int = 16, paired: bool = False) -> list[str]:
    cfg = yaml.safe_load(config.read_text())
    data_class = cfg["data"]["class_path"]
    args = ["fit", "--config", str(config), "--trainer.fast_dev_run", "1", *quiet(tmp_path), *TINY_NET,
            "--model.val_sample_steps", "3", "--model.sample_steps", "3", "--model.prior_fit_images", "8"]
    if data_class.endswith("EmbeddedMNISTDataModule") or cfg["data"]["init_args"].get("channels") == 1:
        args += ["--data", "colddiff.data.EmbeddedMNISTDataModule", "--data.image_size", str(size),
                 "--data.batch_size", "4", "--data.val_size", "8"]
    else:
        args += _folder_data(tmp_path / "data", size, paired)
    return args


OPERATOR_CONFIGS = ["deblur_cifar10", "inpaint_mnist", "superres_mnist", "snow_cifar10", "desaturate_cifar10",
                    "mix_afhq_celeba128", "noise_celeba128", "generate_blur_celeba128", "generate_mask_celeba128",
                    "dejpeg_cifar10"]


@pytest.mark.parametrize("name", OPERATOR_CONFIGS)
def test_fast_dev_run_per_operator(name, tmp_path):
    args = _shrink(ROOT / "configs" / f"{name}.yaml", tmp_path, paired=name.startswith("mix"))
    cli = cli_main(args)
    assert cli.trainer.global_step == 1
    model = cli.model
    if model.prior is not None:
        assert model.prior.is_fitted
        images, start = model.generate(2, torch.Generator().manual_seed(0), steps=3)
        assert images.shape == (2, 3, 16, 16) and len(start.provenance) == 2


def _run(tmp_path: Path, max_steps: int, extra: list[str] = ()) -> object:
    """The quickstart config with intervals of 4 steps; every output goes under ``tmp_path`` through the one setting
    ``--trainer.default_root_dir`` (the config names no logger folder and no checkpoint folder)."""
    override = tmp_path / "override.yaml"
    override.write_text(yaml.safe_dump({"trainer": {
        "callbacks": [
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
             "init_args": {"every_n_train_steps": 4, "save_last": True, "save_top_k": -1}},
            {"class_path": "colddiff.callbacks.SampleGrid", "init_args": {"every_n_steps": 4, "scale": 1}},
        ],
    }}))
    return cli_main(["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--config", str(override),
                     *quiet(tmp_path), "--trainer.max_steps", str(max_steps), "--trainer.val_check_interval", "4",
                     "--trainer.limit_val_batches", "1", "--data.val_size", "8", "--model.val_sample_steps", "2",
                     *extra])


def test_resume_continues_the_global_step_and_writes_run_files(tmp_path):
    first = _run(tmp_path, 4)
    assert first.trainer.global_step == 4
    saved = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == 4
    assert {"state_dict", "optimizer_states", "hyper_parameters"} <= set(saved)
    assert any(k.startswith("ema_network.") for k in saved["state_dict"])
    run = tmp_path / "version_0"
    assert (run / "config.yaml").is_file() and (run / "metrics.csv").is_file()
    assert list(run.glob("events.out.tfevents.*"))
    grid = Image.open(run / "grids" / "step_0000004.png")
    assert grid.size == (4 * (28 + 2) + 2, 8 * (28 + 2) + 2)  # 4 columns x_T|direct|sampled|x0, 8 rows

    resumed = _run(tmp_path, 8, ["--ckpt_path", "last"])
    assert resumed.trainer.global_step == 8
    assert resumed.trainer.fit_loop.epoch_loop._batches_that_stepped == 8
    assert (tmp_path / "version_1" / "grids" / "step_0000008.png").is_file()
    final = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert final["global_step"] == 8


def test_default_root_dir_moves_every_output(tmp_path, monkeypatch):
    """`--trainer.default_root_dir` alone moves logs, config, grids and checkpoints of an unmodified config."""
    monkeypatch.chdir(tmp_path)
    scratch = tmp_path / "scratch" / "run1"
    cli_main(["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), *quiet(scratch),
              "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
              "--data.val_size", "8", "--model.val_sample_steps", "2"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scratch"]  # nothing in ./runs/quickstart
    assert (scratch / "checkpoints" / "last.ckpt").is_file()
    assert (scratch / "version_0" / "config.yaml").is_file() and (scratch / "version_0" / "metrics.csv").is_file()
    assert list((scratch / "version_0").glob("events.out.tfevents.*"))
    assert list((scratch / "version_0" / "grids").glob("step_*.png"))


def test_grid_scale_enlarges_images(tmp_path):
    from colddiff.io import save_png_atomic

    path = save_png_atomic(torch.rand(6, 1, 10, 10), tmp_path / "g.png", nrow=3, scale=3)
    assert Image.open(path).size == (3 * (30 + 2) + 2, 2 * (30 + 2) + 2)
    assert not list(tmp_path.glob(".*.tmp"))


def test_generation_quickstart_builds_its_scheduler_and_kde_prior_from_yaml(tmp_path):
    """The generation quickstart's cosine schedule comes from YAML (``lr_scheduler: {class_path: ...}``); its prior is
    the kernel density over 7x7 training thumbnails, fitted at the start of training."""
    from colddiff.priors import LowResKDEPrior

    cli = cli_main(["fit", "--config", str(ROOT / "configs" / "quickstart_generate.yaml"), "--trainer.max_steps", "3",
                    "--trainer.limit_val_batches", "0", "--model.prior_fit_images", "64", *TINY_NET,
                    *quiet(tmp_path)])
    scheduler = cli.trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR) and scheduler.T_max == 2000
    assert scheduler.last_epoch == 3  # stepped every optimiser step
    assert isinstance(cli.model.prior, LowResKDEPrior) and cli.model.prior.thumbnails.shape == (64, 49)
    images, start = cli.model.generate(2, torch.Generator().manual_seed(0), steps=3)
    assert images.shape == (2, 1, 28, 28) and {p["fit_index"] for p in start.provenance} <= set(range(64))


def test_ckpt_path_last_reads_each_checkpoint_once(tmp_path, monkeypatch):
    """`--ckpt_path last` picks the newest checkpoint by its recorded step and reads every file once: the chosen
    one's content is handed on, not loaded a second time."""
    from types import SimpleNamespace

    import colddiff.cli as cli_module

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name, step in (("epoch=0-step=4.ckpt", 4), ("epoch=1-step=8.ckpt", 8), ("last.ckpt", 8)):
        torch.save({"global_step": step, "state_dict": {}, "hyper_parameters": {}}, folder / name)
    reads: list[str] = []
    load = cli_module.load_checkpoint
    monkeypatch.setattr(cli_module, "load_checkpoint",
                        lambda path, **kw: reads.append(Path(path).name) or load(path, **kw))
    callback = SimpleNamespace(class_path="lightning.pytorch.callbacks.ModelCheckpoint",
                               init_args={"dirpath": str(folder)})
    path, checkpoint = cli_module.read_resume_checkpoint("last", {"callbacks": [callback]})
    assert path.name == "last.ckpt" and checkpoint["global_step"] == 8  # last.ckpt wins the tie
    assert sorted(reads) == sorted(p.name for p in folder.glob("*.ckpt"))  # each file once
    assert cli_module.resolve_resume_checkpoint("last", {"callbacks": [callback]}) == path


def test_selected_prior_bandwidth_is_recorded_in_the_last_checkpoint_and_export(tmp_path):
    """SelectPriorSetting chooses the kernel bandwidth of the generation quickstart's prior on held-out digits at the
    last step (the lowest FD, here in pixel space); the choice is on the prior, in the last checkpoint's config (so a
    reload uses it), in an export and in the run folder's prior_selection.json."""
    import lightning as L

    import colddiff.degradations as cd
    from colddiff.callbacks import SelectPriorSetting
    from colddiff.data import EmbeddedMNISTDataModule
    from colddiff.module import ColdDiffusion
    from colddiff.nets import ConvNeXtUNet
    from colddiff.pipeline import Pipeline
    from colddiff.priors import LowResKDEPrior

    model = ColdDiffusion(cd.Pixelate(21, schedule="linear"), ConvNeXtUNet(1, dim=8, dim_mults=(1, 2), num_blocks=1,
                                                                            attention="none", image_size=28),
                          LowResKDEPrior(1, 7, bandwidth=0.5), image_size=28, channels=1, sampler="naive",
                          prior_fit_images=64, val_sample_batches=0, ema_start=0, ema_every=1, ema_decay=0.5)
    select = SelectPriorSetting(candidates=[0.3, 0.02], num_images=32, reference_images=32, extractor="pixels")
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True,
                                                      every_n_train_steps=3)
    L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
              limit_val_batches=0, default_root_dir=tmp_path, callbacks=[select, checkpoints]).fit(
        model, EmbeddedMNISTDataModule(image_size=28, channels=1, batch_size=8, val_size=32))
    assert [row["value"] for row in select.table] == [0.3, 0.02]
    chosen = min(select.table, key=lambda row: row["FD"])["value"]
    assert select.chosen == chosen and model.prior.bandwidth == chosen
    saved = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert saved["hyper_parameters"]["prior"]["init_args"]["bandwidth"] == chosen
    assert Pipeline.load(tmp_path / "checkpoints" / "last.ckpt").prior.bandwidth == chosen
    model.pipeline.save(tmp_path / "export")
    assert Pipeline.load(tmp_path / "export").prior.bandwidth == chosen
    assert (tmp_path / "prior_selection.json").is_file()
