"""Lightning CLI for training: ``python train.py fit --config configs/X.yaml`` (or ``colddiff-train``).

The data module's ``image_size`` and ``channels`` are given once and linked into the model (and its network).
Components (degradation, network, prior, optimiser) are chosen by ``class_path`` in the YAML; ``--help`` lists
them, ``--print_config`` shows the resolved config, and every run saves it as ``config.yaml`` in its log folder.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from jsonargparse.typing import register_type
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from colddiff._config import build, describe
from colddiff.data import ImageDataModule
from colddiff.io import load_checkpoint
from colddiff.module import ColdDiffusion
from colddiff.objectives import PredictX0, resolve_objective
from colddiff.sampling import SamplerName, check_sampler_name

# a sampler name in a config is checked while parsing, against the samplers registered at that moment
register_type(SamplerName, serializer=str, deserializer=lambda value: SamplerName(check_sampler_name(value, "sampler")))

__all__ = ["ColdDiffusionCLI", "cli_main", "SetupError"]


class SetupError(Exception):
    """A run that cannot start as asked (reported as one line, before anything is built or written)."""


class ColdDiffusionCLI(LightningCLI):
    """LightningCLI with the model fixed to :class:`~colddiff.module.ColdDiffusion` and any data module."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.init_args.image_size", "model.image_size")
        parser.link_arguments("data.init_args.channels", "model.channels")
        parser.link_arguments("data.init_args.image_size", "model.network.init_args.image_size")
        parser.link_arguments("data.init_args.channels", "model.network.init_args.in_channels")
        parser.add_argument(
            "--resume_with_config_changes", type=bool, default=False,
            help="resume from --ckpt_path although the model config differs from the checkpoint's: the new config "
                 "is used (the changed degradation/prior buffers and optimiser settings replace the checkpoint's)")

    def _parse_ckpt_path(self) -> None:
        """Check a resume before anything is built, instead of LightningCLI's merging of the checkpoint's config.

        LightningCLI would build whatever classes the checkpoint's config names (code from a file) and silently
        let it replace the YAML's model.  Here the checkpoint is read safely, ``last`` means the newest complete
        checkpoint of the run (by its recorded step), and a model config that differs from the checkpoint's is
        refused, naming the fields, unless ``--resume_with_config_changes true`` (then the new config is used).
        """
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else None
        self.config_changes: dict[str, list[str]] = {}
        if config is None or not config.get("ckpt_path"):
            return
        trainer = config.get("trainer")
        if trainer is not None:
            place_run_outputs(trainer)
        try:
            found = read_resume_checkpoint(str(config["ckpt_path"]), trainer)
        except (ValueError, OSError) as err:
            raise SetupError(str(err)) from err
        if found is None:
            return
        path, checkpoint = found
        config["ckpt_path"] = str(path)
        saved = checkpoint.get("hyper_parameters")
        if not isinstance(saved, dict) or "state_dict" not in checkpoint:
            raise SetupError(f"--ckpt_path {str(path)!r} is not a colddiff training checkpoint (it has no model "
                             "hyper-parameters or no state_dict)")
        changes = config_changes(saved, config["model"].as_dict() if hasattr(config["model"], "as_dict")
                                 else dict(config["model"]))
        if changes and not config.get("resume_with_config_changes"):
            fields = "; ".join(f"{k}: {', '.join(v)}" for k, v in changes.items())
            raise SetupError(
                f"--ckpt_path {str(path)!r} was trained with another model config than this run's ({fields}). "
                "Resume with the config it was trained with, or pass --resume_with_config_changes true to train on "
                "with the new config (the changed parts replace the checkpoint's)")
        self.config_changes = changes

    def instantiate_classes(self) -> None:
        """Build the run's objects; a value a component refuses (``num_steps: 0``, ``batch_size: 0``, an image size
        the network cannot take ...) is reported as one line, before anything is written."""
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as err:
            raise SetupError(_one_line(err)) from err

    def before_fit(self) -> None:
        # the data is set up before anything is written (a missing folder or an empty training split: one line)
        try:
            self.datamodule.setup("fit")
        except (ValueError, FileNotFoundError, NotADirectoryError) as err:
            raise SetupError(_one_line(err)) from err
        # Lightning's ModelCheckpoint skips every save under fast_dev_run except save_last at the end of training,
        # which would leave a one-step last.ckpt in the run's real checkpoint folder (and `--ckpt_path last` would
        # then resume from it): a smoke run writes no checkpoint at all
        if self.trainer.fast_dev_run:
            for callback in self.trainer.checkpoint_callbacks:
                callback.save_last = False
        self.model.resume_changes = set(getattr(self, "config_changes", {}))
        if self.trainer.is_global_zero:
            self._lock = lock_run_folder(Path(self.trainer.default_root_dir))
            for callback in self.trainer.checkpoint_callbacks:
                if callback.dirpath:
                    remove_orphaned_temporary_files(Path(callback.dirpath))

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        finally:  # the run folder is free again when the run ends, however it ends
            lock = getattr(self, "_lock", None)
            if lock is not None:
                lock.release()

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        if config is not None and config.get("trainer") is not None:
            place_run_outputs(config["trainer"])
            align_logger_versions(config["trainer"])


def _one_line(err: BaseException) -> str:
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__


def _next_version(folder: Path) -> int:
    versions = [int(m.group(1)) for p in folder.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))]
    return max(versions, default=-1) + 1


def _plain(value: Any) -> Any:
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _resolve_objective(config: dict[str, Any], from_file: bool) -> dict[str, Any]:
    """The config with its objective as the model resolves it, so two configs for the same training compare equal
    however they spell it.  A checkpoint's config (``from_file``) is never built: it records its objective resolved
    (or, before objectives existed, its ``loss``: x0-prediction).  The run's own config is built (a named objective
    with every argument, or the degradation's default)."""
    objective, loss = config.get("objective"), config.get("loss")
    try:
        if from_file:
            if objective is not None or loss is None:
                return config
            return {**config, "objective": describe(PredictX0(loss=loss)), "loss": None}
        objective = resolve_objective(build(objective, "objective"), loss, build(config.get("degradation"),
                                                                                 "degradation"))
    except (ValueError, TypeError, KeyError, AttributeError):
        return config  # compared as written; building the model reports the error
    return {**config, "objective": describe(objective), "loss": None}


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, list[str]]:
    """The fields where two model configs differ, grouped by top-level argument (``{"degradation": ["init_args.
    sigma: 1.5 -> 3.0"]}``); entries starting with ``_`` (Lightning's bookkeeping) are ignored."""
    changes: dict[str, list[str]] = {}

    def walk(a: Any, b: Any, where: str, group: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), f"{where}.{key}" if where else key, group)
        elif a != b:
            changes.setdefault(group, []).append(f"{where or group} {a!r} -> {b!r}")

    saved, current = _resolve_objective(_plain(saved), from_file=True), _resolve_objective(_plain(current), False)
    for key in sorted(set(saved) | set(current)):
        walk(saved.get(key), current.get(key), "", key)
    return changes


def _checkpoint_folders(trainer_config: Any) -> list[Path]:
    folders = []
    for callback in (trainer_config or {}).get("callbacks") or []:
        init_args = getattr(callback, "init_args", None)
        if str(getattr(callback, "class_path", "")).endswith(".ModelCheckpoint") and init_args is not None \
                and init_args.get("dirpath"):
            folders.append(Path(str(init_args["dirpath"])))
    return folders


def resolve_resume_checkpoint(ckpt_path: str, trainer_config: Any) -> Path | None:
    """The file a resume reads (see :func:`read_resume_checkpoint`, which also returns its content)."""
    found = read_resume_checkpoint(ckpt_path, trainer_config)
    return None if found is None else found[0]


def read_resume_checkpoint(ckpt_path: str, trainer_config: Any) -> tuple[Path, dict[str, Any]] | None:
    """The file a resume reads and its content (tensors memory-mapped): a given path (checked to exist), or for
    ``last`` the newest complete checkpoint of the run's checkpoint folders by its recorded global step
    (``last.ckpt`` on a tie).  Each file is read once: the content of the one chosen is kept, not read again.

    ``last.ckpt`` can be older than the newest periodic checkpoint when a run was killed while writing it (the
    write is atomic, so the previous ``last.ckpt`` survives); resuming from it would lose an interval.  Returns
    ``None`` when the resume reads nothing here (``best``/``hpc``/``registry``, which Lightning resolves, or
    ``last`` when the run has no checkpoint yet: training then starts from scratch, as Lightning does).
    Unreadable checkpoints are passed over with a note when a readable one exists; when every checkpoint of the
    run is unreadable, the resume is refused with one message naming them (Lightning would otherwise try to load
    ``last.ckpt`` itself).
    """
    if ckpt_path in ("best", "hpc", "registry"):
        return None
    if ckpt_path != "last":
        path = Path(ckpt_path)
        if not path.is_file():
            raise SetupError(f"--ckpt_path {ckpt_path!r} does not exist or is not a file")
        return path, load_checkpoint(path, mmap=True)
    best: tuple[int, bool, Path, dict[str, Any]] | None = None
    unreadable: list[tuple[Path, str]] = []
    folders = _checkpoint_folders(trainer_config)
    for folder in folders:
        for path in sorted(folder.glob("*.ckpt")) if folder.is_dir() else []:
            try:
                checkpoint = load_checkpoint(path, mmap=True)
                step = int(checkpoint.get("global_step", -1))
            except (ValueError, TypeError, AttributeError, OSError, pickle.UnpicklingError) as err:
                unreadable.append((path, _one_line(err)))
                continue
            candidate = (step, path.name.startswith("last"), path, checkpoint)
            if best is None or candidate[:2] > best[:2]:
                best = candidate  # the others' contents are dropped as the scan goes on
    if best is None and unreadable:
        reasons = "; ".join(reason for _, reason in unreadable)
        raise SetupError(f"--ckpt_path last: no complete checkpoint to resume from in "
                         f"{', '.join(repr(str(f)) for f in folders)} ({reasons}). Delete the unreadable file(s) to "
                         "start from scratch, or pass --ckpt_path PATH")
    for path, reason in unreadable:
        print(f"colddiff: --ckpt_path last: passing over the unreadable {path} (resuming from {best[2]}): {reason}",
              file=sys.stderr)
    return None if best is None else (best[2], best[3])


class RunFolderLock:
    """An exclusive lock on a run folder, held by one training at a time (released when the process ends)."""

    def __init__(self, folder: Path) -> None:
        import fcntl

        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / ".colddiff-train.lock"
        self._handle = open(self.path, "a+")  # noqa: SIM115 - held open for the life of the run
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._handle.seek(0)
            owner = self._handle.read().strip() or "another process"
            self._handle.close()
            raise SetupError(
                f"another training is running in {str(folder)!r} ({owner}); two runs in one folder would mix their "
                "logs and checkpoints: wait for it, or give this run its own --trainer.default_root_dir") from None
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(f"pid {os.getpid()}")
        self._handle.flush()

    def release(self) -> None:
        """Release the lock (closing the file releases it; the file itself stays)."""
        if not self._handle.closed:
            self._handle.close()


def lock_run_folder(folder: Path) -> RunFolderLock | None:
    """Lock the run folder where the platform can (POSIX ``flock``); elsewhere, no lock."""
    try:
        import fcntl  # noqa: F401
    except ImportError:  # pragma: no cover - Windows
        return None
    return RunFolderLock(folder)


def remove_orphaned_temporary_files(folder: Path) -> list[Path]:
    """Delete temporary files that interrupted checkpoint writes left in ``folder`` (``.<name>.<pid>.tmp``).

    Called while this run holds the run folder's lock, so no other training is writing there.
    """
    removed = []
    for path in folder.glob(".*.tmp") if folder.is_dir() else []:
        path.unlink(missing_ok=True)
        removed.append(path)
    if removed:
        print(f"colddiff: removed {len(removed)} temporary file(s) of interrupted checkpoint writes in {folder}",
              file=sys.stderr)
    return removed


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
    except (SetupError, pickle.UnpicklingError) as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        sys.exit(2)
