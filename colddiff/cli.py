"""Lightning CLI for training: ``python train.py fit --config configs/X.yaml`` (or ``colddiff-train``).

The data module's ``image_size`` and ``channels`` are given once and linked into the model (and its network).
Components (degradation, network, prior, optimiser) are chosen by ``class_path`` in the YAML; ``--help`` lists
them, ``--print_config`` shows the resolved config, and every run saves it as ``config.yaml`` in its log folder.
"""

from __future__ import annotations

import pickle
import re
import sys
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from colddiff.data import ImageDataModule
from colddiff.io import unsafe_checkpoint_error
from colddiff.module import ColdDiffusion

__all__ = ["ColdDiffusionCLI", "cli_main"]


class ColdDiffusionCLI(LightningCLI):
    """LightningCLI with the model fixed to :class:`~colddiff.module.ColdDiffusion` and any data module."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.init_args.image_size", "model.image_size")
        parser.link_arguments("data.init_args.channels", "model.channels")
        parser.link_arguments("data.init_args.image_size", "model.network.init_args.image_size")
        parser.link_arguments("data.init_args.channels", "model.network.init_args.in_channels")

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads --ckpt_path (weights_only) to recover the model's hyper-parameters: same message as ours
        try:
            super()._parse_ckpt_path()
        except pickle.UnpicklingError as err:
            path = self.config[self.config.subcommand].get("ckpt_path")
            raise unsafe_checkpoint_error(path, err) from err

    def before_fit(self) -> None:
        # Lightning's ModelCheckpoint skips every save under fast_dev_run except save_last at the end of training,
        # which would leave a one-step last.ckpt in the run's real checkpoint folder (and `--ckpt_path last` would
        # then resume from it): a smoke run writes no checkpoint at all
        if self.trainer.fast_dev_run:
            for callback in self.trainer.checkpoint_callbacks:
                callback.save_last = False

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        if config is not None and config.get("trainer") is not None:
            place_run_outputs(config["trainer"])
            align_logger_versions(config["trainer"])


def _next_version(folder: Path) -> int:
    versions = [int(m.group(1)) for p in folder.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))]
    return max(versions, default=-1) + 1


def place_run_outputs(trainer_config: Any) -> None:
    """One setting decides where a run writes: ``trainer.default_root_dir`` (default: the working directory).

    Loggers left unset (``logger: true``, Lightning's default) become a TensorBoard and a CSV logger writing to
    ``<root>/version_N/``; ``ModelCheckpoint`` callbacks without a ``dirpath`` write to ``<root>/checkpoints/``
    (where ``--ckpt_path last`` finds ``last.ckpt``).  Loggers and paths a config sets explicitly are kept, so
    ``--trainer.default_root_dir /scratch/run1`` moves everything a config leaves to it.
    """
    root = str(trainer_config.get("default_root_dir") or Path.cwd())
    if trainer_config.get("logger") in (None, True):
        trainer_config["logger"] = [
            Namespace(class_path=f"lightning.pytorch.loggers.{name}",
                      init_args=Namespace(save_dir=root, name="", version=None))
            for name in ("TensorBoardLogger", "CSVLogger")
        ]
    for callback in trainer_config.get("callbacks") or []:
        init_args = getattr(callback, "init_args", None)
        if str(getattr(callback, "class_path", "")).endswith(".ModelCheckpoint") and init_args is not None \
                and init_args.get("dirpath") is None:
            init_args["dirpath"] = str(Path(root) / "checkpoints")


def align_logger_versions(trainer_config: Any) -> None:
    """Give loggers that share a ``save_dir`` and ``name`` (and leave ``version`` unset) one common version, so a run
    keeps its TensorBoard events, ``metrics.csv``, ``config.yaml`` and grids in one folder."""
    if trainer_config is None:
        return
    loggers = trainer_config.get("logger")
    if not isinstance(loggers, list):
        return
    groups: dict[tuple[str, str], list[Any]] = {}
    for logger in loggers:
        init_args = getattr(logger, "init_args", None)
        if init_args is None or "version" not in init_args or init_args.get("version") is not None:
            continue
        key = (str(init_args.get("save_dir")), str(init_args.get("name") or ""))
        groups.setdefault(key, []).append(init_args)
    for (save_dir, name), members in groups.items():
        if len(members) > 1:
            version = f"version_{_next_version(Path(save_dir) / name)}"
            for init_args in members:
                init_args["version"] = version


def cli_main(args: list[str] | None = None, run: bool = True) -> ColdDiffusionCLI:
    """Entry point of ``train.py`` and ``colddiff-train``; ``args`` replaces ``sys.argv[1:]`` (for tests).

    On SIGTERM (as cluster schedulers send before killing a job) Lightning stops at the next batch, checkpoint
    callbacks with ``save_on_exception: true`` save the state, and the process exits with status 143.
    """
    try:
        return ColdDiffusionCLI(
            ColdDiffusion,
            ImageDataModule,
            subclass_mode_data=True,
            args=args,
            run=run,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"plugins": [{"class_path": "colddiff.checkpoint.AtomicCheckpointIO"}]},
        )
    except SIGTERMException:
        print("colddiff: received SIGTERM; the checkpoint callbacks saved the run (resume with --ckpt_path last)",
              file=sys.stderr)
        sys.exit(143)
