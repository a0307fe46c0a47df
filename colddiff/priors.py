"""Start-state distributions for unconditional generation.

A prior draws ``x_T`` (and the degradation params that go with it) for :func:`colddiff.sampling.sample_improved`.
Priors that are fitted from data keep their fitted state in buffers, so it is saved in checkpoints and exported
weights; every draw records its provenance (prior component, or which source image) for later audits.

=====================  ==========================================================  ===============================
prior                  start state                                                 degradation
=====================  ==========================================================  ===============================
``ChannelMeanPrior``   constant image of a colour from a Gaussian / GMM fitted to   ``GaussianBlur(final_mean=True)``
                       per-channel means, plus symmetry-breaking noise (0.002)
``LowResPrior``        nearest-upsampled low-resolution image from a GMM fitted    ``Pixelate``
                       to the training images at level ``T``
``LowResKDEPrior``     the same from a kernel density estimate: a random           ``Pixelate``
                       training image's thumbnail plus Gaussian noise
``GaussianNoisePrior`` ``0.5 + 0.5 * N(0, I)`` (standard normal in [-1, 1] units)   ``GaussianNoise``
``ConstantColourPrior`` a random constant colour, each channel uniform              ``GaussianMask(reverse=True,
                                                                                    fill="random")``
``SourceImagePrior``   an image of the partner dataset                             ``Mix``
=====================  ==========================================================  ===============================
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from colddiff._checks import check_positive_int, rand, randint, randn
from colddiff._config import ModelFileError, RecordsInit
from colddiff.datasets import unpack_batch

__all__ = [
    "GaussianMixture",
    "Prior",
    "PriorSample",
    "PriorSource",
    "ChannelMeanPrior",
    "LowResPrior",
    "LowResKDEPrior",
    "GaussianNoisePrior",
    "ConstantColourPrior",
    "SourceImagePrior",
    "FinalStatePrior",
]


def _stored_state_error(module: nn.Module, prefix: str, reason: str) -> ModelFileError:
    where = prefix.rstrip(".") or "prior"
    return ModelFileError(f"{where} ({type(module).__name__}): {reason}; the model file is corrupt or was not written "
                          "by colddiff for this config")


def _require_stored(module: nn.Module, state_dict: Mapping[str, Any], prefix: str, strict: bool) -> None:
    """Refuse a strict load whose state lacks one of ``module``'s own persistent buffers (a fitted prior's state)."""
    if not strict:
        return
    missing = [name for name in module._buffers  # noqa: SLF001 - the module's own buffers, not its children's
               if name not in module._non_persistent_buffers_set and prefix + name not in state_dict]
    if missing:
        raise _stored_state_error(module, prefix, f"the stored state has no {', '.join(map(repr, missing))} tensor")


# ------------------------------------------------------------------------------------------ Gaussian mixture
class GaussianMixture(RecordsInit, nn.Module):
    """Gaussian mixture with full covariances, fitted by EM in torch (k-means++ initialisation).

    Args:
        num_components: ``k``.
        dim: dimension of the data.
        reg_covar: added to covariance diagonals (keeps them positive definite).
        max_iter, tol: EM stopping rule (change of mean log-likelihood).

    Buffers ``weights (k,)``, ``means (k, d)``, ``covariances (k, d, d)`` hold the fit.
    """

    def __init__(self, num_components: int = 1, dim: int = 3, reg_covar: float = 1e-6, max_iter: int = 200,
                 tol: float = 1e-6) -> None:
        super().__init__()
        check_positive_int(num_components, "num_components", "GaussianMixture")
        check_positive_int(dim, "dim", "GaussianMixture")
        self.num_components, self.dim = int(num_components), int(dim)
        self.reg_covar, self.max_iter, self.tol = reg_covar, max_iter, tol
        self.register_buffer("weights", torch.full((num_components,), 1.0 / num_components))
        self.register_buffer("means", torch.zeros(num_components, dim))
        self.register_buffer("covariances", torch.eye(dim).expand(num_components, dim, dim).clone())
        self.register_buffer("fitted", torch.tensor(False))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,  # type: ignore[override]
                              unexpected_keys, error_msgs):
        _require_stored(self, state_dict, prefix, strict)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if bool(self.fitted) and not error_msgs:
            self._check_fit(prefix)

    def _check_fit(self, prefix: str) -> None:
        """A loaded fit must be a distribution: weights >= 0 summing to 1, positive-definite covariances."""
        weights = self.weights.double()
        if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()) or \
                abs(float(weights.sum()) - 1.0) > 1e-3:
            raise _stored_state_error(self, prefix, f"the stored mixture weights {weights.tolist()} are not a "
                                                    "probability distribution (>= 0, summing to 1)")
        info = torch.linalg.cholesky_ex(self.covariances.double()).info
        if bool((info != 0).any()):
            bad = [int(i) for i in torch.nonzero(info).flatten()]
            raise _stored_state_error(self, prefix, f"the stored covariance of component(s) {bad} is not positive "
                                                    "definite")

    def _log_prob_components(self, x: Tensor, weights: Tensor, means: Tensor, covs: Tensor) -> Tensor:
        """``log w_j + log N(x | mu_j, S_j)`` for every sample and component: ``(n, k)``."""
        chol = torch.linalg.cholesky(covs)
        diff = x[None, :, :] - means[:, None, :]  # (k, n, d)
        solved = torch.linalg.solve_triangular(chol, diff.transpose(1, 2), upper=False)  # (k, d, n)
        maha = solved.pow(2).sum(dim=1)  # (k, n)
        log_det = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)  # (k,)
        log_norm = -0.5 * (self.dim * math.log(2 * math.pi) + log_det)
        return (torch.log(weights)[:, None] + log_norm[:, None] - 0.5 * maha).T

    def _init_means(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """k-means++ seeding."""
        first = int(torch.randint(len(x), (1,), generator=generator))
        centres = [x[first]]
        for _ in range(1, self.num_components):
            d2 = torch.cdist(x, torch.stack(centres)).min(dim=1).values.pow(2)
            probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1 / len(d2))
            centres.append(x[int(torch.multinomial(probs, 1, generator=generator))])
        return torch.stack(centres)

    @torch.no_grad()
    def fit(self, x: Tensor, seed: int = 0) -> GaussianMixture:
        """Fit to samples ``x`` of shape ``(n, d)`` (computed in float64 on ``x``'s device)."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"GaussianMixture.fit expects data of shape (n, {self.dim}), got {tuple(x.shape)}")
        if len(x) < self.num_components:
            raise ValueError(f"GaussianMixture.fit needs at least {self.num_components} samples, got {len(x)}")
        if not torch.isfinite(x).all():
            raise ValueError("GaussianMixture.fit got non-finite data")
        x = x.to(torch.float64)
        n, d, k = len(x), self.dim, self.num_components
        generator = torch.Generator().manual_seed(seed)
        eye = torch.eye(d, dtype=x.dtype, device=x.device)
        means = self._init_means(x.cpu(), generator).to(x)
        # hard assignment to the nearest seed for the first covariances
        resp = F.one_hot(torch.cdist(x, means).argmin(dim=1), k).to(x.dtype)
        previous = -math.inf
        for _ in range(self.max_iter):
            nk = resp.sum(dim=0) + 10 * torch.finfo(x.dtype).eps
            weights = nk / n
            means = resp.T @ x / nk[:, None]
            diff = x[None] - means[:, None]  # (k, n, d)
            covs = torch.einsum("kn,knd,kne->kde", resp.T, diff, diff) / nk[:, None, None] + self.reg_covar * eye
            log_prob = self._log_prob_components(x, weights, means, covs)  # (n, k)
            log_norm = torch.logsumexp(log_prob, dim=1, keepdim=True)
            resp = torch.exp(log_prob - log_norm)
            current = log_norm.mean().item()
            if abs(current - previous) < self.tol:
                break
            previous = current
        self.weights.copy_(weights.to(self.weights))
        self.means.copy_(means.to(self.means))
        self.covariances.copy_(covs.to(self.covariances))
        self.fitted.fill_(True)
        return self

    def log_prob(self, x: Tensor) -> Tensor:
        """Log density of ``(n, d)`` samples: ``(n,)``."""
        x = x.to(torch.float64)
        log_prob = self._log_prob_components(x, self.weights.double(), self.means.double(),
                                             self.covariances.double())
        return torch.logsumexp(log_prob, dim=1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` draws and the component each came from: ``(n, d)`` float32, ``(n,)`` long."""
        if not bool(self.fitted):
            raise RuntimeError("GaussianMixture.sample: the mixture is not fitted (call fit first)")
        device = generator.device if generator is not None else self.means.device
        components = torch.multinomial(self.weights.to(device), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, device=device, dtype=torch.float64)
        chol = torch.linalg.cholesky(self.covariances.to(device, torch.float64))
        draws = self.means.to(device, torch.float64)[components] + (chol[components] @ z[:, :, None])[..., 0]
        return draws.float().to(self.means.device), components.to(self.means.device)


# --------------------------------------------------------------------------------------------------- priors
@runtime_checkable
class PriorSource(Protocol):
    """Where a prior takes what it needs from the data (:meth:`Prior.fit_from`).

    colddiff's data modules (:class:`~colddiff.data.ImageDataModule`) and
    :class:`~colddiff.datasets.DatasetSource` (datasets given directly, as the command-line tools do) implement it.
    """

    def prior_images(self, limit: int) -> Tensor:
        """Up to ``limit`` clean training images ``(N, C, H, W)`` in ``[0, 1]``, without augmentation."""
        ...

    def partner_dataset(self) -> Any:
        """The partner images of a mixing model: a dataset of ``(C, H, W)`` tensors in ``[0, 1]``."""
        ...


@dataclass
class PriorSample:
    """A batch of start states: ``x_T`` ``(n, C, H, W)``, the degradation ``params`` that go with it, and one
    provenance record per image."""

    x_T: Tensor
    params: dict[str, Tensor] = field(default_factory=dict)
    provenance: list[dict] = field(default_factory=list)


class Prior(RecordsInit, nn.Module):
    """Base class: a distribution over start states ``x_T``.

    ``needs_fit`` priors are fitted from clean training images with :meth:`fit`.  :meth:`fit_from` is the one hook
    through which any prior gets what it needs from the data (the Lightning module calls it at the start of training
    if the prior is not fitted yet; ``sample.py generate --fit-prior`` and the evaluation call it with datasets).
    """

    needs_fit: bool = False
    #: the degradation params each draw carries (:attr:`PriorSample.params`); a model checks that they are the
    #: params its degradation takes (:func:`colddiff.pipeline.check_prior`)
    param_keys: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("fitted", torch.tensor(not self.needs_fit))

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,  # type: ignore[override]
                              unexpected_keys, error_msgs):
        # a fitted prior whose stored state lacks a tensor is refused by name (one line), not by a list of keys
        _require_stored(self, state_dict, prefix, strict)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def fit(self, images: Tensor | Iterable[Tensor]) -> Prior:
        """Fit to clean images in ``[0, 1]`` (a tensor ``(N, C, H, W)`` or an iterable of batches)."""
        self.fitted.fill_(True)
        return self

    def bind(self, degradation: Any) -> None:
        """Called when a model is built with this prior and its degradation (after their params are checked to
        agree); a prior that needs the degradation to fit (:class:`FinalStatePrior`) keeps it.  Default: nothing."""

    def fit_from(self, source: PriorSource, limit: int = 10_000) -> Prior:
        """Make the prior ready from a data source: fit on up to ``limit`` of its clean training images if the prior
        is fitted from data (``needs_fit``); priors that need nothing from the data return at once."""
        if self.needs_fit:
            self.fit(source.prior_images(limit))
        return self

    def sample(self, n: int, shape: Sequence[int], generator: torch.Generator | None = None) -> PriorSample:
        """Draw ``n`` start states of image shape ``(C, H, W)``."""
        raise NotImplementedError

    def _check_sample(self, n: int, shape: Sequence[int]) -> tuple[int, int, int]:
        if not self.is_fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted: fit it on training images first "
                               "(training does this automatically; sample.py has --fit-prior)")
        check_positive_int(n, "n", f"{type(self).__name__}.sample")
        if len(shape) != 3:
            raise ValueError(f"{type(self).__name__}.sample: shape must be (C, H, W), got {tuple(shape)}")
        c, h, w = (int(s) for s in shape)
        return c, h, w

    @staticmethod
    def _collect(images: Tensor | Iterable[Tensor], limit: int | None = None) -> Tensor:
        if isinstance(images, Tensor):
            batches = [images]
        else:
            batches, count = [], 0
            for batch in images:
                batch = unpack_batch(batch)[0]
                batches.append(batch if batch.ndim == 4 else batch[None])
                count += len(batches[-1])
                if limit is not None and count >= limit:
                    break
        if not batches:
            raise ValueError("cannot fit a prior on no images")
        data = torch.cat([b.float() for b in batches])
        if data.ndim != 4:
            raise ValueError(f"prior fit expects images (N, C, H, W), got {tuple(data.shape)}")
        return data[:limit] if limit is not None else data


class _GMMStatePrior(Prior):
    """A GMM over a low-dimensional summary of images, decoded back to a start state."""

    needs_fit = True

    def __init__(self, channels: int, num_components: int, noise_std: float, summary_dim: int) -> None:
        super().__init__()
        if noise_std < 0:
            raise ValueError(f"{type(self).__name__}: noise_std must be >= 0, got {noise_std}")
        self.channels, self.noise_std = channels, float(noise_std)
        self.gmm = GaussianMixture(num_components, summary_dim)

    def summary(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, summary: Tensor, shape: tuple[int, int, int]) -> Tensor:
        raise NotImplementedError

    def fit(self, images: Tensor | Iterable[Tensor], limit: int | None = 50_000, seed: int = 0) -> Prior:
        data = self._collect(images, limit)
        if data.shape[1] != self.channels:
            raise ValueError(f"{type(self).__name__}: expected {self.channels}-channel images, got {data.shape[1]}")
        self._fit_summaries(self.summary(data), seed)
        self.fitted.fill_(True)
        return self

    def _fit_summaries(self, summaries: Tensor, seed: int) -> None:
        """Fit the distribution of the summaries (here a GMM; subclasses may use another density)."""
        self.gmm.fit(summaries.to(self.gmm.means.device), seed=seed)

    def _draw_summaries(self, n: int, generator: torch.Generator | None) -> tuple[Tensor, list[dict[str, int]]]:
        """``n`` summaries and, for each, what the provenance records of its draw."""
        summary, components = self.gmm.sample(n, generator)
        return summary, [{"component": int(k)} for k in components]

    def sample(self, n: int, shape: Sequence[int], generator: torch.Generator | None = None) -> PriorSample:
        c, h, w = self._check_sample(n, shape)
        if c != self.channels:
            raise ValueError(f"{type(self).__name__}: fitted for {self.channels} channels, asked for {c}")
        summary, draws = self._draw_summaries(n, generator)
        x_T = self.decode(summary, (c, h, w))
        if self.noise_std > 0:
            x_T = x_T + self.noise_std * randn(tuple(x_T.shape), generator, x_T)
        provenance = [{"source": "prior", "prior": type(self).__name__, **draw} for draw in draws]
        return PriorSample(x_T, {}, provenance)


class ChannelMeanPrior(_GMMStatePrior):
    """Blur generation: a Gaussian (``num_components=1``, the paper) or GMM over per-channel spatial means.

    Args:
        channels: image channels.
        num_components: mixture components.
        noise_std: symmetry-breaking Gaussian noise added to the constant start image (the paper: 0.002).
    """

    def __init__(self, channels: int = 3, num_components: int = 1, noise_std: float = 0.002) -> None:
        super().__init__(channels, num_components, noise_std, channels)

    def summary(self, images: Tensor) -> Tensor:
        return images.mean(dim=(-2, -1))

    def decode(self, summary: Tensor, shape: tuple[int, int, int]) -> Tensor:
        c, h, w = shape
        return summary[:, :, None, None].expand(-1, c, h, w).clone()


class LowResPrior(_GMMStatePrior):
    """Pixelation generation: a GMM over the training images at the final low resolution.

    Args:
        channels: image channels.
        low_size: side of the low-resolution images (``image_size / 2**T`` for halving pixelation).
        num_components: mixture components.
        noise_std: Gaussian noise added to the start state.
    """

    def __init__(self, channels: int = 3, low_size: int = 4, num_components: int = 1, noise_std: float = 0.0) -> None:
        super().__init__(channels, num_components, noise_std, channels * low_size * low_size)
        self.low_size = int(low_size)

    def summary(self, images: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(images, self.low_size).flatten(1)

    def decode(self, summary: Tensor, shape: tuple[int, int, int]) -> Tensor:
        c, h, w = shape
        if h % self.low_size or w % self.low_size:
            raise ValueError(f"LowResPrior: {h}x{w} images are not a multiple of the low size {self.low_size}")
        low = summary.reshape(-1, c, self.low_size, self.low_size)
        return F.interpolate(low, size=(h, w), mode="nearest")


class LowResKDEPrior(LowResPrior):
    """Pixelation generation from a kernel density estimate over the training images at the final low resolution.

    A start state is the low-resolution version of a training image drawn at random, plus Gaussian noise of standard
    deviation ``bandwidth`` on the low-resolution pixels (``p(z) = 1/N sum_i N(z; z_i, h^2 I)``), upsampled.  Unlike a
    Gaussian mixture with few components it keeps every mode of the data's coarse shapes; unlike one with many
    components its spread is set explicitly by ``bandwidth``.  The provenance records which fitted image a start
    state came from (``fit_index``: its position among the images the prior was fitted on), for replication audits:
    a generated image follows the coarse shape of a training image by construction.

    The fitted low-resolution images (at most ``max_samples``, a seeded random subset) are kept in a buffer, so they
    are saved in checkpoints and exports (``max_samples x channels x low_size^2`` floats).

    Args:
        channels: image channels.
        low_size: side of the low-resolution images.
        bandwidth: standard deviation of the kernel, in ``[0, 1]`` intensity units (0: the training thumbnails as they
            are).
        noise_std: Gaussian noise added to the upsampled start state.
        max_samples: the most low-resolution images kept.
    """

    def __init__(self, channels: int = 3, low_size: int = 4, bandwidth: float = 0.05, noise_std: float = 0.0,
                 max_samples: int = 10_000) -> None:
        super().__init__(channels, low_size, 1, noise_std)
        if not bandwidth >= 0:
            raise ValueError(f"LowResKDEPrior: bandwidth must be >= 0, got {bandwidth}")
        self.bandwidth = float(bandwidth)
        self.max_samples = check_positive_int(max_samples, "max_samples", "LowResKDEPrior")
        self.register_buffer("thumbnails", torch.zeros(0, channels * low_size * low_size))
        self.register_buffer("indices", torch.zeros(0, dtype=torch.long))

    def _fit_summaries(self, summaries: Tensor, seed: int) -> None:
        keep = torch.randperm(len(summaries), generator=torch.Generator().manual_seed(seed))[: self.max_samples]
        keep = keep.sort().values
        self.thumbnails = summaries[keep].to(self.thumbnails.device)
        self.indices = keep.to(self.indices.device)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,  # type: ignore[override]
                              unexpected_keys, error_msgs):
        _require_stored(self, state_dict, prefix, strict)
        self._check_stored(state_dict, prefix)
        # how many images were kept is known only from the file: take the stored buffers' shapes
        for name in ("thumbnails", "indices"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _check_stored(self, state_dict: Mapping[str, Any], prefix: str) -> None:
        """The stored thumbnails and indices must fit this prior's config and each other (checked before loading:
        a refused state changes nothing)."""
        thumbnails, indices = state_dict.get(prefix + "thumbnails"), state_dict.get(prefix + "indices")
        fitted = state_dict.get(prefix + "fitted")
        dim = self.channels * self.low_size * self.low_size
        if thumbnails is not None:
            if not isinstance(thumbnails, Tensor) or thumbnails.ndim != 2 or thumbnails.shape[1] != dim \
                    or not thumbnails.is_floating_point():
                got = f"{tuple(thumbnails.shape)} {thumbnails.dtype}" if isinstance(thumbnails, Tensor) else \
                    type(thumbnails).__name__
                raise _stored_state_error(self, prefix, f"the stored thumbnails must be float (N, {dim}) for channels="
                                                        f"{self.channels}, low_size={self.low_size}; got {got}")
        if indices is not None:
            if not isinstance(indices, Tensor) or indices.ndim != 1 or indices.is_floating_point() \
                    or bool((indices < 0).any()):
                got = f"{tuple(indices.shape)} {indices.dtype}" if isinstance(indices, Tensor) else \
                    type(indices).__name__
                raise _stored_state_error(self, prefix, f"the stored indices must be non-negative integers (N,); got "
                                                        f"{got}")
        if thumbnails is not None and indices is not None and len(thumbnails) != len(indices):
            raise _stored_state_error(self, prefix, f"{len(thumbnails)} stored thumbnails but {len(indices)} indices "
                                                    "(one per thumbnail)")
        if isinstance(fitted, Tensor) and fitted.numel() == 1 and bool(fitted) and thumbnails is not None \
                and len(thumbnails) == 0:
            raise _stored_state_error(self, prefix, "the prior is marked fitted but stores no thumbnails (it would "
                                                    "have nothing to draw)")

    def _draw_summaries(self, n: int, generator: torch.Generator | None) -> tuple[Tensor, list[dict[str, int]]]:
        choice = randint(len(self.thumbnails), (n,), generator, self.thumbnails)
        summary = self.thumbnails[choice]
        if self.bandwidth > 0:
            summary = summary + self.bandwidth * randn(tuple(summary.shape), generator, summary)
        return summary, [{"fit_index": int(self.indices[i])} for i in choice.tolist()]


class GaussianNoisePrior(Prior):
    """Hot diffusion: ``x_T = 0.5 + 0.5 * noise``, ``noise ~ N(0, I)`` (params ``{"noise": noise}``)."""

    param_keys = ("noise",)

    def sample(self, n: int, shape: Sequence[int], generator: torch.Generator | None = None) -> PriorSample:
        c, h, w = self._check_sample(n, shape)
        noise = randn((n, c, h, w), generator, self.fitted.new_empty(0, dtype=torch.float32))
        return PriorSample(0.5 + 0.5 * noise, {"noise": noise}, [{"source": "prior", "prior": "GaussianNoise"}] * n)


class ConstantColourPrior(Prior):
    """Mask-based generation: a random constant colour, each channel uniform in ``[low, high]``
    (params ``{"fill": colour}`` for ``GaussianMask(reverse=True, fill="random")``)."""

    param_keys = ("fill",)

    def __init__(self, low: float = 0.25, high: float = 0.75) -> None:
        super().__init__()
        if not 0 <= low <= high <= 1:
            raise ValueError(f"ConstantColourPrior needs 0 <= low <= high <= 1, got {low}, {high}")
        self.low, self.high = float(low), float(high)

    def sample(self, n: int, shape: Sequence[int], generator: torch.Generator | None = None) -> PriorSample:
        c, h, w = self._check_sample(n, shape)
        colour = self.low + (self.high - self.low) * rand((n, c, 1, 1), generator,
                                                          self.fitted.new_empty(0, dtype=torch.float32))
        provenance = [{"source": "prior", "prior": "ConstantColour", "colour": col.flatten().tolist()}
                      for col in colour]
        return PriorSample(colour.expand(n, c, h, w).clone(), {"fill": colour}, provenance)


class SourceImagePrior(Prior):
    """Mixing ("animorphosis"): the start state is an image of the partner dataset (params ``{"partner": image}``).

    The images themselves are not stored in checkpoints; :meth:`attach` gives the prior a dataset (the partner split
    of a :class:`~colddiff.data.PairedFolderDataModule`, or any dataset of ``(C, H, W)`` tensors in ``[0, 1]``).
    Provenance records the dataset index (and file path where the dataset has ``files``).
    """

    param_keys = ("partner",)

    def __init__(self) -> None:
        super().__init__()
        self.dataset = None

    @property
    def is_fitted(self) -> bool:
        return self.dataset is not None

    def attach(self, dataset) -> SourceImagePrior:
        if len(dataset) == 0:
            raise ValueError("SourceImagePrior: the partner dataset is empty")
        self.dataset = dataset
        return self

    def fit(self, images, limit: int | None = None) -> Prior:
        return self.attach(images)

    def fit_from(self, source: PriorSource, limit: int = 10_000) -> Prior:
        """Attach the source's partner images (``limit`` does not apply: every partner image can be drawn)."""
        return self.attach(source.partner_dataset())

    def sample(self, n: int, shape: Sequence[int], generator: torch.Generator | None = None) -> PriorSample:
        if self.dataset is None:
            raise RuntimeError("SourceImagePrior has no partner images: call attach(dataset) (sample.py: "
                               "--partner-root)")
        c, h, w = self._check_sample(n, shape)
        indices = randint(len(self.dataset), (n,), generator, self.fitted.new_empty(0, dtype=torch.float32))
        images = torch.stack([self.dataset[int(i)] for i in indices])
        if images.shape[1:] != (c, h, w):
            raise ValueError(f"SourceImagePrior: partner images have shape {tuple(images.shape[1:])}, need {(c, h, w)}")
        files = getattr(self.dataset, "files", None)
        provenance = [{"source": "partner", "index": int(i), **({"path": str(files[int(i)])} if files else {})}
                      for i in indices]
        return PriorSample(images.to(self.fitted.device), {"partner": images.to(self.fitted.device)}, provenance)


class FinalStatePrior(Prior):
    """Start states from the training data's own final states: ``x_T = D(x, T) + noise_std * eps`` for a training
    image ``x`` drawn at random, a kernel density estimate over the degraded training set with bandwidth
    ``noise_std``.

    This is Inverse Heat Dissipation's prior (Rissanen et al., arXiv 2206.13397; their code draws training images
    blurred to level ``K`` and adds ``delta`` noise, ``delta = 0.01`` for MNIST), and it serves any deterministic
    degradation whose final state keeps something of the image.  It needs the model's degradation, which it is given
    when the model is built (:meth:`bind`).  The final states of at most ``max_images`` training images (a seeded
    random subset) are kept in a buffer, so they travel in checkpoints and exports (``max_images x C x H x W`` floats;
    4 MB for 1,000 images of 32 x 32 RGB).  The provenance records which fitted image a start state came from.

    Args:
        noise_std: standard deviation of the noise added to a final state (the kernel's bandwidth).
        max_images: the most final states kept.
    """

    needs_fit = True

    def __init__(self, noise_std: float = 0.01, max_images: int = 2_000) -> None:
        super().__init__()
        if not noise_std >= 0:
            raise ValueError(f"FinalStatePrior: noise_std must be >= 0, got {noise_std}")
        self.noise_std = float(noise_std)
        self.max_images = check_positive_int(max_images, "max_images", "FinalStatePrior")
        self.register_buffer("states", torch.zeros(0, 0, 0, 0))
        self.register_buffer("indices", torch.zeros(0, dtype=torch.long))
        self._degradation: Any = None

    def bind(self, degradation: Any) -> None:
        if degradation.param_keys:
            raise ValueError(f"FinalStatePrior needs a deterministic degradation (one that draws no params); "
                             f"{type(degradation).__name__} draws {list(degradation.param_keys)}")
        object.__setattr__(self, "_degradation", degradation)  # not a child module: the model owns it

    def fit(self, images: Tensor | Iterable[Tensor], limit: int | None = None, seed: int = 0) -> Prior:
        """Keep ``D(x, T)`` of up to ``max_images`` of ``images`` (a seeded random subset)."""
        if self._degradation is None:
            raise ValueError("FinalStatePrior is fitted through its model (it needs the model's degradation): build "
                             "the model with it first, or call bind(degradation)")
        data = self._collect(images, limit)
        keep = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[: self.max_images].sort().values
        device = self.states.device
        with torch.no_grad():
            states = torch.cat([self._degradation.final_state(batch.to(device)) for batch in data[keep].split(256)])
        self.states, self.indices = states.to(device), keep.to(device)
        self.fitted.fill_(True)
        return self

    def sample(self, n: int, shape: Sequence[int], generator: torch.Generator | None = None) -> PriorSample:
        c, h, w = self._check_sample(n, shape)
        if tuple(self.states.shape[1:]) != (c, h, w):
            raise ValueError(f"FinalStatePrior holds final states of shape {tuple(self.states.shape[1:])}, but "
                             f"({c}, {h}, {w}) was asked for")
        like = self.states.new_empty(0)
        pick = (rand((n,), generator, like) * len(self.states)).long().clamp(max=len(self.states) - 1)
        x_T = self.states[pick] + self.noise_std * randn((n, c, h, w), generator, like)
        provenance = [{"source": "prior", "prior": "FinalState", "fit_index": int(self.indices[i])} for i in pick]
        return PriorSample(x_T, {}, provenance)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,  # type: ignore[override]
                              unexpected_keys, error_msgs):
        _require_stored(self, state_dict, prefix, strict)
        states, indices = state_dict.get(prefix + "states"), state_dict.get(prefix + "indices")
        if isinstance(states, Tensor) and (states.ndim != 4 or not states.is_floating_point()):
            raise _stored_state_error(self, prefix, f"the stored final states must be float (N, C, H, W), got "
                                                    f"{tuple(states.shape)} {states.dtype}")
        if isinstance(states, Tensor) and isinstance(indices, Tensor) and len(states) != len(indices):
            raise _stored_state_error(self, prefix, f"{len(states)} stored final states but {len(indices)} indices")
        fitted = state_dict.get(prefix + "fitted")
        if isinstance(fitted, Tensor) and fitted.numel() == 1 and bool(fitted) and isinstance(states, Tensor) \
                and len(states) == 0:
            raise _stored_state_error(self, prefix, "the prior is marked fitted but stores no final states")
        for name, value in (("states", states), ("indices", indices)):  # their sizes are known only from the file
            if isinstance(value, Tensor):
                setattr(self, name, torch.empty_like(value, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return f"noise_std={self.noise_std}, images={len(self.states)}"
