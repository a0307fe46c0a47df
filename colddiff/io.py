"""File input and output that every part of colddiff shares (torch only, no Lightning).

* :func:`atomic_write_bytes`: write a file through a temporary file, ``fsync`` and a rename, so that a crash leaves
  either the old file or the new one, never half of one.
* :func:`save_png_atomic`, :func:`restoration_grid`: PNG grids of ``[0, 1]`` images, written atomically;
  :func:`save_image_atomic`: one image as a PNG with its own channels (grayscale stays grayscale).
* :func:`load_checkpoint`: the one way colddiff reads a checkpoint file: ``torch.load(weights_only=True)`` with clear
  errors for a missing, truncated or unsafe file (:class:`UnsafeCheckpointError`).
* :func:`read_image`: the one way colddiff reads an image file: a float tensor ``(C, H, W)`` in ``[0, 1]`` whatever
  the bit depth (8-bit, 16-bit, float), with a configurable pixel limit, an explicit policy for alpha and for
  grayscale/RGB conversion, and errors (:class:`ImageReadError`) that name the file.
"""

from __future__ import annotations

import io
import numbers
import os
import pickle
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from torchvision.utils import make_grid, save_image

__all__ = ["atomic_write_bytes", "save_png_atomic", "save_image_atomic", "restoration_grid", "load_checkpoint",
           "UnsafeCheckpointError", "unsafe_checkpoint_error", "read_image", "image_to_tensor", "match_channels",
           "ImageReadError", "DEFAULT_MAX_PIXELS"]


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


def save_image_atomic(image: Tensor, path: str | os.PathLike) -> Path:
    """Save one ``[0, 1]`` image as an 8-bit PNG with its own channels (a 1-channel image as a grayscale PNG, not
    RGB), via a temporary file and a rename.  Pixels are ``floor(255 x + 0.5)``, as in :func:`save_png_atomic`.

    Shape:
        ``image``: ``(C, H, W)`` or ``(1, C, H, W)``, ``C`` 1 or 3.
    """
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"save_image_atomic: expected an image (C, H, W) with 1 or 3 channels, got "
                         f"{tuple(image.shape)}")
    pixels = image.detach().float().cpu().clamp(0, 1).mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)
    array = pixels.permute(1, 2, 0).numpy()
    picture = Image.fromarray(array[..., 0], "L") if array.shape[-1] == 1 else Image.fromarray(array, "RGB")
    buffer = io.BytesIO()
    picture.save(buffer, format="png")
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



# ------------------------------------------------------------------------------------------------ image files
#: Default pixel limit of :func:`read_image` (width x height): Pillow's own warning threshold, about 89.5 megapixels
#: (an RGB image of that size is about 1 GB as float32).  Pass ``max_pixels`` to change it, ``None`` for no limit.
DEFAULT_MAX_PIXELS = 89_478_485

_GRAY_MODES = ("1", "L", "I", "F", "I;16", "I;16B", "I;16L", "I;16N")
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
_COLOUR_SPACES = ("CMYK", "YCbCr", "LAB", "HSV")  # read through Pillow's conversion to RGB
_PIL_LIMIT_LOCK = threading.Lock()


class ImageReadError(ValueError):
    """An image file (or image) that colddiff cannot read as ``[0, 1]`` intensities; the message names it.

    Attributes:
        path: the file (or the name given to :func:`image_to_tensor`).
        reason: what is wrong, without the file name.
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image file {self.path!r}: {reason}")


def _check_channels_arg(channels: Any) -> int | None:
    if channels is None:
        return None
    if isinstance(channels, bool) or not isinstance(channels, numbers.Integral) or channels not in (1, 3):
        raise ValueError(f"channels must be None (the file's own), 1 (grayscale) or 3 (RGB), got {channels!r}")
    return int(channels)


def _check_background(alpha_background: Any) -> float | None:
    if alpha_background is None:
        return None
    if isinstance(alpha_background, bool) or not isinstance(alpha_background, numbers.Real) \
            or not 0.0 <= float(alpha_background) <= 1.0:
        raise ValueError(f"alpha_background must be None (refuse transparency) or a grey level in [0, 1], "
                         f"got {alpha_background!r}")
    return float(alpha_background)


def match_channels(x: Tensor, channels: int) -> Tensor:
    """Convert a grayscale image to RGB (the grey channel replicated) or an RGB image to grayscale (ITU-R 601-2
    luma, ``0.2989 R + 0.587 G + 0.114 B``); images that already have ``channels`` channels are returned as they are.

    Shape:
        ``x``: ``(C, H, W)`` or ``(B, C, H, W)`` with ``C`` 1 or 3; output: the same with ``channels`` channels.
    """
    channels = _check_channels_arg(channels)
    if channels is None:
        raise ValueError("match_channels needs a channel count, 1 or 3")
    if not isinstance(x, Tensor) or x.ndim not in (3, 4):
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"match_channels: expected an image (C, H, W) or a batch (B, C, H, W), got {got}")
    axis = x.ndim - 3
    have = x.shape[axis]
    if have == channels:
        return x
    if have == 1 and channels == 3:
        return x.repeat_interleave(3, dim=axis)
    if have == 3 and channels == 1:
        shape = [1] * x.ndim
        shape[axis] = 3
        weights = torch.tensor((0.2989, 0.587, 0.114), dtype=x.dtype if x.is_floating_point() else torch.float32,
                               device=x.device).view(shape)
        return (x * weights).sum(dim=axis, keepdim=True)
    raise ValueError(f"match_channels: can convert between 1 and 3 channels, got {have} channels to {channels}")


def _describe(channels: int) -> str:
    return "grayscale (1 channel)" if channels == 1 else "RGB (3 channels)"


def _intensities(image: Image.Image, name: str) -> tuple[np.ndarray, str]:
    """The pixel values of ``image`` scaled to ``[0, 1]`` as float32 ``(H, W, C)``, and how they were scaled."""
    mode = image.mode
    array = np.asarray(image)
    if mode == "1":
        return array.astype(np.float32)[..., None], "1-bit"
    if mode in ("L", "LA", "RGB", "RGBA"):
        array = array.astype(np.float32) / 255.0
        return (array[..., None] if array.ndim == 2 else array), "8-bit, / 255"
    if mode in _SIXTEEN_BIT:
        return (array.astype(np.float32) / 65535.0)[..., None], "16-bit, / 65535"
    if mode == "I":  # 32-bit integer pixels: Pillow's mode for 16-bit data of some PNG/TIFF files
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 65535:
            raise ImageReadError(name, f"32-bit integer pixels with values in [{low}, {high}]; colddiff reads integer "
                                       "images of up to 16 bits (values in [0, 65535]) and does not guess a scaling")
        return (array.astype(np.float64) / 65535.0).astype(np.float32)[..., None], "integer pixels (16-bit), / 65535"
    if mode == "F":
        values = array.astype(np.float32)
        if not np.isfinite(values).all():
            raise ImageReadError(name, "floating-point pixels that are not all finite (NaN or infinity)")
        low, high = float(values.min()), float(values.max())
        if low < 0.0 or high > 1.0:
            raise ImageReadError(name, f"floating-point pixels with values in [{low:.6g}, {high:.6g}]; colddiff reads "
                                       "float images as intensities in [0, 1] and does not guess a scaling: rescale "
                                       "the file to [0, 1]")
        return values[..., None], "float, as stored"
    raise ImageReadError(name, f"unsupported image mode {mode!r}")


def image_to_tensor(
    image: Image.Image,
    channels: int | None = None,
    *,
    convert_channels: bool = False,
    alpha_background: float | None = None,
    name: str = "<image>",
) -> Tensor:
    """A decoded PIL image as a float tensor in ``[0, 1]`` (see :func:`read_image` for the rules).

    Args:
        image: a PIL image (any mode Pillow decodes).
        channels, convert_channels, alpha_background: as in :func:`read_image`.
        name: how errors name the image (the file path in :func:`read_image`).

    Shape:
        output: ``(C, H, W)`` float32, ``C`` = ``channels`` or the image's own (1 or 3).
    """
    channels = _check_channels_arg(channels)
    background = _check_background(alpha_background)
    if not isinstance(image, Image.Image):
        raise TypeError(f"image_to_tensor expects a PIL image, got {type(image).__name__}")
    palette = image.mode in ("P", "PA")
    if palette:
        image = image.convert("RGBA" if image.mode == "PA" or image.has_transparency_data else "RGB")
    elif image.mode in ("La", "RGBa"):  # premultiplied alpha
        image = image.convert(image.mode.upper())
    elif image.mode in ("L", "RGB") and image.has_transparency_data:  # a tRNS colour key: transparency
        image = image.convert(image.mode + "A")
    elif image.mode in _COLOUR_SPACES:
        image = image.convert("RGB")
    elif image.mode in _GRAY_MODES and image.has_transparency_data:
        raise ImageReadError(name, f"a transparent colour in a {image.mode!r} image is not supported; save it "
                                   "without transparency")
    array, _ = _intensities(image, name)
    if image.mode in ("LA", "RGBA"):
        colour, alpha = array[..., :-1], array[..., -1:]
        if (alpha < 1.0).any():
            if background is None:
                transparent = int((alpha < 1.0).sum())
                raise ImageReadError(
                    name, f"it has an alpha channel with {transparent} of {alpha.size} pixels not fully opaque; "
                          "colddiff does not guess what lies behind transparent pixels: flatten the image onto a "
                          "background first, or pass alpha_background=<grey level in [0, 1]> to composite onto it")
            colour = alpha * colour + (1.0 - alpha) * np.float32(background)
        array = colour  # a fully opaque alpha carries no information
    x = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
    if palette and x.shape[0] == 3 and bool((x[0] == x[1]).all() and (x[1] == x[2]).all()):
        x = x[:1]  # a palette image whose colours are all grey is a grayscale image
    if channels is not None and x.shape[0] != channels:
        if not convert_channels:
            raise ImageReadError(
                name, f"the image is {_describe(x.shape[0])} but {_describe(channels)} are expected; colddiff never "
                      "converts silently: pass convert_channels=True to convert (grey replicated to RGB, RGB to "
                      "ITU-R 601-2 luma), or use a model with the image's channels")
        x = match_channels(x, channels)
    return x.clamp_(0.0, 1.0)


def _open_image(path: Path, max_pixels: int | None) -> Image.Image:
    """Open and decode ``path`` with ``max_pixels`` (width x height) as the limit instead of Pillow's global one."""
    pil_limit = Image.MAX_IMAGE_PIXELS
    raise_limit = max_pixels is None or (pil_limit is not None and max_pixels > pil_limit)

    def decode() -> Image.Image:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is checked below
            image = Image.open(path)
            try:
                width, height = image.size
                if max_pixels is not None and width * height > max_pixels:
                    raise ImageReadError(path, _too_large(width, height, max_pixels))
                frames = getattr(image, "n_frames", 1)
                if frames > 1 and image.format != "MPO":  # MPO: a JPEG whose extra pictures are previews
                    raise ImageReadError(path, f"it holds {frames} frames ({image.format}: an animated image or a "
                                               "multi-page file), and colddiff reads single images, never only the "
                                               "first frame without a word: save each frame as its own file")
                image.load()
            except BaseException:
                image.close()
                raise
            return image

    try:
        if not raise_limit:  # Pillow's own check is at least as strict as ours: no global state touched
            return decode()
        with _PIL_LIMIT_LOCK:  # a larger limit than Pillow's: lift Pillow's global for this read only
            Image.MAX_IMAGE_PIXELS = max_pixels
            try:
                return decode()
            finally:
                Image.MAX_IMAGE_PIXELS = pil_limit
    except Image.DecompressionBombError as err:
        limit = max_pixels if max_pixels is not None else pil_limit
        raise ImageReadError(path, f"{_too_large(None, None, limit)} ({err})") from err


def _too_large(width: int | None, height: int | None, limit: int) -> str:
    size = f"{width}x{height} = {width * height} pixels, " if width is not None else ""
    return (f"the image is too large ({size}over the limit of {limit} pixels); raise the limit with "
            "max_pixels=<pixels> (None: no limit) if the file is trusted")


def read_image(
    path: str | os.PathLike,
    channels: int | None = None,
    *,
    convert_channels: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    alpha_background: float | None = None,
) -> Tensor:
    """Read an image file as a float tensor of intensities in ``[0, 1]``.

    Values are scaled by the file's own bit depth, never clipped: 1-bit and 8-bit pixels ``/ 255`` (1-bit: 0 or 1),
    16-bit pixels ``/ 65535`` (Pillow modes ``I;16*``; mode ``I`` 32-bit integers are read as 16-bit data when they
    lie in ``[0, 65535]`` and refused otherwise), floating-point pixels (mode ``F``) as stored when they lie in
    ``[0, 1]`` and refused, with the range found, otherwise.  Palette images are RGB, or grayscale when every colour
    is grey; CMYK, YCbCr, LAB and HSV images go through Pillow's conversion to RGB; an EXIF orientation is applied.
    (Pillow stores 16-bit RGB PNGs as 8-bit RGB: those are read at 8 bits.)  Files of several frames (animated
    GIF, PNG or WebP, multi-page TIFF) are refused: nothing would say which frame was read.

    Transparency (an alpha channel, a palette or colour-key transparency): a fully opaque alpha is dropped (it
    carries no information); otherwise the image is refused, unless ``alpha_background`` names a grey level to
    composite onto (``alpha * colour + (1 - alpha) * background``).

    Channels: ``channels=None`` keeps the file's own (1 for grayscale, 3 for colour).  Otherwise the image must have
    that many channels: a grayscale file for an RGB model or the reverse is an error, unless the caller asks for the
    conversion with ``convert_channels=True`` (grey replicated to RGB; RGB to ITU-R 601-2 luma).

    Args:
        path: the image file.
        channels: the channel count expected, 1 or 3, or ``None`` for the file's own.
        convert_channels: convert between grayscale and RGB instead of refusing.
        max_pixels: refuse images with more than this many pixels (width x height) before decoding them
            (decompression bombs); default :data:`DEFAULT_MAX_PIXELS`, ``None`` for no limit.  This replaces
            Pillow's global ``Image.MAX_IMAGE_PIXELS`` for this read.
        alpha_background: grey level in ``[0, 1]`` to composite transparent pixels onto, or ``None`` to refuse
            images that are not fully opaque.

    Returns:
        The image, float32.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ImageReadError: (a ``ValueError`` naming the file) the file does not decode, is too large, holds several
            frames, holds values it cannot scale to ``[0, 1]``, has transparent pixels, or has the wrong channels.

    Shape:
        output: ``(C, H, W)``, ``C`` = ``channels`` or the file's own (1 or 3).
    """
    path = Path(path)
    channels = _check_channels_arg(channels)
    _check_background(alpha_background)
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, numbers.Integral)
                                   or max_pixels <= 0):
        raise ValueError(f"max_pixels must be a positive int or None (no limit), got {max_pixels!r}")
    if not path.is_file():
        raise FileNotFoundError(f"image file {str(path)!r} does not exist or is not a file")
    try:
        image = _open_image(path, max_pixels)
    except ImageReadError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError) as err:
        raise ImageReadError(path, str(err) or type(err).__name__) from err
    with image:
        try:
            if image.getexif().get(0x0112, 1) != 1:  # EXIF orientation
                image = ImageOps.exif_transpose(image)
        except (OSError, ValueError, SyntaxError) as err:
            raise ImageReadError(path, f"unreadable EXIF data ({err})") from err
        return image_to_tensor(image, channels, convert_channels=convert_channels,
                               alpha_background=alpha_background, name=str(path))
