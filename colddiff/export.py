"""Export a trained model (EMA weights to safetensors, plus its config) and load models for inference.

An export is a folder with ``model.safetensors`` (the EMA network's weights, the degradation's buffers and the
prior's fitted state) and ``config.json`` (the components as ``class_path``/``init_args``, the same description a
checkpoint carries).  Loading an export needs neither the training checkpoint nor pickle.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from colddiff._config import model_kwargs
from colddiff.io import atomic_write_bytes, load_checkpoint
from colddiff.module import ColdDiffusion

__all__ = ["export_model", "load_model", "load_export", "model_config", "save_model_as"]

WEIGHTS, CONFIG = "model.safetensors", "config.json"
_TRAINING_ONLY = ("optimizer", "lr_scheduler")


def model_config(model: ColdDiffusion) -> dict[str, Any]:
    """The model's config (components as ``class_path``/``init_args``) without training-only entries."""
    config = {k: v for k, v in dict(model.hparams).items() if not k.startswith("_") and k not in _TRAINING_ONLY}
    config["image_size"], config["channels"] = model.image_size, model.channels
    return json.loads(json.dumps(config, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if hasattr(value, "as_dict"):  # jsonargparse Namespace
        return value.as_dict()
    if isinstance(value, dict):
        return dict(value)
    raise TypeError(f"cannot write {type(value).__name__} to a JSON config")


def _inference_state(model: ColdDiffusion) -> dict[str, torch.Tensor]:
    state = {}
    for prefix, module in (("network", model.ema_network), ("degradation", model.degradation),
                           ("prior", model.prior)):
        if module is None:
            continue
        for key, tensor in module.state_dict().items():
            state[f"{prefix}.{key}"] = tensor.detach().cpu().contiguous().clone()
    return state


def export_model(model: ColdDiffusion, out_dir: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` (EMA weights, buffers, fitted prior) and ``config.json`` into ``out_dir``.

    Both files are written atomically.  Returns the folder.
    """
    out_dir = Path(out_dir)
    config = model_config(model)
    payload = {"format": "colddiff-export", "version": 1, "model": config}
    state = _inference_state(model)
    tmp = out_dir / f".{WEIGHTS}.tmp"
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(state, str(tmp), metadata={"format": "colddiff-export"})
    os.replace(tmp, out_dir / WEIGHTS)
    atomic_write_bytes(json.dumps(payload, indent=2).encode(), out_dir / CONFIG)
    return out_dir


def load_export(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> ColdDiffusion:
    """Load an export folder (or its ``model.safetensors``) into an inference-ready model (eval mode)."""
    path = Path(path)
    folder = path.parent if path.name == WEIGHTS else path
    if not (folder / WEIGHTS).is_file() or not (folder / CONFIG).is_file():
        raise FileNotFoundError(f"{str(folder)!r} is not a colddiff export: it needs {WEIGHTS} and {CONFIG}")
    try:
        payload = json.loads((folder / CONFIG).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(folder / CONFIG)!r} is not valid JSON: {err}") from err
    if payload.get("format") != "colddiff-export" or "model" not in payload:
        raise ValueError(f"{str(folder / CONFIG)!r} is not a colddiff export config")
    model = ColdDiffusion(**model_kwargs(payload["model"]))
    try:
        state = load_file(str(folder / WEIGHTS), device=str(map_location))
    except SafetensorError as err:
        raise ValueError(f"cannot read {str(folder / WEIGHTS)!r}: {err}") from err
    groups: dict[str, dict[str, torch.Tensor]] = {"network": {}, "degradation": {}, "prior": {}}
    for key, tensor in state.items():
        prefix, _, name = key.partition(".")
        if prefix not in groups:
            raise ValueError(f"unexpected tensor {key!r} in {str(folder / WEIGHTS)!r}")
        groups[prefix][name] = tensor
    model.network.load_state_dict(groups["network"])
    model.ema_network.load_state_dict(groups["network"])
    model.degradation.load_state_dict(groups["degradation"])
    if model.prior is not None:
        model.prior.load_state_dict(groups["prior"])
    elif groups["prior"]:
        raise ValueError("the export has prior tensors but its config has no prior")
    model.check_weights_finite(folder)
    return model.to(map_location).eval()


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu", **overrides: Any) -> ColdDiffusion:
    """Load a model for inference from a Lightning checkpoint (``.ckpt``) or an export folder.

    Checkpoints are read with ``weights_only=True`` and their configs build only allowed classes (see
    :meth:`ColdDiffusion.load_from_checkpoint`); ``overrides`` replace components that the checkpoint could not
    record.  The model is returned in eval mode.
    """
    path = Path(path)
    if path.is_dir() or path.name == WEIGHTS:
        return load_export(path, map_location)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    return ColdDiffusion.load_from_checkpoint(path, map_location=map_location, **overrides).eval()


def save_model_as(model: ColdDiffusion, source: str | os.PathLike, output: str | os.PathLike) -> Path:
    """Write ``model`` (e.g. with a refitted prior) as a new model file, leaving ``source`` untouched.

    A training checkpoint ``source`` gives a checkpoint: a copy of ``source`` whose prior tensors are the model's
    (weights, optimiser and training state are kept); an export ``source`` gives an export folder.  The file is
    written atomically.

    Raises:
        ValueError: ``output`` is ``source`` itself.
    """
    source, output = Path(source), Path(output)
    if output.resolve() == source.resolve():
        raise ValueError(f"refusing to overwrite the model file {str(source)!r}: give a new output path")
    if source.is_dir() or source.name == WEIGHTS:
        return export_model(model, output)
    checkpoint = load_checkpoint(source)
    for key, value in (model.prior.state_dict() if model.prior is not None else {}).items():
        checkpoint["state_dict"][f"prior.{key}"] = value.detach().cpu()
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return atomic_write_bytes(buffer.getvalue(), output)
