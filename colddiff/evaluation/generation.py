"""Generation metrics on feature sets: Fréchet and kernel distances, improved precision and recall, class entropy,
and the real-vs-real floor.

All metrics except the class entropy are torch-fidelity's own functions applied to feature tensors (colddiff extracts
the features itself, once, with an extractor of :mod:`~colddiff.evaluation.features`, and caches reference features
by content in :class:`~colddiff.evaluation.metrics.ReferenceCache`):

* Fréchet distance (Heusel et al. 2017, arXiv 1706.08500): :func:`~colddiff.evaluation.metrics.frechet_distance`;
* kernel distance (Bińkowski et al. 2018, arXiv 1801.01401): :func:`~colddiff.evaluation.metrics.kernel_distance`;
* improved precision and recall (Kynkäänniemi et al. 2019, arXiv 1904.06991, eqs. (1)-(3)): a sample is inside
  the other set's manifold if it lies within the distance from some sample of that set to that sample's k-th
  nearest neighbour (k = 3); precision = the fraction of generated samples inside the real manifold, recall = the
  fraction of real samples inside the generated manifold (torch-fidelity's ``prc_features_to_metric``).

Why not torch-fidelity's ``calculate_metrics``: it takes images (data sets, folders, generative models), not
features, extracts features with a registered extractor in its own data loader, and caches them by input *name*
(the defect :class:`~colddiff.evaluation.metrics.ReferenceCache` now avoids).  colddiff needs the same features
for several metrics, for the class histogram and for the replication audit, so it extracts once and calls
torch-fidelity's metric functions on the tensors.  colddiff's extractors are still available to
``calculate_metrics`` through :func:`colddiff.evaluation.fidelity.register_torch_fidelity_extractors`.

The floor: the same metrics between two real sets (:func:`real_vs_real`) say what value a perfect generator would
get with the same sample sizes; measure it with::

    python -m colddiff.evaluation.generation --extractor mnist-cnn --first embedded-mnist:train \\
        --second embedded-mnist:test
    python -m colddiff.evaluation.generation --extractor resnet56 --weights resnet56-4bfd9763.th \\
        --first npz:cifar10_lossless_subset_train4k_test1k.npz:x_train \\
        --second npz:cifar10_lossless_subset_train4k_test1k.npz:x_test
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from colddiff.evaluation.features import FeatureExtractor, build_extractor
from colddiff.evaluation.metrics import extract_features_and_logits, frechet_distance, kernel_distance

__all__ = ["generation_metrics", "precision_recall", "class_entropy", "real_vs_real", "images_from_npz", "main"]


def _check_pair(real: Tensor, fake: Tensor) -> None:
    if not isinstance(real, Tensor) or not isinstance(fake, Tensor):
        raise TypeError(f"features must be tensors, got {type(real).__name__} and {type(fake).__name__}")
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if not (torch.isfinite(real).all() and torch.isfinite(fake).all()):
        raise ValueError("features contain NaN or infinite values")


def precision_recall(real: Tensor, fake: Tensor, neighbourhood: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, arXiv 1904.06991, eqs. (1)-(3)).

    ``f(phi, Phi) = 1`` if ``||phi - phi'|| <= ||phi' - NN_k(phi')||`` for some ``phi'`` in ``Phi``; precision is
    the mean of ``f(fake_i, real)``, recall the mean of ``f(real_i, fake)``.  Computed by torch-fidelity
    (``prc_features_to_metric``) on float64 features, 2,000 rows of distances at a time (memory: 16 kB times the
    larger set's size); deterministic.  Both values depend on the set sizes (the k-th neighbour radii shrink as a
    set grows): compare runs with equal sizes.

    Shape:
        ``real (N, D)``, ``fake (M, D)`` with ``N, M > neighbourhood`` -> ``(precision, recall)`` in ``[0, 1]``.
    """
    from torch_fidelity.metric_prc import prc_features_to_metric

    _check_pair(real, fake)
    if neighbourhood < 1:
        raise ValueError(f"the neighbourhood size k must be >= 1, got {neighbourhood}")
    if min(len(real), len(fake)) <= neighbourhood:
        raise ValueError(f"precision/recall with k = {neighbourhood} need more than {neighbourhood} samples per set, "
                         f"got {len(real)} real and {len(fake)} generated")
    # torch-fidelity's convention: features_1 = generated, features_2 = real
    out = prc_features_to_metric(fake.detach().double().cpu(), real.detach().double().cpu(),
                                 prc_neighborhood=neighbourhood, prc_batch_size=2000, save_cpu_ram=True, verbose=False)
    return float(out["precision"]), float(out["recall"])


def generation_metrics(real_features: Tensor, fake_features: Tensor, *, kid_subsets: int = 100,
                       kid_subset_size: int = 1000, prc_neighbourhood: int = 3, seed: int = 0) -> dict[str, float]:
    """Fréchet distance, kernel distance (mean, std) and improved precision/recall between feature sets.

    Name them after the extractor in reports (``extractor.metric_names()``: ``FD-mnist-cnn``/``KD-mnist-cnn``, or
    FID/KID only with the standard Inception network).  Seeded: the same inputs give the same numbers (only the
    kernel-distance subsets are random).

    Args:
        real_features: reference features.
        fake_features: features of the generated images.
        kid_subsets: number of random subsets for the kernel distance.
        kid_subset_size: their size (capped at the smaller set's size; the value used is returned).
        prc_neighbourhood: k of precision and recall (3, as in the paper).
        seed: seed of the kernel-distance subsets.

    Returns:
        ``{"FD", "KD", "KD_std", "precision", "recall", "N_real", "N_fake", "KD_subsets", "KD_subset_size",
        "PRC_neighbourhood"}``.

    Shape:
        ``real_features (N, D)``, ``fake_features (M, D)``.
    """
    _check_pair(real_features, fake_features)
    fd = frechet_distance(real_features, fake_features)
    kd, kd_std = kernel_distance(real_features, fake_features, kid_subsets, kid_subset_size, seed=seed)
    precision, recall = precision_recall(real_features, fake_features, prc_neighbourhood)
    return {"FD": fd, "KD": kd, "KD_std": kd_std, "precision": precision, "recall": recall,
            "N_real": len(real_features), "N_fake": len(fake_features), "KD_subsets": kid_subsets,
            "KD_subset_size": min(kid_subset_size, len(real_features), len(fake_features)),
            "PRC_neighbourhood": prc_neighbourhood}


def class_entropy(logits: Tensor, num_classes: int | None = None) -> dict[str, Any]:
    """Entropy of the histogram of predicted classes (``argmax`` of the logits): mode coverage.

    ``H = -sum_k p_k log p_k`` with ``p_k`` the fraction of images predicted as class ``k``; ``H = log K`` when
    the classes are equally frequent, ``0`` when one class is predicted for all images.  This is the marginal
    entropy ``H(y)`` of the Inception Score (Salimans et al. 2016, arXiv 1606.03498, section 4) with hard labels.
    Deterministic.

    Args:
        logits: class logits (or probabilities) of the generated images.
        num_classes: ``K`` (default: ``logits.shape[1]``).

    Returns:
        ``{"entropy": H in nats, "entropy_fraction": H / log K, "num_classes": K, "counts": [n_0, ..., n_{K-1}],
        "N": number of images}``.

    Shape:
        ``logits (N, K)``.
    """
    if not isinstance(logits, Tensor) or logits.ndim != 2 or len(logits) == 0:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"class_entropy takes logits (N, K) with N >= 1, got {shape}")
    k = logits.shape[1] if num_classes is None else num_classes
    if k < 2 or k < logits.shape[1]:
        raise ValueError(f"num_classes must be >= 2 and >= the logits' {logits.shape[1]} columns, got {k}")
    counts = torch.bincount(logits.argmax(dim=1).cpu(), minlength=k).double()
    p = counts / counts.sum()
    nonzero = p[p > 0]
    entropy = float(-(nonzero * nonzero.log()).sum())
    return {"entropy": entropy, "entropy_fraction": entropy / math.log(k), "num_classes": k,
            "counts": [int(c) for c in counts], "N": len(logits)}


def _batches(images: Tensor | Dataset, batch_size: int):
    if isinstance(images, Tensor):
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W) in [0, 1], got {tuple(images.shape)}")
        yield from images.split(batch_size)
        return
    if not isinstance(images, Dataset):
        raise TypeError(f"images must be a tensor (N, C, H, W) or a Dataset, got {type(images).__name__}")
    from colddiff.datasets import stack_items, unpack_batch

    loader = DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=stack_items)
    for batch in loader:
        yield unpack_batch(batch)[0]


def real_vs_real(extractor: FeatureExtractor, first: Tensor | Dataset, second: Tensor | Dataset, *,
                 device: torch.device | str = "cpu", batch_size: int = 500, kid_subsets: int = 100,
                 kid_subset_size: int = 1000, prc_neighbourhood: int = 3, seed: int = 0) -> dict[str, Any]:
    """The floor of the generation metrics: the same metrics between two real image sets.

    ``first`` plays the reference set, ``second`` the generated set (e.g. the 6,000 embedded training digits and
    the 1,000 embedded test digits); a perfect generator, with these sample sizes, would score about this.  Images
    are quantised to 8 bits, as in every colddiff metric.

    Args:
        extractor: the feature extractor (a classifier also gives the class entropy of both sets).
        first, second: images ``(N, C, H, W)`` in ``[0, 1]``, or data sets of such images.
        device, batch_size: for feature extraction.
        kid_subsets, kid_subset_size, prc_neighbourhood, seed: as :func:`generation_metrics`.

    Returns:
        :func:`generation_metrics`' dict plus, for a classifier, ``"class_entropy"`` (of ``second``) and
        ``"reference_class_entropy"`` (of ``first``), as :func:`class_entropy`; and ``"extractor"``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    real, real_logits = extract_features_and_logits(extractor, _batches(first, batch_size), device)
    fake, fake_logits = extract_features_and_logits(extractor, _batches(second, batch_size), device)
    result: dict[str, Any] = {"extractor": extractor.name}
    result.update(generation_metrics(real, fake, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size,
                                     prc_neighbourhood=prc_neighbourhood, seed=seed))
    if real_logits is not None and fake_logits is not None:
        result["class_entropy"] = class_entropy(fake_logits)
        result["reference_class_entropy"] = class_entropy(real_logits)
    return result


def images_from_npz(path: str | os.PathLike, key: str) -> Tensor:
    """``uint8`` images of one array of an ``.npz`` file as floats in ``[0, 1]``, ``(N, C, H, W)``.

    Accepts ``(N, H, W)``, ``(N, H, W, C)`` and ``(N, C, H, W)`` with ``C`` 1 or 3.
    """
    with np.load(path, allow_pickle=False) as data:
        if key not in data.files:
            raise KeyError(f"{str(path)!r} has no array {key!r}; it has {', '.join(data.files)}")
        array = data[key]
    if array.dtype != np.uint8:
        raise ValueError(f"{str(path)!r}[{key!r}] must be uint8 images, got dtype {array.dtype}")
    images = torch.from_numpy(array.copy())
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.permute(0, 3, 1, 2)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"{str(path)!r}[{key!r}] has shape {tuple(array.shape)}: expected (N, H, W), (N, H, W, C) "
                         "or (N, C, H, W) with C = 1 or 3")
    return images.float() / 255


def _source(spec: str) -> tuple[Tensor, str]:
    if spec.startswith("embedded-mnist:"):
        from colddiff.datasets import EMBEDDED_MNIST

        split = spec.split(":", 1)[1]
        if split not in ("train", "test"):
            raise ValueError(f"embedded-mnist split must be train or test, got {split!r}")
        return images_from_npz(EMBEDDED_MNIST, f"{split}_images"), spec
    if spec.startswith("npz:") and spec.count(":") >= 2:
        path, key = spec[4:].rsplit(":", 1)
        return images_from_npz(path, key), f"npz:{Path(path).name}:{key}"
    raise ValueError(f"image source {spec!r}: use embedded-mnist:train|test or npz:PATH:KEY")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure the real-vs-real floor and print it as JSON (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Generation metrics between two real image sets (the floor).")
    parser.add_argument("--extractor", default="mnist-cnn", help="mnist-cnn, resnet20..resnet110, inception, pixels")
    parser.add_argument("--weights", default=None, help="the extractor's weights file (resnetNN, inception)")
    parser.add_argument("--first", required=True, help="reference images: embedded-mnist:train|test or npz:PATH:KEY")
    parser.add_argument("--second", required=True, help="the images in the generated role (same forms)")
    parser.add_argument("--kid-subsets", type=int, default=100)
    parser.add_argument("--kid-subset-size", type=int, default=1000)
    parser.add_argument("--prc-neighbourhood", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    extractor = build_extractor(args.extractor, args.weights)
    first, first_name = _source(args.first)
    second, second_name = _source(args.second)
    result = {"first": first_name, "second": second_name}
    result.update(real_vs_real(extractor, first, second, device=args.device, batch_size=args.batch_size,
                               kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size,
                               prc_neighbourhood=args.prc_neighbourhood, seed=args.seed))
    result["seconds"] = round(time.perf_counter() - start, 1)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        from colddiff.io import atomic_write_bytes

        atomic_write_bytes(text.encode(), args.out)
    return result


if __name__ == "__main__":
    main()
