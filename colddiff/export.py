"""Export a trained model (EMA weights to safetensors, plus its config) and load models for inference: the
user-facing names of :mod:`colddiff.files`, which reads, checks and writes model files, over either a
:class:`~colddiff.pipeline.Pipeline` or a training module.

An export is a folder with ``model.safetensors`` (the EMA network's weights, the degradation's buffers and the
prior's fitted state) and ``config.json`` (the components as ``class_path``/``init_args``, the same description a
checkpoint carries).  Loading an export needs neither the training checkpoint nor pickle.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from colddiff import files
from colddiff.files import CONFIG, WEIGHTS, is_export
from colddiff.pipeline import Pipeline, as_pipeline

__all__ = ["export_model", "load_model", "load_export", "model_config", "save_model_as", "as_pipeline"]


def model_config(model: Any) -> dict[str, Any]:
    """The model's inference config (components as ``class_path``/``init_args``, sampler defaults)."""
    return files.model_config(as_pipeline(model))


def export_model(model: Any, out_dir: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` (the EMA weights once, the degradation's buffers, the fitted prior) and
    ``config.json`` into ``out_dir``, each atomically; ``model`` is a pipeline or a training module.

    Returns the folder.
    """
    return files.write_export(as_pipeline(model), out_dir)


def load_export(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Pipeline:
    """Load an export folder (or its ``model.safetensors``) as an inference pipeline (eval mode)."""
    path = Path(path)
    if not is_export(path):
        raise FileNotFoundError(f"{str(path)!r} is not a colddiff export folder: it needs {WEIGHTS} and {CONFIG}")
    return Pipeline.load(path, map_location)


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu", allow: Sequence[str] = (),
               **overrides: Any) -> Pipeline:
    """Load an inference pipeline from a Lightning checkpoint (``.ckpt``: its EMA weights) or an export folder.

    Checkpoints are read with ``weights_only=True``, their configs build only allowed classes (colddiff's or
    ``allow``), and the weights are checked against the config before anything large is allocated (see
    :meth:`colddiff.pipeline.Pipeline.load`); ``overrides`` replace components that the file could not record.
    The pipeline is returned in eval mode.
    """
    return Pipeline.load(path, map_location, allow, **overrides)


def save_model_as(model: Any, source: str | os.PathLike, output: str | os.PathLike) -> Path:
    """Write ``model`` (e.g. with a refitted prior) as a new model file, leaving ``source`` untouched.

    A training checkpoint ``source`` gives a checkpoint: a copy of ``source`` whose prior tensors are the model's
    (weights, optimiser and training state are kept); an export ``source`` gives an export folder.  The file is
    written atomically (:func:`colddiff.files.save_model_as`).

    Raises:
        ValueError: ``output`` is ``source`` itself.
    """
    return files.save_model_as(as_pipeline(model), source, output)
