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


def tiny_model(prior: bool = True, size: int = 16, channels: int = 1, seed: int = 0):
    """A small untrained model (made in a second, no Trainer): blur to the channel mean, with a fitted
    ``ChannelMeanPrior`` when ``prior`` (so it can generate)."""
    import torch

    import colddiff.degradations as cd
    from colddiff.module import ColdDiffusion
    from colddiff.nets import ConvNeXtUNet
    from colddiff.priors import ChannelMeanPrior

    torch.manual_seed(seed)
    network = ConvNeXtUNet(in_channels=channels, dim=8, dim_mults=(1, 2), num_blocks=1, attention="none",
                           image_size=size)
    fitted = ChannelMeanPrior(channels).fit(torch.rand(16, channels, size, size)) if prior else None
    return ColdDiffusion(cd.GaussianBlur(4, kernel_size=5, sigma=1.0, final_mean=prior), network, fitted,
                         image_size=size, channels=channels, val_sample_batches=0)


def save_tiny_checkpoint(model, path: Path) -> Path:
    """``model`` as a training checkpoint with what colddiff's loaders read (config, weights, step)."""
    import torch

    torch.save({"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict(), "global_step": 0}, path)
    return path
