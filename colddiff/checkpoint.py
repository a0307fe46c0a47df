"""Training checkpoints with Lightning: atomic writes, ``weights_only`` loads, and the random states.

* :class:`AtomicCheckpointIO` (a Lightning ``CheckpointIO`` plugin, on by default in ``train.py``) writes a
  checkpoint to a temporary file in the same folder, flushes it to disk and renames it over the target, so a crash
  while saving leaves the previous file intact; loads always go through :func:`colddiff.io.load_checkpoint`
  (``torch.load(weights_only=True)``).
* :class:`RNGState` saves and restores the random number generators' states with every checkpoint.

The file functions themselves (atomic writes, safe loads) are torch-only and live in :mod:`colddiff.io`.
"""

from __future__ import annotations

import io
import os
import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from colddiff.io import UnsafeCheckpointError, atomic_write_bytes, load_checkpoint

__all__ = ["AtomicCheckpointIO", "RNGState"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O with atomic local writes and safe (``weights_only``) loads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO does not take storage_options, got {storage_options!r}")
        if "://" in str(path):  # remote file systems: Lightning's own (transactional) writer
            return super().save_checkpoint(checkpoint, path)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(buffer.getvalue(), path)

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        if weights_only is False:
            raise UnsafeCheckpointError("colddiff loads checkpoints with weights_only=True only")
        return load_checkpoint(path, map_location if map_location is not None else "cpu")


class RNGState(L.Callback):
    """Saves the random number generators' states (torch, CUDA, NumPy, Python) in checkpoints and restores them when
    training resumes from one, so a resumed run draws the same levels, params and batches as an uninterrupted one.

    The states are those at the moment of saving and are restored just before the first resumed step.  They are
    stored as tensors and plain Python values (loadable with ``weights_only=True``).  The Lightning
    module adds this callback itself (``ColdDiffusion.configure_callbacks``).
    """

    def state_dict(self) -> dict[str, Any]:
        kind, keys, position, has_gauss, cached = np.random.get_state()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": random.getstate(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # applied when training starts, after Lightning has set up the run (which may draw random numbers)
        self._pending = state_dict

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._pending is not None:
            state, self._pending = self._pending, None
            self._restore(state)

    @staticmethod
    def _restore(state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        numpy_state = state_dict["numpy"]
        np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32),
                             numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
        python_state = state_dict["python"]
        random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
        if "cuda" in state_dict and torch.cuda.is_available():
            cuda_states = state_dict["cuda"]
            if len(cuda_states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda_states)


def apply_resume_changes(module: Any, checkpoint: dict[str, Any], changed: set[str]) -> None:
    """On a resume that changed the model config (``train.py --resume_with_config_changes true``), the new config is
    the one used: the changed parts' buffers (degradation schedules, the prior's fit) and the optimiser's settings
    replace the checkpoint's, in ``checkpoint`` before Lightning restores it; a changed prior is refitted when
    training starts."""
    state = checkpoint.get("state_dict", {})
    for group in ("degradation", "prior"):
        if group not in changed:
            continue
        for key in [k for k in state if k.startswith(f"{group}.")]:
            del state[key]
        part = getattr(module, group)
        for key, value in (part.state_dict() if part is not None else {}).items():
            state[f"{group}.{key}"] = value.detach().clone()
    if "optimizer" in changed and checkpoint.get("optimizer_states"):
        fresh = module.optimizer_factory(module.network.parameters()).param_groups
        for saved_group, new_group in zip(checkpoint["optimizer_states"][0]["param_groups"], fresh):
            saved_group.update({k: v for k, v in new_group.items() if k != "params"})
