"""Reading image files: bit depths scaled to [0, 1] (never clipped), alpha, palettes, channels, the pixel limit."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from colddiff.datasets import ImageFolder, ImageTransform
from colddiff.io import DEFAULT_MAX_PIXELS, ImageReadError, image_to_tensor, match_channels, read_image


def _ramp(height: int = 12, width: int = 16) -> np.ndarray:
    """Values in [0, 1] with a mean that is not 0.5 (so a wrong scaling shows)."""
    y, x = np.mgrid[0:height, 0:width]
    return (0.3 + 0.35 * np.sin(x / 3.0) * np.cos(y / 4.0) + 0.2 * x / width).clip(0, 1)


def _save(array: np.ndarray, path, mode: str | None = None) -> None:
    image = Image.fromarray(array)
    if mode is not None:
        image = image.convert(mode)
    image.save(path)


def test_16bit_png_is_scaled_by_65535_not_clipped(tmp_path):
    values = np.round(_ramp() * 65535).astype(np.uint16)
    path = tmp_path / "deep.png"
    _save(values, path)
    assert Image.open(path).mode == "I;16"
    x = read_image(path)
    assert x.shape == (1, 12, 16) and x.dtype == torch.float32
    torch.testing.assert_close(x[0], torch.from_numpy(values.astype(np.float32) / 65535), atol=1e-7, rtol=0)
    assert abs(float(x.mean()) - values.mean() / 65535) < 1e-6 and 0.3 < float(x.mean()) < 0.7
    # Pillow's own conversion clips 16-bit values at 255: the mean is then close to 1
    assert np.asarray(Image.open(path).convert("L")).mean() / 255 > 0.9


def test_float_tiff_is_read_as_stored_and_out_of_range_refused(tmp_path):
    values = _ramp().astype(np.float32)
    path = tmp_path / "float.tif"
    _save(values, path)
    assert Image.open(path).mode == "F"
    torch.testing.assert_close(read_image(path)[0], torch.from_numpy(values))
    wide = values.copy()
    wide[0, :2] = (-1.0, 3.0)
    _save(wide, tmp_path / "wide.tif")
    with pytest.raises(ImageReadError, match=r"wide\.tif.*floating-point pixels with values in \[-1, 3\]"):
        read_image(tmp_path / "wide.tif")


def test_32bit_integer_pixels_beyond_16_bits_are_refused(tmp_path):
    _save((np.arange(12 * 16).reshape(12, 16) * 1000).astype(np.int32), tmp_path / "int.tif")
    with pytest.raises(ImageReadError, match=r"int\.tif.*values in \[0, 191000\]"):
        read_image(tmp_path / "int.tif")
    _save((_ramp() * 65535).astype(np.int32), tmp_path / "int16.tif")  # 16-bit data in a 32-bit mode
    assert Image.open(tmp_path / "int16.tif").mode == "I"
    assert abs(float(read_image(tmp_path / "int16.tif").mean()) - _ramp().mean()) < 1e-4


def test_8bit_and_1bit_values(tmp_path):
    gray = np.round(_ramp() * 255).astype(np.uint8)
    _save(gray, tmp_path / "gray.png")
    torch.testing.assert_close(read_image(tmp_path / "gray.png")[0], torch.from_numpy(gray / np.float32(255)))
    rgb = np.stack([gray, 255 - gray, gray // 2], axis=-1)
    _save(rgb, tmp_path / "rgb.png")
    expected = torch.from_numpy(rgb / np.float32(255)).permute(2, 0, 1)
    torch.testing.assert_close(read_image(tmp_path / "rgb.png"), expected)
    Image.fromarray(gray > 128).save(tmp_path / "bits.png")
    assert Image.open(tmp_path / "bits.png").mode == "1"
    assert torch.equal(read_image(tmp_path / "bits.png")[0], torch.from_numpy((gray > 128).astype(np.float32)))


def test_transparent_images_are_refused_unless_a_background_is_given(tmp_path):
    rgb = np.round(_ramp()[..., None] * np.array([255, 128, 64])).astype(np.uint8)
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:3, :4] = 0
    _save(np.concatenate([rgb, alpha[..., None]], axis=-1), tmp_path / "holes.png")
    with pytest.raises(ImageReadError, match=r"holes\.png.*alpha channel with 12 of 192 pixels not fully opaque"):
        read_image(tmp_path / "holes.png")
    composited = read_image(tmp_path / "holes.png", alpha_background=0.25)
    assert composited.shape == (3, 12, 16)
    assert torch.equal(composited[:, :3, :4], torch.full((3, 3, 4), 0.25))
    torch.testing.assert_close(composited[:, 5:], torch.from_numpy(rgb[5:] / np.float32(255)).permute(2, 0, 1))
    # a fully opaque alpha carries nothing: dropped
    _save(np.concatenate([rgb, np.full_like(alpha, 255)[..., None]], axis=-1), tmp_path / "opaque.png")
    torch.testing.assert_close(read_image(tmp_path / "opaque.png"),
                               torch.from_numpy(rgb / np.float32(255)).permute(2, 0, 1))
    # gray + alpha
    gray = rgb[..., 0]
    _save(np.stack([gray, alpha], axis=-1), tmp_path / "la.png")
    assert Image.open(tmp_path / "la.png").mode == "LA"
    with pytest.raises(ImageReadError, match=r"la\.png.*not fully opaque"):
        read_image(tmp_path / "la.png")
    assert read_image(tmp_path / "la.png", alpha_background=1.0).shape == (1, 12, 16)
    with pytest.raises(ValueError, match=r"alpha_background must be None .* in \[0, 1\], got 2"):
        read_image(tmp_path / "la.png", alpha_background=2)


def test_palette_images(tmp_path):
    rgb = np.round(_ramp()[..., None] * np.array([255, 128, 64])).astype(np.uint8)
    colour = Image.fromarray(rgb).convert("P")
    colour.save(tmp_path / "colour.png")
    expected = np.asarray(colour.convert("RGB")) / np.float32(255)
    torch.testing.assert_close(read_image(tmp_path / "colour.png"), torch.from_numpy(expected).permute(2, 0, 1))
    gray = np.round(_ramp() * 255).astype(np.uint8)
    Image.fromarray(gray).convert("P").save(tmp_path / "gray.gif")
    x = read_image(tmp_path / "gray.gif")
    assert x.shape == (1, 12, 16)  # every palette colour is grey: a grayscale image
    torch.testing.assert_close(x[0], torch.from_numpy(gray / np.float32(255)))
    transparent = colour.copy()
    transparent.info["transparency"] = int(np.asarray(colour)[0, 0])  # a palette index that is used
    transparent.save(tmp_path / "transparent.png")
    with pytest.raises(ImageReadError, match=r"transparent\.png.*not fully opaque"):
        read_image(tmp_path / "transparent.png")


def test_channel_mismatch_is_an_error_unless_conversion_is_asked_for(tmp_path):
    gray = np.round(_ramp() * 255).astype(np.uint8)
    _save(gray, tmp_path / "gray.png")
    rgb = np.stack([gray, 255 - gray, gray // 2], axis=-1)
    _save(rgb, tmp_path / "rgb.png")
    with pytest.raises(ImageReadError, match=r"gray\.png.*grayscale \(1 channel\) but RGB \(3 channels\) are expected"):
        read_image(tmp_path / "gray.png", channels=3)
    with pytest.raises(ImageReadError, match=r"rgb\.png.*RGB \(3 channels\) but grayscale \(1 channel\)"):
        read_image(tmp_path / "rgb.png", channels=1)
    replicated = read_image(tmp_path / "gray.png", channels=3, convert_channels=True)
    assert replicated.shape == (3, 12, 16) and torch.equal(replicated[0], replicated[2])
    luma = read_image(tmp_path / "rgb.png", channels=1, convert_channels=True)
    torch.testing.assert_close(luma[0], torch.from_numpy((rgb / np.float32(255)) @ np.float32([0.2989, 0.587, 0.114])))
    assert read_image(tmp_path / "gray.png", channels=1).shape == (1, 12, 16)
    with pytest.raises(ValueError, match="channels must be None .*, 1 .* or 3"):
        read_image(tmp_path / "gray.png", channels=4)
    with pytest.raises(ValueError, match="from 2 channels|got 2 channels"):
        match_channels(torch.zeros(2, 4, 4), 3)


def test_pixel_limit_names_the_file_and_is_configurable(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    _save(np.zeros((20, 30), np.uint8), path)
    with pytest.raises(ImageReadError, match=r"big\.png.*too large \(30x20 = 600 pixels, over the limit of 500"):
        read_image(path, max_pixels=500)
    assert read_image(path, max_pixels=600).shape == (1, 20, 30)
    # Pillow's own decompression-bomb error (images over twice its global limit) also names the file
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageReadError, match=r"big\.png.*too large.*limit of 100 pixels"):
        read_image(path, max_pixels=100)
    # a limit above Pillow's global one is honoured, and Pillow's global is left as it was
    assert read_image(path, max_pixels=10_000).shape == (1, 20, 30)
    assert read_image(path, max_pixels=None).shape == (1, 20, 30)
    assert Image.MAX_IMAGE_PIXELS == 100
    with pytest.raises(ValueError, match="max_pixels must be a positive int or None"):
        read_image(path, max_pixels=0)
    assert DEFAULT_MAX_PIXELS > 10**7


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.png"):
        read_image(tmp_path / "nothing.png")
    (tmp_path / "text.png").write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match=r"cannot read image file .*text\.png"):
        read_image(tmp_path / "text.png")


def test_image_folder_reads_16bit_and_float_files_at_their_true_values(tmp_path):
    values = _ramp(16, 16)
    _save(np.round(values * 65535).astype(np.uint16), tmp_path / "a_deep.png")
    _save(values.astype(np.float32), tmp_path / "b_float.tif")
    _save(np.round(values * 255).astype(np.uint8), tmp_path / "c_gray.png")
    dataset = ImageFolder(sorted(tmp_path.iterdir()), ImageTransform(16, 1, train=False))
    for i in range(3):
        x = dataset[i]
        assert x.shape == (1, 16, 16)
        assert abs(float(x.mean()) - values.mean()) < 3e-3, dataset.files[i]
    rgb = ImageFolder(sorted(tmp_path.iterdir()), ImageTransform(16, 3, train=False))
    assert rgb[0].shape == (3, 16, 16)  # training/evaluation data are converted to the model's channels


def test_image_transform_reads_pil_images_at_their_bit_depth():
    values = np.round(_ramp(16, 16) * 65535).astype(np.uint16)
    x = ImageTransform(16, 1, train=False)(Image.fromarray(values))
    assert abs(float(x.mean()) - values.mean() / 65535) < 3e-3
    assert image_to_tensor(Image.fromarray(values)).shape == (1, 16, 16)


def test_image_folder_skips_too_large_and_refused_files_on_request(tmp_path, caplog, monkeypatch):
    for i in range(3):
        _save(np.full((8, 8), 40 * i, np.uint8), tmp_path / f"small_{i}.png")
    _save(np.zeros((40, 40), np.uint8), tmp_path / "huge.png")
    wide = _ramp(8, 8).astype(np.float32) * 3
    _save(wide, tmp_path / "wide.tif")
    files = sorted(tmp_path.iterdir())
    transform = ImageTransform(8, 1, train=False)
    strict = ImageFolder(files, transform, max_pixels=1000)
    with pytest.raises(ValueError, match=r"cannot read image file .*huge\.png.*too large.*skip_bad"):
        strict[files.index(tmp_path / "huge.png")]
    with pytest.raises(ValueError, match=r"wide\.tif.*values in"):
        strict[files.index(tmp_path / "wide.tif")]
    with caplog.at_level(logging.WARNING):
        kept = ImageFolder(files, transform, skip_bad=True, max_pixels=1000)
    assert sorted(p.name for p in kept.files) == ["small_0.png", "small_1.png", "small_2.png"]
    assert "skipped 2 unreadable image file(s) of 5" in caplog.text
    assert {p.name for p, _ in kept.skipped} == {"huge.png", "wide.tif"}
    # Pillow's own decompression-bomb error is skipped too (it used to escape skip_bad)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    bombs = ImageFolder(files[:4], transform, skip_bad=True, max_pixels=500)
    assert [p.name for p, _ in bombs.skipped] == ["huge.png"]
