"""Safe checkpoint files: atomic writes and ``weights_only`` loads.

* :class:`AtomicCheckpointIO` (a Lightning ``CheckpointIO`` plugin, on by default in ``train.py``) writes a
  checkpoint to a temporary file in the same folder, flushes it to disk and renames it over the target, so a crash
  while saving leaves the previous file intact; loads always use ``torch.load(weights_only=True)``.
* :func:`load_checkpoint` is the one function colddiff uses to read checkpoint files; it refuses pickles that need
  arbitrary code with a clear error.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

__all__ = ["AtomicCheckpointIO", "UnsafeCheckpointError", "atomic_write_bytes", "load_checkpoint",
           "unsafe_checkpoint_error"]


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint file holds objects that ``weights_only=True`` loading refuses (possibly code to execute)."""


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    """Write ``data`` to ``path`` atomically: temporary file in the same folder, fsync, rename, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:
        folder = os.open(path.parent, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders
        return path
    try:
        os.fsync(folder)
    except OSError:
        pass
    finally:
        os.close(folder)
    return path


def unsafe_checkpoint_error(path: str | os.PathLike, err: Exception) -> UnsafeCheckpointError:
    """The error for a file that ``weights_only`` loading rejected."""
    detail = " ".join(line.strip() for line in str(err).splitlines() if "Unsupported" in line) or \
        (str(err).splitlines() or [type(err).__name__])[0]
    return UnsafeCheckpointError(
        f"refusing to load {str(path)!r}: safe loading (weights_only=True) rejected it ({detail}). The file is "
        "corrupt, not a PyTorch checkpoint, or holds objects that could execute arbitrary code; colddiff never "
        "unpickles such files."
    )


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with clear errors for a missing, truncated or unsafe file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise unsafe_checkpoint_error(path, err) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"cannot read checkpoint {str(path)!r}: the file is truncated or not a checkpoint ({err})") \
            from err


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
