"""File input and output that every part of colddiff shares (torch only, no Lightning).

* :func:`atomic_write_bytes`: write a file through a temporary file, ``fsync`` and a rename, so that a crash leaves
  either the old file or the new one, never half of one.
* :func:`save_png_atomic`, :func:`restoration_grid`: PNG grids of ``[0, 1]`` images, written atomically.
* :func:`load_checkpoint`: the one way colddiff reads a checkpoint file: ``torch.load(weights_only=True)`` with clear
  errors for a missing, truncated or unsafe file (:class:`UnsafeCheckpointError`).
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.utils import make_grid, save_image

__all__ = ["atomic_write_bytes", "save_png_atomic", "restoration_grid", "load_checkpoint", "UnsafeCheckpointError",
           "unsafe_checkpoint_error"]


# ---------------------------------------------------------------------------------------------- atomic files
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


# ------------------------------------------------------------------------------------------------ image grids
def save_png_atomic(images: Tensor, path: str | os.PathLike, nrow: int, padding: int = 2, scale: int = 1) -> Path:
    """Save a grid of ``[0, 1]`` images as a PNG via a temporary file and a rename (never half-written).

    ``scale`` enlarges every image by nearest-neighbour upsampling first (small images are easier to see).

    Shape:
        ``images``: ``(N, C, H, W)``, ``C`` 1 or 3; the grid has ``nrow`` images per row.
    """
    images = images.detach().float().clamp(0, 1).cpu()
    if scale != 1:
        images = torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest")
    grid = make_grid(images, nrow=nrow, padding=padding, pad_value=1.0)
    buffer = io.BytesIO()
    save_image(grid, buffer, format="png")
    return atomic_write_bytes(buffer.getvalue(), path)


def restoration_grid(columns: list[Tensor]) -> Tensor:
    """Interleave equally sized batches into rows: row ``i`` shows image ``i`` of every column.

    Shape:
        ``columns``: ``k`` tensors ``(N, C, H, W)``; output: ``(N * k, C, H, W)`` (for ``make_grid(nrow=k)``).
    """
    return torch.stack(columns, dim=1).flatten(0, 1)


# ------------------------------------------------------------------------------------------------ checkpoints
class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint file holds objects that ``weights_only=True`` loading refuses (possibly code to execute)."""


def unsafe_checkpoint_error(path: str | os.PathLike, err: Exception) -> UnsafeCheckpointError:
    """The error for a file that ``weights_only`` loading rejected."""
    detail = " ".join(line.strip() for line in str(err).splitlines() if "Unsupported" in line) or \
        (str(err).splitlines() or [type(err).__name__])[0]
    return UnsafeCheckpointError(
        f"refusing to load {str(path)!r}: safe loading (weights_only=True) rejected it ({detail}). The file is "
        "corrupt, not a PyTorch checkpoint, or holds objects that could execute arbitrary code; colddiff never "
        "unpickles such files."
    )


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with clear errors for a missing, empty, truncated, foreign or unsafe
    file.  ``mmap=True`` maps tensor data instead of reading it (cheap when only the metadata is needed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist or is not a file")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"cannot read checkpoint {str(path)!r}: the file is empty (0 bytes)")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if not head.startswith(b"PK\x03\x04") and not head.startswith(b"\x80"):  # zip (torch.save) or legacy pickle
        raise ValueError(f"cannot read checkpoint {str(path)!r}: it is not a PyTorch checkpoint (a checkpoint is a "
                         f"zip archive written by torch.save; this file starts with {head!r})")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap and head.startswith(b"PK"))
    except pickle.UnpicklingError as err:
        raise unsafe_checkpoint_error(path, err) from err
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError, EOFError, KeyError ... for broken files
        detail = (str(err).splitlines() or [""])[0][:200]
        raise ValueError(f"cannot read checkpoint {str(path)!r} ({size} bytes): the file is truncated or not a "
                         f"checkpoint ({type(err).__name__}: {detail})") from err
