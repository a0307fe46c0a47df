"""Model files, in one place: reading, checking and writing exports and training checkpoints.

An *export* is a folder with ``model.safetensors`` (the network's weights once, the degradation's buffers, the
fitted prior) and ``config.json`` (the components as ``class_path``/``init_args``, the sampler defaults).  A
*training checkpoint* (``.ckpt``, written by Lightning) holds the model's config as ``hyper_parameters`` and its
weights under ``state_dict``, the EMA network as ``ema_network.*``: inference keeps only that copy.  Both layouts,
and which config entries only training uses, are known here and nowhere else; :class:`~colddiff.pipeline.Pipeline`
(inference) and :class:`~colddiff.module.ColdDiffusion` (training) read and write files through this module.

Files are data: configs build only allowed classes (colddiff components, or class paths the caller lists in
``allow``; checked on the string before any import), weights are read with ``weights_only=True`` or safetensors,
and a file is checked once, before anything is built at its real size: its config (entries, components, sampler)
and its network's weights against the config (names, shapes, floating dtypes, finite values) on the meta device,
so a small file that asks for a huge network is refused, not allocated.

Torch only, no Lightning.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from colddiff._config import (
    NOT_RECORDED,
    ModelFileError,
    build,
    check_component_entries,
    describe_or_mark,
    model_kwargs,
)
from colddiff.io import atomic_write_bytes, load_checkpoint
from colddiff.objectives import resolve_objective
from colddiff.sampling import check_sampler_name

if TYPE_CHECKING:
    from colddiff.pipeline import Pipeline

__all__ = ["WEIGHTS", "CONFIG", "TRAINING_ONLY", "SETTINGS", "COMPONENTS", "ModelFile", "read_model_file",
           "read_export", "read_training_checkpoint", "check_model_file", "check_model_config", "check_file_sampler",
           "check_network_weights", "check_state", "pipeline_kwargs", "build_checked", "load_pipeline",
           "model_config", "inference_state", "write_export", "save_model_as", "is_export"]

WEIGHTS, CONFIG = "model.safetensors", "config.json"
#: entries of a model config that only training uses (ColdDiffusion's own arguments): accepted in files
#: (checkpoints, older exports), not needed for inference
TRAINING_ONLY = ("optimizer", "lr_scheduler", "ema_decay", "ema_every", "ema_start", "val_sample_batches",
                 "val_sample_steps", "prior_fit_images", "compile", "nonfinite_loss", "seed", "train_noise",
                 "ema_sigma_rel")
#: the inference settings and components of a model config (a pipeline's constructor arguments)
SETTINGS = ("image_size", "channels", "sampler", "sample_steps", "sample_noise", "channels_last")
COMPONENTS = ("degradation", "network", "prior", "objective")
#: the tensor groups of an export (and the inference part of a checkpoint)
_GROUPS = ("network", "degradation", "prior")


@dataclass(frozen=True)
class ModelFile:
    """What a model file holds for inference.

    Attributes:
        config: the model config (an export's ``model`` entry, a checkpoint's hyper-parameters).
        state: the inference tensors, ``network.*`` (a checkpoint's EMA weights), ``degradation.*``, ``prior.*``.
        source: the file's name, for messages.
        checked: whether the network's weights were checked against the config on the meta device (``False``: the
            config records no network, it cannot be built there, or an override replaces it).
    """

    config: Mapping[str, Any]
    state: dict[str, Tensor]
    source: str
    checked: bool


def is_export(path: str | os.PathLike) -> bool:
    """An export folder or its weights file (anything else is read as a training checkpoint)."""
    path = Path(path)
    return path.is_dir() or path.name == WEIGHTS


# ------------------------------------------------------------------------------------------------ reading
def read_model_file(path: str | os.PathLike, allow: Sequence[str] = (), overrides: Mapping[str, Any] | None = None
                    ) -> ModelFile:
    """Read an export folder (or its ``model.safetensors``) or a training checkpoint, and check it once
    (:func:`check_model_file`); nothing is built at its real size."""
    path = Path(path)
    if is_export(path):
        config, state, source = read_export(path)
    elif not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    else:
        config, full, source = _read_checkpoint_file(path)
        state = _inference_tensors(full)
    checked = check_model_file(config, state, source, allow, overrides)
    return ModelFile(config, state, source, checked)


def read_export(path: str | os.PathLike) -> tuple[Mapping[str, Any], dict[str, Tensor], str]:
    """An export's model config, its tensors and its name for messages (unchecked)."""
    path = Path(path)
    folder = path.parent if path.name == WEIGHTS else path
    if not (folder / WEIGHTS).is_file() or not (folder / CONFIG).is_file():
        raise FileNotFoundError(f"{str(folder)!r} is not a colddiff export: it needs {WEIGHTS} and {CONFIG}")
    try:
        payload = json.loads((folder / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{str(folder / CONFIG)!r} is not valid JSON: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != "colddiff-export" or "model" not in payload:
        raise ValueError(f"{str(folder / CONFIG)!r} is not a colddiff export config")
    try:
        state = load_file(str(folder / WEIGHTS), device="cpu")
    except (SafetensorError, OSError) as err:
        raise ValueError(f"cannot read {str(folder / WEIGHTS)!r}: {err}") from err
    return payload["model"], state, str(folder)


def _read_checkpoint_file(path: str | os.PathLike) -> tuple[Mapping[str, Any], Mapping[str, Tensor], str]:
    """A training checkpoint's hyper-parameters and whole state dict (``weights_only=True``), unchecked."""
    checkpoint = load_checkpoint(path, map_location="cpu")
    hparams, state = checkpoint.get("hyper_parameters"), checkpoint.get("state_dict")
    if not isinstance(hparams, Mapping) or not isinstance(state, Mapping):
        raise ValueError(f"{str(path)!r} is not a colddiff training checkpoint (no state_dict/hyper_parameters)")
    return hparams, state, str(path)


def _inference_tensors(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A checkpoint's tensors that inference needs: the EMA network as ``network.*``, the degradation, the prior."""
    kept: dict[str, Tensor] = {}
    for key, tensor in state.items():
        prefix, _, name = key.partition(".")
        if prefix == "ema_network":
            kept[f"network.{name}"] = tensor
        elif prefix in ("degradation", "prior"):
            kept[key] = tensor
    return kept


def read_training_checkpoint(path: str | os.PathLike, allow: Sequence[str] = (),
                             overrides: Mapping[str, Any] | None = None, networks: Sequence[str] = ()
                             ) -> tuple[Mapping[str, Any], Mapping[str, Tensor], str]:
    """A training checkpoint's model config (hyper-parameters), its whole state dict, and its name for messages;
    read with ``weights_only=True``.  Before anything is built: the file's sampler goes through the allow-list
    (:func:`check_file_sampler`) and the weight groups ``networks`` (e.g. ``network``, ``ema_network``) are checked
    against the config's network on the meta device (:func:`check_network_weights`), unless ``overrides`` replace
    them."""
    hparams, state, source = _read_checkpoint_file(path)
    overrides = overrides or {}
    if "sampler" not in overrides:
        check_file_sampler(hparams, source, allow)
    if networks and "network" not in overrides:
        check_network_weights(hparams.get("network"), state, source, allow, networks)
    return hparams, state, source


# ------------------------------------------------------------------------------------------------ checking
def check_model_file(config: Any, state: Mapping[str, Tensor], source: str, allow: Sequence[str] = (),
                     overrides: Mapping[str, Any] | None = None) -> bool:
    """The one check of a model file before anything is built: its config (:func:`check_model_config`), its sampler
    (:func:`check_file_sampler`) and its network's weights on the meta device (:func:`check_network_weights`);
    ``overrides`` replace entries (they are not checked here).  Returns whether the weights were checked."""
    overrides = overrides or {}
    check_model_config(config, source, overrides)
    if "sampler" not in overrides:
        check_file_sampler(config, source, allow)
    return "network" not in overrides and check_network_weights(config.get("network"), state, source, allow)


def check_model_config(config: Any, source: str, overrides: Mapping[str, Any] | None = None) -> None:
    """Refuse a model config that cannot describe a pipeline, in one line naming the file and the field: not a
    mapping, unknown entries, no degradation or network, a component that is not a ``{class_path, init_args}``
    mapping (nothing is imported or built here)."""
    overrides = overrides or {}
    if not isinstance(config, Mapping):
        raise ModelFileError(f"the model config must be a mapping of its entries, got {type(config).__name__}",
                             source)
    known = set(COMPONENTS) | set(SETTINGS) | set(TRAINING_ONLY) | {"loss"}
    unknown = sorted(k for k in config if not str(k).startswith("_") and k not in known and k not in overrides)
    if unknown:
        raise ModelFileError(f"unknown entries {unknown} in the model config (known: {sorted(known)})", source)
    missing = [name for name in ("degradation", "network") if config.get(name) is None and name not in overrides]
    if missing:
        raise ModelFileError(f"the model config has no {' and no '.join(missing)} (a {{class_path, init_args}} "
                             "entry each)", source)
    check_component_entries(config, overrides, source)


def check_file_sampler(config: Mapping[str, Any], source: str, allow: Sequence[str] = ()) -> None:
    """A file's ``sampler`` entry must be a registered sampler or an import path listed in ``allow`` (checked on the
    string, nothing imported): the one check of both loaders (:meth:`Pipeline.load`,
    ``ColdDiffusion.load_from_checkpoint``)."""
    sampler = config.get("sampler")
    if sampler is None:
        return
    try:
        check_sampler_name(sampler, "sampler", allow=allow)
    except ValueError as err:
        raise ModelFileError(str(err), source) from err


def _expected_shapes(network_config: Any, allow: Sequence[str]) -> dict[str, tuple[torch.dtype, torch.Size]] | None:
    """The network's state-dict entries (dtype, shape) built on the meta device: no memory is allocated, so a
    crafted config asking for a huge network costs nothing.  ``None`` if the network cannot be built there."""
    try:
        with torch.device("meta"):
            probe = build(network_config, "network", allow)
    except ValueError:
        raise
    except Exception:  # noqa: BLE001 - a network that cannot be built on the meta device is built for real
        return None
    return {k: (v.dtype, v.shape) for k, v in probe.state_dict().items()}


def check_state(group: str, state: Mapping[str, Tensor], expected: Mapping[str, tuple[torch.dtype, torch.Size]],
                source: str) -> None:
    """Refuse weights that do not fit the model in one line naming the file: missing or extra names, another
    shape, an integer tensor where the model holds floats, NaN or infinite values."""
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        def show(keys: list[str]) -> str:
            return f"{keys[:3]}{f' and {len(keys) - 3} more' if len(keys) > 3 else ''}"

        raise ValueError(f"{source!r}: the {group} weights do not match its config: missing {show(missing)}, "
                         f"unexpected {show(extra)}; the file is damaged or was written for another model")
    for key, (dtype, shape) in expected.items():
        tensor = state[key]
        if tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"{source!r}: {group}.{key} has shape {tuple(tensor.shape)} but the config's {group} "
                             f"needs {tuple(shape)}; the file is damaged or its config was edited")
        if dtype.is_floating_point and not tensor.is_floating_point():
            raise ValueError(f"{source!r}: {group}.{key} holds {tensor.dtype} values where the model needs floats; "
                             "the file is damaged or crafted")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{source!r}: {group}.{key} holds NaN or infinite values; the model file is corrupt or "
                             "was saved from a diverged run")


def check_network_weights(network_config: Any, state: Mapping[str, Tensor], source: str, allow: Sequence[str] = (),
                          prefixes: Sequence[str] = ("network",)) -> bool:
    """Check each ``prefix.*`` group of ``state`` against the network ``network_config`` describes, built on the meta
    device (nothing is allocated); returns ``False`` (nothing checked) when the config records no network or it
    cannot be built there."""
    expected = None if network_config is None else _expected_shapes(network_config, allow)
    for prefix in prefixes if expected is not None else ():
        group = {k.partition(".")[2]: v for k, v in state.items() if k.startswith(prefix + ".")}
        check_state(prefix, group, expected, source)
    return expected is not None


# ------------------------------------------------------------------------------------------------ building
def pipeline_kwargs(config: Mapping[str, Any], source: str, allow: Sequence[str] = (),
                    overrides: Mapping[str, Any] | None = None, checked: bool = False) -> dict[str, Any]:
    """A pipeline's constructor arguments from a model config (see :meth:`Pipeline.from_config`): its components
    built by :func:`colddiff._config.model_kwargs`, its settings as recorded (training-only entries left out), the
    former
    ``loss`` entry read as x0-prediction with that loss.  ``checked``: the config already went through
    :func:`check_model_file`, so it is not checked again."""
    overrides = dict(overrides or {})
    if not checked:
        check_model_config(config, source, overrides)
        if "sampler" not in overrides:
            check_file_sampler(config, source, allow)
    components = {name: config[name] for name in COMPONENTS if config.get(name) is not None}
    kwargs = model_kwargs(components, overrides, allow, source)  # the one builder of recorded components
    kwargs.update({name: config[name] for name in SETTINGS if name in config and name not in overrides})
    if "objective" not in overrides and config.get("loss") is not None:  # models from before the objective
        try:
            kwargs["objective"] = resolve_objective(kwargs.get("objective"), config["loss"], kwargs["degradation"])
        except ValueError as err:  # an objective and a loss: refused, as ColdDiffusion refuses them
            raise ModelFileError(str(err), source) from err
    return kwargs


def build_checked(cls: type[Pipeline], config: Mapping[str, Any], state: Mapping[str, Tensor], source: str,
                  allow: Sequence[str] = (), overrides: Mapping[str, Any] | None = None,
                  checked: bool | None = None) -> Pipeline:
    """Build the pipeline ``cls`` of a model file and load its weights (``network.*``, ``degradation.*``,
    ``prior.*``) strictly.  ``checked``: the result of :func:`check_model_file` when the file was already checked
    (``None``: it is checked here)."""
    overrides = dict(overrides or {})
    groups: dict[str, dict[str, Tensor]] = {prefix: {} for prefix in _GROUPS}
    for key, tensor in state.items():
        prefix, _, name = key.partition(".")
        if prefix not in groups:
            raise ValueError(f"{source!r}: unexpected tensor {key!r} (expected network.*, degradation.*, prior.*)")
        groups[prefix][name] = tensor
    if checked is None:
        checked = check_model_file(config, state, source, allow, overrides)
    kwargs = pipeline_kwargs(config, source, allow, overrides, checked=True)
    try:
        pipeline = cls(**kwargs)
    except (TypeError, ValueError) as err:  # a setting the pipeline refuses (image_size "big", a bad prior...)
        raise ModelFileError(" ".join(str(err).split()), source) from err
    for prefix in _GROUPS:
        module = getattr(pipeline, prefix)
        if module is None:
            if groups[prefix]:
                raise ValueError(f"{source!r}: the file has {prefix} tensors but its config has no {prefix}")
            continue
        if prefix == "network" and checked:  # already checked against the config, before it was built
            module.load_state_dict(groups[prefix])
            continue
        if prefix != "prior":  # the network's and the degradation's tensors are fixed by their configs
            check_state(prefix, groups[prefix], {k: (v.dtype, v.shape) for k, v in module.state_dict().items()},
                        source)
            module.load_state_dict(groups[prefix])
            continue
        try:  # a fitted prior's tensors depend on its data (KDE thumbnails): it validates its own state on load
            module.load_state_dict(groups[prefix])
        except (RuntimeError, ValueError) as err:
            raise ModelFileError(f"prior: {' '.join(str(err).split())}", source) from err
        for key, tensor in groups[prefix].items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"{source!r}: prior.{key} holds NaN or infinite values; the model file is corrupt")
    return pipeline


def load_pipeline(cls: type[Pipeline], path: str | os.PathLike, map_location: str | torch.device = "cpu",
                  allow: Sequence[str] = (), overrides: Mapping[str, Any] | None = None) -> Pipeline:
    """Read, check (once) and build the pipeline ``cls`` of an export or a training checkpoint, in eval mode on
    ``map_location`` (see :meth:`Pipeline.load`)."""
    file = read_model_file(path, allow, overrides)
    pipeline = build_checked(cls, file.config, file.state, file.source, allow, overrides, checked=file.checked)
    return pipeline.to(map_location).eval()


# ------------------------------------------------------------------------------------------------ writing
def model_config(pipeline: Pipeline) -> dict[str, Any]:
    """A pipeline as a JSON-ready model config: components as ``class_path``/``init_args``, plain settings."""
    config: dict[str, Any] = {name: describe_or_mark(getattr(pipeline, name)) if getattr(pipeline, name) is not None
                              else None for name in COMPONENTS}
    config.update({name: getattr(pipeline, name) for name in SETTINGS})
    return json.loads(json.dumps(config))


def inference_state(pipeline: Pipeline) -> dict[str, Tensor]:
    """The tensors of an export: ``network.*``, ``degradation.*``, ``prior.*`` (CPU, contiguous copies)."""
    state = {}
    for prefix in _GROUPS:
        module = getattr(pipeline, prefix)
        for key, tensor in (module.state_dict() if module is not None else {}).items():
            state[f"{prefix}.{key}"] = tensor.detach().cpu().contiguous().clone()
    return state


def write_export(pipeline: Pipeline, out_dir: str | os.PathLike) -> Path:
    """Write the export folder ``out_dir`` of a pipeline: ``model.safetensors`` and ``config.json``, each
    atomically.  Returns the folder."""
    config = model_config(pipeline)
    unrecorded = [name for name in COMPONENTS if isinstance(config[name], dict) and config[name].get(NOT_RECORDED)]
    if unrecorded:
        raise TypeError(f"cannot export: the {', '.join(unrecorded)} ({config[unrecorded[0]]['class_path']}) "
                        "does not record its init arguments, so the export could not rebuild it; build it from "
                        "colddiff's components or a class that mixes in colddiff._config.RecordsInit")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{WEIGHTS}.tmp"
    save_file(inference_state(pipeline), str(tmp), metadata={"format": "colddiff-export"})
    os.replace(tmp, out_dir / WEIGHTS)
    payload = {"format": "colddiff-export", "version": 2, "model": config}
    atomic_write_bytes(json.dumps(payload, indent=2).encode(), out_dir / CONFIG)
    return out_dir


def save_model_as(pipeline: Pipeline, source: str | os.PathLike, output: str | os.PathLike) -> Path:
    """Write ``pipeline`` (e.g. with a refitted prior) as a new model file like ``source``, leaving ``source``
    untouched: a training checkpoint ``source`` gives a copy of it whose prior tensors are the pipeline's (weights,
    optimiser and training state kept); an export ``source`` gives an export folder.  Written atomically.

    Raises:
        ValueError: ``output`` is ``source`` itself.
    """
    source, output = Path(source), Path(output)
    if output.resolve() == source.resolve():
        raise ValueError(f"refusing to overwrite the model file {str(source)!r}: give a new output path")
    if is_export(source):
        return write_export(pipeline, output)
    checkpoint = load_checkpoint(source)
    prior = pipeline.prior
    for key, value in (prior.state_dict() if prior is not None else {}).items():
        checkpoint["state_dict"][f"prior.{key}"] = value.detach().cpu()
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return atomic_write_bytes(buffer.getvalue(), output)
