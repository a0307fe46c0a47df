"""Restoration metrics (torchmetrics), generation metrics on features (torch-fidelity), and the reference cache.

Protocol (also written into every report):

* all images are quantised to 8 bits (``round(255 x) / 255``) before any metric, as saved PNGs would be;
* SSIM: Gaussian window 11, sigma 1.5, data range 1, averaged over images; PSNR: per image, averaged; RMSE: over all
  pixels of the split, in ``[0, 1]`` units;
* Fréchet and kernel distances are computed on features of a :mod:`~colddiff.evaluation.features` extractor by
  torch-fidelity's metric functions (``fid_features_to_statistics`` / ``fid_statistics_to_metric``,
  ``kid_features_to_metric``) on the feature tensors, in float64; they are called FID/KID only with the standard
  Inception-v3 network.  (torch-fidelity's ``calculate_metrics`` is not used here: it takes images, not features,
  and caches by input name; colddiff extracts features once, for several metrics, and caches them by content in
  :class:`ReferenceCache`.)
* improved precision and recall (Kynkäänniemi et al. 2019, arXiv 1904.06991, eqs. (1)-(3)): a sample is inside
  the other set's manifold if it lies within the distance from some sample of that set to that sample's k-th
  nearest neighbour (k = 3); precision = the fraction of generated samples inside the real manifold, recall = the
  fraction of real samples inside the generated manifold (torch-fidelity's ``prc_features_to_metric``);
* the class entropy of a classifier extractor's predicted-class histogram (mode coverage), and the real-vs-real
  floor (:func:`real_vs_real`): the same metrics between two real sets of the sizes compared.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from torchmetrics import MeanSquaredError
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from colddiff.evaluation.features import FeatureExtractor

__all__ = [
    "quantize",
    "RestorationMetrics",
    "frechet_distance",
    "kernel_distance",
    "extract_features",
    "extract_features_and_logits",
    "dataset_fingerprint",
    "ReferenceCache",
    "CachedFeatures",
    "CacheEntryError",
    "extractor_fingerprint",
    "precision_recall",
    "generation_metrics",
    "class_entropy",
    "real_vs_real",
]


def quantize(images: Tensor) -> Tensor:
    """8-bit quantisation of ``[0, 1]`` images: ``round(255 x) / 255`` (clamped)."""
    return torch.round(images.float().clamp(0, 1) * 255) / 255


def frechet_distance(real: Tensor, fake: Tensor) -> float:
    """Fréchet distance between two feature sets: ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))``.

    Heusel et al. 2017 (arXiv 1706.08500), eq. (6), with sample means and unbiased covariances; computed in float64
    by torch-fidelity (``fid_features_to_statistics``, ``fid_statistics_to_metric``).

    Shape:
        ``real (N, D)``, ``fake (M, D)`` -> a float.
    """
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    _check_features(real, fake)
    stats_real = fid_features_to_statistics(real.detach().double().cpu())
    stats_fake = fid_features_to_statistics(fake.detach().double().cpu())
    return float(fid_statistics_to_metric(stats_real, stats_fake, verbose=False)["frechet_inception_distance"])


def kernel_distance(real: Tensor, fake: Tensor, subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """Kernel distance (unbiased MMD^2, cubic polynomial kernel ``(x.y / D + 1)^3``): mean and std over subsets.

    Bińkowski et al. 2018 (arXiv 1801.01401), section 4; computed in float64 by torch-fidelity
    (``kid_features_to_metric``).  ``subset_size`` is capped at the smaller set's size.  Each subset is drawn without
    replacement from a ``numpy.random.RandomState(seed)``, so the same inputs and seed give the same values (no
    global random state is touched).

    Shape:
        ``real (N, D)``, ``fake (M, D)`` -> ``(mean, std)``.
    """
    from torch_fidelity.metric_kid import kid_features_to_metric

    _check_features(real, fake)
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError(f"kernel distance needs at least 2 samples per set, got {len(real)} and {len(fake)}")
    if subsets < 1:
        raise ValueError(f"kernel distance needs at least 1 subset, got {subsets}")
    # torch-fidelity's order (input1 = generated, input2 = real): the same subsets as its calculate_metrics
    out = kid_features_to_metric(fake.detach().double().cpu(), real.detach().double().cpu(), kid_subsets=subsets,
                                 kid_subset_size=size, rng_seed=seed, verbose=False)
    return float(out["kernel_inception_distance_mean"]), float(out["kernel_inception_distance_std"])


def _check_features(real: Tensor, fake: Tensor) -> None:
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"a Fréchet distance needs at least 2 samples per set, got {len(real)} and {len(fake)}")


@torch.no_grad()
def extract_features(extractor: FeatureExtractor, images: Iterable[Tensor], device: torch.device) -> Tensor:
    """Features of 8-bit-quantised image batches, on ``device``, concatenated: ``(N, D)`` float32."""
    extractor = extractor.to(device).eval()
    chunks = [extractor(quantize(batch.to(device))).float() for batch in images]
    if not chunks:
        raise ValueError("no images to extract features from")
    return torch.cat(chunks)


@torch.no_grad()
def extract_features_and_logits(extractor: FeatureExtractor, images: Iterable[Tensor],
                                device: torch.device | str) -> tuple[Tensor, Tensor | None]:
    """Features and, for a classifier extractor, class logits of 8-bit-quantised image batches, in one pass.

    Shape:
        batches ``(B, C, H, W)`` in ``[0, 1]`` -> ``((N, D) float32, (N, K) float32 or None)`` on ``device``.
    """
    device = torch.device(device)
    extractor = extractor.to(device).eval()
    features, logits = [], []
    for batch in images:
        x = quantize(batch.to(device))
        if extractor.is_classifier:
            f, z = extractor.features_and_logits(x)
            logits.append(z.float())
        else:
            f = extractor(x)
        features.append(f.float())
    if not features:
        raise ValueError("no images to extract features from")
    return torch.cat(features), (torch.cat(logits) if logits else None)


class RestorationMetrics:
    """SSIM, PSNR and RMSE (and a Fréchet distance with an extractor) for named rows of restored images.

    Usage: ``update(row, images, targets)`` for every batch and row (e.g. ``"Degraded"``, ``"Direct"``,
    ``"Sampled"``), then :meth:`compute`.  Images and targets are quantised to 8 bits here.
    """

    def __init__(self, device: torch.device | str = "cpu", extractor: FeatureExtractor | None = None) -> None:
        self.device = torch.device(device)
        self.extractor = extractor.to(self.device).eval() if extractor is not None else None
        self.rows: dict[str, dict[str, Any]] = {}
        self.target_features: list[Tensor] = []
        self.count: dict[str, int] = {}

    def _row(self, name: str) -> dict[str, Any]:
        if name not in self.rows:
            self.rows[name] = {
                "SSIM": StructuralSimilarityIndexMeasure(data_range=1.0, gaussian_kernel=True, kernel_size=11,
                                                         sigma=1.5).to(self.device),
                "PSNR": PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3), reduction="elementwise_mean")
                .to(self.device),
                "RMSE": MeanSquaredError(squared=False).to(self.device),
                "features": [],
            }
            self.count[name] = 0
        return self.rows[name]

    @torch.no_grad()
    def update(self, name: str, images: Tensor, targets: Tensor, targets_are_new: bool = False) -> None:
        """Add a batch of one row; pass ``targets_are_new=True`` once per batch to collect target features."""
        images, targets = quantize(images.to(self.device)), quantize(targets.to(self.device))
        if images.shape != targets.shape:
            raise ValueError(f"images {tuple(images.shape)} and targets {tuple(targets.shape)} differ in shape")
        row = self._row(name)
        row["SSIM"].update(images, targets)
        row["PSNR"].update(images, targets)
        row["RMSE"].update(images, targets)
        self.count[name] += len(images)
        if self.extractor is not None:
            row["features"].append(self.extractor(images).float())
            if targets_are_new:
                self.target_features.append(self.extractor(targets).float())

    def compute(self) -> dict[str, dict[str, float]]:
        """``{row: {"SSIM", "PSNR", "RMSE", ["FID" or "FD-<name>"], "N"}}``."""
        results: dict[str, dict[str, float]] = {}
        targets = torch.cat(self.target_features) if self.target_features else None
        for name, row in self.rows.items():
            values = {metric: float(row[metric].compute()) for metric in ("SSIM", "PSNR", "RMSE")}
            if self.extractor is not None and targets is not None:
                fd_name = self.extractor.metric_names()[0]
                values[fd_name] = frechet_distance(targets, torch.cat(row["features"]))
            values["N"] = self.count[name]
            results[name] = values
        return results


def extractor_fingerprint(extractor: FeatureExtractor) -> str:
    """A short hash of an extractor's class, name and weights (every byte of its state dict), for cache keys."""
    digest = hashlib.sha256(f"{type(extractor).__qualname__}:{extractor.name}".encode())
    for key, tensor in sorted(extractor.state_dict().items()):
        digest.update(key.encode())
        _hash_tensor(digest, tensor)
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------------------- dataset fingerprints
def _hash_tensor(digest: Any, tensor: Tensor | np.ndarray) -> None:
    if isinstance(tensor, Tensor):
        tensor = tensor.detach().cpu().contiguous()
        if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: hash the same bytes as int16
            tensor = tensor.view(torch.int16)
        array = tensor.numpy()
    else:
        array = np.ascontiguousarray(tensor)
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(memoryview(array).cast("B"))


def _transform_description(transform: Any) -> str:
    """A stable description of a colddiff :class:`ImageTransform` (other transforms: their type only)."""
    from colddiff.datasets import ImageTransform

    if isinstance(transform, ImageTransform):
        return f"ImageTransform({transform.channels}, {transform.transform!r})"
    return type(transform).__qualname__


def _fingerprint_files(digest: Any, files: list[Path], contents: bool) -> None:
    paths = [Path(f) for f in files]
    root = Path(os.path.commonpath([str(p.resolve().parent) for p in paths])) if paths else Path(".")
    digest.update(f"files:{len(paths)}:{'contents' if contents else 'stat'}\n".encode())
    for path in paths:
        resolved = path.resolve()
        digest.update(f"{resolved.relative_to(root).as_posix()}\0".encode())
        if contents:
            digest.update(hashlib.sha256(resolved.read_bytes()).digest())
        else:
            stat = resolved.stat()
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}\n".encode())


def _fingerprint_into(digest: Any, dataset: Dataset, contents: bool) -> None:
    from colddiff.datasets import EmbeddedMNIST, ImageFolder, ImagesOnly, unpack_batch

    name = type(dataset).__qualname__
    if isinstance(dataset, Subset):
        digest.update(b"Subset(")
        _fingerprint_into(digest, dataset.dataset, contents)
        _hash_tensor(digest, np.asarray(list(dataset.indices), dtype=np.int64))
        digest.update(b")")
    elif isinstance(dataset, ImageFolder):
        digest.update(f"ImageFolder[{_transform_description(dataset.transform)}]".encode())
        _fingerprint_files(digest, dataset.files, contents)
    elif isinstance(dataset, EmbeddedMNIST):
        digest.update(f"EmbeddedMNIST[{_transform_description(dataset.transform)}]".encode())
        _hash_tensor(digest, dataset.images)  # the pixels served, whatever file they came from
    elif isinstance(dataset, ImagesOnly) and isinstance(getattr(dataset.dataset, "data", None), (Tensor, np.ndarray)):
        # torchvision's in-memory datasets (MNIST, FashionMNIST, CIFAR-10) keep all their pixels in `.data`
        inner = dataset.dataset
        digest.update(f"ImagesOnly[{_transform_description(dataset.transform)}]({type(inner).__qualname__})".encode())
        _hash_tensor(digest, inner.data)
    else:
        # anything else: the decoded images themselves (a full pass over the data set)
        digest.update(f"decoded:{name}:{len(dataset)}\n".encode())
        for index in range(len(dataset)):
            item = dataset[index]
            image = item if isinstance(item, Tensor) else unpack_batch(item)[0]
            _hash_tensor(digest, image)


def dataset_fingerprint(dataset: Dataset, *, file_contents: bool = True) -> str:
    """A hash of what a data set serves, for cache keys: it changes when any image changes.

    * :class:`~colddiff.datasets.ImageFolder`: the file names relative to their common folder, and the bytes of
      every file (``file_contents=True``, the default) or only their sizes and ``mtime_ns`` (``False``: faster,
      but blind to a rewrite that keeps size and modification time, e.g. ``cp -p``, ``rsync -t``, an archive
      extracted with its times, or a file system with coarse time stamps);
    * :class:`~colddiff.datasets.EmbeddedMNIST`: the image array it holds;
    * ``ImagesOnly`` around a torchvision data set with an in-memory ``.data`` array (MNIST, CIFAR-10): that array;
    * :class:`torch.utils.data.Subset`: the parent's fingerprint and the indices;
    * anything else: the decoded image tensors, item by item (a full pass over the data).

    colddiff's ``ImageTransform`` (size, crop, channels) is part of the fingerprint; other transforms contribute
    only their type name.

    Returns:
        A 64-character hex SHA-256.
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset_fingerprint takes a torch Dataset, got {type(dataset).__name__}")
    digest = hashlib.sha256(b"colddiff-dataset-fingerprint-v1\n")
    _fingerprint_into(digest, dataset, file_contents)
    return digest.hexdigest()


@dataclass(frozen=True)
class CachedFeatures:
    """Reference features and where they came from.

    Attributes:
        features: ``(N, D)`` float32.
        logits: ``(N, K)`` float32 class logits of a classifier extractor, else ``None``.
        key: the cache key.
        path: the cache file.
        hit: ``True`` if read from the cache, ``False`` if computed (and stored) now.
        fingerprint: the data set's :func:`dataset_fingerprint`.
    """

    features: Tensor
    logits: Tensor | None
    key: str
    path: Path
    hit: bool
    fingerprint: str

    def describe(self) -> str:
        """``"cache <key>"`` or ``"computed and stored as <key>"`` (for reports)."""
        return f"cache {self.key}" if self.hit else f"computed and stored as {self.key}"


class CacheEntryError(ValueError):
    """A reference-feature cache entry that cannot be used (corrupt, foreign, or not what its key promises); the
    message names the file and says to delete it.

    Attributes:
        path: the cache file.
        reason: what is wrong with it.
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"reference-feature cache entry {self.path!r} is unusable: {reason}; delete it "
                         f"(rm -r {self.path!r}) and run again: colddiff then recomputes the features")


class ReferenceCache:
    """Reference-set features, cached on disk per (data set content, split, size, channels, extractor, count).

    Files are safetensors (no pickle) in ``folder`` (default ``$COLDDIFF_CACHE`` or ``~/.cache/colddiff``), under
    ``reference/``.  Use :meth:`load_or_compute`: it keys the entry on :func:`dataset_fingerprint`, so rewriting the
    images of a folder (same names, same count) can never return features of the old images, and it says which
    entry it used.  Every entry read is checked (a safetensors file with float ``features`` of one row per image,
    as many columns as the extractor gives, finite, and logits to match); an entry that fails is refused with
    :class:`CacheEntryError`, never used.
    """

    def __init__(self, folder: str | os.PathLike | None = None) -> None:
        default = os.environ.get("COLDDIFF_CACHE", Path.home() / ".cache" / "colddiff")
        self.folder = Path(folder or default) / "reference"

    def key(self, dataset_id: str, split: str, size: int, channels: int, extractor: FeatureExtractor,
            count: int, *, fingerprint: str | None = None) -> str:
        """The cache key.  Pass the data set's ``fingerprint`` (:func:`dataset_fingerprint`): without it the key
        depends on the description and count only, and a data set whose images changed hits the stale entry (a
        ``UserWarning`` says so)."""
        if fingerprint is None:
            warnings.warn("ReferenceCache.key without a dataset fingerprint: the cache cannot notice changed images "
                          "(pass fingerprint=dataset_fingerprint(dataset), or use load_or_compute)", UserWarning,
                          stacklevel=2)
        parts: list[Any] = [dataset_id, split, size, channels, extractor.name, extractor_fingerprint(extractor), count]
        if fingerprint is not None:
            parts.append(fingerprint)
        readable = f"{extractor.name}-{split}-{size}px-n{count}"
        return f"{readable}-{hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:16]}"

    def path(self, key: str) -> Path:
        """The file of an entry."""
        return self.folder / f"{key}.safetensors"

    def get(self, key: str) -> Tensor | None:
        """The features of an entry, or ``None`` when there is none.

        Raises:
            CacheEntryError: the entry exists but is not a valid cache entry.
        """
        path = self.path(key)
        if not os.path.lexists(path):
            return None
        return self._read(path)["features"]

    @staticmethod
    def _read(path: Path) -> dict[str, Tensor]:
        """An entry's tensors, checked for what every entry holds (float features ``(N, D)``, logits ``(N, K)``)."""
        if not path.is_file():
            raise CacheEntryError(path, "it is not a file")
        try:
            stored = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            detail = (str(err).splitlines() or [type(err).__name__])[0][:160]
            raise CacheEntryError(path, f"it is not a safetensors file ({detail})") from err
        features = stored.get("features")
        if features is None:
            raise CacheEntryError(path, f"it has no 'features' tensor (tensors: {sorted(stored) or 'none'})")
        if features.ndim != 2 or not features.is_floating_point() or len(features) == 0:
            raise CacheEntryError(path, f"its features are {tuple(features.shape)} {features.dtype}, not float "
                                        "(N, D) with N >= 1")
        logits = stored.get("logits")
        if logits is not None and (logits.ndim != 2 or not logits.is_floating_point()
                                   or len(logits) != len(features)):
            raise CacheEntryError(path, f"its logits are {tuple(logits.shape)} {logits.dtype}, not float (N, K) "
                                        f"with N = {len(features)} rows like its features")
        for name, tensor in (("features", features), ("logits", logits)):
            if tensor is not None and not bool(torch.isfinite(tensor).all()):
                raise CacheEntryError(path, f"its {name} hold NaN or infinite values")
        return stored

    @staticmethod
    def _check_hit(path: Path, stored: dict[str, Tensor], count: int, extractor: FeatureExtractor) -> None:
        """What a hit must hold for this data set and extractor: one row per image, the extractor's widths."""
        features, logits = stored["features"], stored.get("logits")
        if len(features) != count:
            raise CacheEntryError(path, f"it holds features of {len(features)} images but the reference has {count}")
        if extractor.num_features and features.shape[1] != extractor.num_features:
            raise CacheEntryError(path, f"its features have {features.shape[1]} columns but the {extractor.name} "
                                        f"extractor gives {extractor.num_features}")
        if logits is not None and extractor.num_classes and logits.shape[1] != extractor.num_classes:
            raise CacheEntryError(path, f"its logits have {logits.shape[1]} columns but the {extractor.name} "
                                        f"extractor has {extractor.num_classes} classes")

    def put(self, key: str, features: Tensor, description: dict[str, Any], logits: Tensor | None = None) -> Path:
        """Store an entry atomically; returns its file."""
        tensors = {"features": features.detach().float().cpu().contiguous()}
        if logits is not None:
            tensors["logits"] = logits.detach().float().cpu().contiguous()
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            save_file(tensors, str(tmp), metadata={k: str(v) for k, v in description.items()})
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path

    def load_or_compute(self, dataset: Dataset, extractor: FeatureExtractor,
                        compute: Callable[[], tuple[Tensor, Tensor | None]], *, dataset_id: str, split: str,
                        size: int, channels: int, file_contents: bool = True) -> CachedFeatures:
        """The features of ``dataset`` from the cache, or ``compute()`` them and store them.

        Args:
            dataset: the reference images (fingerprinted with :func:`dataset_fingerprint`).
            extractor: the feature extractor (its name and weights are part of the key).
            compute: returns ``(features (N, D), logits (N, K) or None)`` of ``dataset``, e.g. with
                :func:`extract_features_and_logits`.
            dataset_id, split, size, channels: the description of the data set (part of the key, and of reports).
            file_contents: see :func:`dataset_fingerprint`.

        Returns:
            The features with the key and file used and whether it was a cache hit.
        """
        fingerprint = dataset_fingerprint(dataset, file_contents=file_contents)
        key = self.key(dataset_id, split, size, channels, extractor, len(dataset), fingerprint=fingerprint)
        path = self.path(key)
        if os.path.lexists(path):  # an entry that exists is checked on every hit (a directory is no entry either)
            stored = self._read(path)
            self._check_hit(path, stored, len(dataset), extractor)
            # an entry written without logits (by put) serves a classifier only after recomputing them
            if "logits" in stored or not extractor.is_classifier:
                return CachedFeatures(stored["features"], stored.get("logits"), key, path, True, fingerprint)
        features, logits = compute()
        if len(features) != len(dataset) or (logits is not None and len(logits) != len(dataset)):
            raise ValueError(f"compute() returned features of {len(features)} images for a data set of {len(dataset)}")
        put_path = self.put(key, features, {"dataset": dataset_id, "split": split, "size": size, "channels": channels,
                                            "extractor": extractor.name, "count": len(dataset),
                                            "fingerprint": fingerprint}, logits)
        features = features.detach().float().cpu()
        logits = None if logits is None else logits.detach().float().cpu()
        return CachedFeatures(features, logits, key, put_path, False, fingerprint)


# ------------------------------------------------------------------------------- generation metrics on features
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
