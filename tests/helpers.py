"""Small real data made by the tests (no network, no ../shared needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_image_folder(root: Path, n: int = 12, size: int = 20, mode: str = "RGB", seed: int = 0,
                      formats: tuple[str, ...] = ("png", "jpg")) -> list[Path]:
    """``n`` smooth random images in nested class folders, alternating formats."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        low = rng.uniform(0, 255, size=(4, 4, 3)).astype(np.uint8)
        image = Image.fromarray(low, "RGB").resize((size, size), Image.BILINEAR).convert(mode)
        folder = root / f"class_{i % 3}" / ("nested" if i % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img_{i:03d}.{formats[i % len(formats)]}"
        image.save(path)
        paths.append(path)
    return paths


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
