"""What the restoration network predicts and how it learns: the objective.

An objective owns three choices that together define training, and one conversion that sampling needs:

* the **prediction** (what the network outputs): the clean image ``x0`` (the cold paper), the noise ``ε``
  (DDPM), ``v`` (Salimans & Ho) or the rectified-flow velocity;
* the **loss** on that output, L1 or L2, optionally weighted per level (min-SNR-γ);
* the **level draw**: which levels ``t`` in ``{1, ..., T}`` a training batch sees;
* ``to_x0``: the network's output turned into ``x0_hat``, which is all the samplers ever receive (they call
  ``restore(x_t, t) -> x0_hat``), optionally clipped to the data range ``[0, 1]`` while sampling (as DDPM does).

Why it matters: the minimiser of L1 is the per-pixel posterior *median* of ``x0`` given ``x_t``, the minimiser of
L2 its posterior *mean*.  Deterministic degradations (blur, masks, pixelation...) are inverted by either, and the
cold paper trains x0 under L1 (``PredictX0``, their default here).  The noise-bearing methods (DDPM/DDIM, IHDM,
Blurring Diffusion, flow matching) are derived for the posterior mean, and their papers train with MSE: ε (DDPM,
Blurring Diffusion), v, a velocity (flow matching), or the less degraded image (IHDM, which colddiff trains as x0
under MSE, the same minimiser); trained with L1 they sample from the wrong distribution (mode collapse, measured in
issue 19).

The ε, v and velocity predictions need the degradation's signal and noise coefficients: the degradation must be a
:class:`~colddiff.degradations.base.SignalNoise` operator (Gaussian noise, blur + noise, mixing), whose form in the
paper's centred units ``x~ = 2 x - 1`` is ``x~_t = alpha_t A_t x~0 + sigma_t z~``.  Every target and conversion
below is written in those units (``z~`` is standard normal noise for Gaussian noise, so ε-targets have unit
variance).  A degradation without the form (blur, masks, pixelation) refuses these objectives by name.

Conversions (``o`` the network output, all per sample):

* ``PredictX0``: ``x0_hat = o``.
* ``PredictEpsilon`` (Ho et al., arXiv 2006.11239, eq. 14; target ``z~``):
  ``x~0 = A_t^-1 (x~_t - sigma_t o) / alpha_t``; needs ``alpha_t > 0`` at every level ``t >= 1`` and an invertible
  ``A_t``.
* ``PredictV`` (Salimans & Ho, arXiv 2202.00512, sec. 4 and appendix D; target ``v = alpha_t z~ - sigma_t x~0``):
  ``x~0 = (alpha_t^2 A_t + sigma_t^2)^-1 (alpha_t x~_t - sigma_t o)``, which for ``A_t = I`` and
  ``alpha^2 + sigma^2 = 1`` is their ``x0 = alpha z_t - sigma v``; well posed at every level, zero-SNR included,
  for a signal operator that stays positive (refused for one whose transfer function changes sign: the kernel
  blur; the same holds for the velocity).
* ``PredictVelocity`` (rectified flow / flow matching, Liu et al. arXiv 2209.03003, Lipman et al.
  arXiv 2210.02747; target ``u = z~ - x~0``, the velocity ``d x~_s / ds`` of the linear path
  ``x~_s = (1 - s) x~0 + s z~``): ``x~0 = (alpha_t A_t + sigma_t)^-1 (x~_t - sigma_t o)``, which for the linear
  path (``alpha = 1 - s``, ``sigma = s``) is ``x~0 = x~_s - s u``.

**Loss weighting** ``weighting="min-snr"`` (Hang et al., arXiv 2303.09556, eq. 8): each sample's L2 loss is weighted
so that the loss measured in x0 is weighted by ``min(SNR_t, gamma)``, ``SNR_t = alpha_t^2 / sigma_t^2``: the
weight is ``min(SNR_t, gamma) * c_t^2`` where ``c_t`` is the x0 error (centred units) per unit of output error
(``2`` for x0, whose output is in ``[0, 1]`` units,
``sigma_t / alpha_t`` for ε, ``sigma_t`` for v with ``alpha^2 + sigma^2 = 1``, ``sigma_t / (alpha_t + sigma_t)`` for
the velocity): ``min(SNR, gamma) / SNR`` for ε and ``min(SNR, gamma) / (SNR + 1)`` for v, their equations.  With
a signal operator (``BlurNoise``) the SNR is the noise schedule's ``alpha_t^2 / sigma_t^2`` (each frequency's own SNR
is lower by its transfer function), and schedules that reach zero SNR are refused (level ``T`` would get no weight).

**Level draws** (``levels=``): ``"uniform"``, ``t ~ U{1, ..., T}`` independently per sample (the paper; DDPM's
Algorithm 1); ``"stratified"``, one level from each of ``B`` equal strata of ``[1, T]`` in random order (the
low-discrepancy draw of Kingma et al., arXiv 2107.00630, appendix I.1): the same distribution per sample, lower
variance of the batch loss; ``"speed"``, SpeeD's asymmetric sampling (Wang et al., arXiv 2405.17403, sec. 4.1, as
their code computes it): the levels where the noise coefficient ``sigma_t`` has nearly stopped growing (its increment
below ``1e-4`` per thousandth of the path: the "convergence area" next to pure noise, whose loss is high and teaches
little) are drawn 5 times less often than the others (their ``tanh`` step between weights 0.5 and 2.5); it needs a
noise-bearing degradation, and on a path whose ``sigma_t`` grows at a constant rate (the flow's straight line) it is
the uniform draw; ``end_probability`` moves that share of the draws to the last level ``T`` (InDI's point
mass at the observation, Delbracio & Milanfar, arXiv 2303.11435, sec. 3).  A hot model "trains on 1,000 levels and
samples on 20" by a degradation with ``num_steps=1000`` and ``sample_steps=20`` (the samplers skip levels).

Torch only: no Lightning.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from colddiff._checks import randn
from colddiff._config import RecordsInit
from colddiff.degradations.base import Degradation, Params, SignalNoise

__all__ = ["Objective", "PredictX0", "PredictEpsilon", "PredictV", "PredictVelocity", "PredictPrevious",
           "OBJECTIVES", "default_objective", "resolve_objective", "describe_objective", "LossName", "Weighting",
           "LevelDraw"]

LossName = Literal["l1", "l2"]
Weighting = Literal["none", "min-snr"]
LevelDraw = Literal["uniform", "stratified", "speed"]
Network = Callable[[Tensor, Tensor], Tensor]


def _signal_noise(degradation: Degradation) -> SignalNoise:
    """``degradation`` as the :class:`SignalNoise` operator that :meth:`Objective.check_degradation` has checked it is
    (for the type checker only: no check on the hot path)."""
    return cast(SignalNoise, degradation)


def _view(v: Tensor, like: Tensor) -> Tensor:
    """A per-sample ``(B,)`` coefficient as ``(B, 1, 1, 1)`` in ``like``'s dtype and device."""
    return v.to(device=like.device, dtype=like.dtype)[:, None, None, None]


class Objective(RecordsInit, nn.Module):
    """Base class: what the network predicts (``prediction``), its loss, its level draw, and ``output -> x0_hat``.

    Subclasses set ``prediction`` and implement :meth:`target` and :meth:`to_x0` (and :meth:`x0_error_scale` for
    min-SNR weighting).  An objective holds no weights; it is an ``nn.Module`` so that it travels with the model and
    is built from a config by ``class_path`` like a degradation.

    Args:
        loss: ``"l1"`` (mean absolute error) or ``"l2"`` (mean squared error).
        weighting: ``"none"`` or ``"min-snr"`` (L2 only; needs a noise-bearing degradation).
        snr_gamma: ``gamma`` of min-SNR-γ (their default 5).
        levels: the training level draw, ``"uniform"`` or ``"stratified"``.
        clip_x0: clip ``x0_hat`` to ``[0, 1]`` while sampling (DDPM's ``clip_denoised``); training never clips.
        end_probability: the chance that a training sample is drawn at the last level ``T`` instead (InDI's point
            mass at the observation, ``a / (1 + a)`` with their ``a = 0.5``: 1/3); 0: none.
    """

    #: the name of what the network outputs
    prediction: ClassVar[str] = ""
    #: whether the network's output is the noise itself (ε), which a sampler may read as such
    predicts_noise: ClassVar[bool] = False
    #: whether the objective needs the degradation's signal and noise coefficients (:class:`SignalNoise`)
    needs_signal_noise: ClassVar[bool] = True

    def __init__(self, loss: LossName = "l2", weighting: Weighting = "none", snr_gamma: float = 5.0,
                 levels: LevelDraw = "uniform", clip_x0: bool = False, end_probability: float = 0.0) -> None:
        super().__init__()
        who = type(self).__name__
        if loss not in ("l1", "l2"):
            raise ValueError(f"{who}: loss must be 'l1' or 'l2', got {loss!r}")
        if weighting not in ("none", "min-snr"):
            raise ValueError(f"{who}: weighting must be 'none' or 'min-snr', got {weighting!r}")
        if weighting == "min-snr" and loss != "l2":
            raise ValueError(f"{who}: min-SNR weighting is defined for the L2 loss (Hang et al.), got loss={loss!r}")
        if isinstance(snr_gamma, bool) or not isinstance(snr_gamma, numbers.Real) or not snr_gamma > 0:
            raise ValueError(f"{who}: snr_gamma must be a number > 0, got {snr_gamma!r}")
        if levels not in ("uniform", "stratified", "speed"):
            raise ValueError(f"{who}: levels must be 'uniform', 'stratified' or 'speed', got {levels!r}")
        if not isinstance(clip_x0, bool):
            raise TypeError(f"{who}: clip_x0 must be a bool, got {type(clip_x0).__name__}")
        if isinstance(end_probability, bool) or not isinstance(end_probability, numbers.Real) \
                or not 0 <= end_probability <= 1:
            raise ValueError(f"{who}: end_probability must be a number in [0, 1], got {end_probability!r}")
        self.loss_name, self.weighting, self.snr_gamma = loss, weighting, float(snr_gamma)
        self.levels, self.clip_x0, self.end_probability = levels, clip_x0, float(end_probability)

    # ------------------------------------------------------------------------------------------- binding
    def check_degradation(self, degradation: Degradation) -> None:
        """Raise ``ValueError`` naming the objective and the degradation if this objective cannot train it."""
        needs = self.needs_signal_noise or self.weighting == "min-snr" or self.levels == "speed"
        if not needs:
            return
        if not isinstance(degradation, SignalNoise):
            what = f"{self.prediction}-prediction" if self.needs_signal_noise else \
                "min-SNR weighting" if self.weighting == "min-snr" else "SpeeD's level draw (levels='speed')"
            raise ValueError(
                f"{type(self).__name__} ({what}) needs a degradation with signal and noise coefficients "
                f"(colddiff.degradations.base.SignalNoise: GaussianNoise, FlowNoise, BlurNoise, Mix), but "
                f"{type(degradation).__name__} has none: train it with PredictX0")
        if not (self.needs_signal_noise or self.weighting == "min-snr"):
            return  # SpeeD's draw alone reads sigma_t only
        alpha, sigma = degradation.level_coefficients()
        levels = torch.arange(1, degradation.num_steps + 1)
        if bool((sigma == 0).any()):
            what = "its target" if self.needs_signal_noise else "min-SNR weighting"
            raise ValueError(f"{type(self).__name__}: {what} needs noise at every level t >= 1, but "
                             f"{type(degradation).__name__} has sigma_t = 0 at levels "
                             f"{levels[(sigma == 0).cpu()].tolist()[:10]}: train it with PredictX0")
        if self.needs_signal_noise and not degradation.signal_nonnegative():
            raise ValueError(f"{type(self).__name__} needs a signal operator whose transfer function stays "
                             f"positive, so that its conversion to x0 is well conditioned; "
                             f"{type(degradation).__name__}'s ({degradation!r}) changes sign (the kernel "
                             "blur): use the heat blur, or PredictX0")
        if self.weighting == "min-snr" and bool((alpha == 0).any()):
            raise ValueError(f"{type(self).__name__}: min-SNR weighting gives no weight where SNR_t = 0, and "
                             f"{type(degradation).__name__} has no signal at levels "
                             f"{levels[(alpha == 0).cpu()].tolist()[:10]} (its schedule ends at zero SNR), "
                             "which would never be trained; use a schedule that keeps some signal, or no "
                             "weighting")

    # ---------------------------------------------------------------------------------------- level draw
    def draw_levels(self, batch: int, num_steps: int, device: torch.device | str,
                    generator: torch.Generator | None = None, degradation: Degradation | None = None) -> Tensor:
        """Training levels ``t`` in ``{1, ..., T}``, ``(batch,)`` long (see the module docstring); ``"speed"`` reads
        the degradation's noise coefficients."""
        if self.levels == "speed" and (degradation is None or degradation.num_steps != num_steps):
            raise ValueError("levels='speed' draws from the degradation's noise schedule: pass the degradation")
        gen_device = generator.device if generator is not None else device
        if self.levels == "uniform":  # drawn on the generator's device (the module's draws before objectives existed)
            t = torch.randint(1, num_steps + 1, (batch,), device=gen_device, generator=generator).to(device)
        elif self.levels == "speed":
            weights = self._speed_weights(degradation).to(gen_device)
            t = (torch.multinomial(weights, batch, replacement=True, generator=generator) + 1).to(device)
        else:
            u = torch.rand(batch, generator=generator, device=gen_device, dtype=torch.float64).to(device)
            order = torch.randperm(batch, generator=generator, device=gen_device).to(device)
            strata = (order.double() + u) / batch  # one point in each of the batch's strata of [0, 1)
            t = (strata * num_steps).long().clamp_(0, num_steps - 1) + 1
        if self.end_probability > 0:  # InDI's point mass at the observation (the direct restoration's level)
            at_end = torch.rand(batch, generator=generator, device=gen_device).to(device) < self.end_probability
            t = torch.where(at_end, torch.full_like(t, num_steps), t)
        return t

    @staticmethod
    def _speed_weights(degradation: Degradation) -> Tensor:
        """SpeeD's level weights ``(T,)`` for levels ``1..T``: 2.5 where ``sigma_t`` still grows by at least ``1e-4``
        per thousandth of the path (the central difference of their code, ``np.gradient``), 0.5 where it has nearly
        stopped (the convergence area), float64 on the CPU."""
        _, sigma = _signal_noise(degradation).level_coefficients()
        sigma = torch.cat([sigma.new_zeros(1), sigma]).double().cpu()  # level 0, the clean image: sigma_0 = 0
        increment = torch.gradient(sigma)[0] * degradation.num_steps / 1000
        return torch.where(increment >= 1e-4, 2.5, 0.5)[1:]

    # ------------------------------------------------------------------------------------- conversions
    def target(self, x0: Tensor, t: Tensor, params: Params, degradation: Degradation) -> Tensor:
        """What the network should output for clean images ``x0`` degraded to levels ``t`` with ``params``."""
        raise NotImplementedError

    def to_x0(self, output: Tensor, x_t: Tensor, t: Tensor, degradation: Degradation) -> Tensor:
        """The network's output at ``(x_t, t)`` turned into ``x0_hat`` (in ``[0, 1]`` units, not clipped)."""
        raise NotImplementedError

    def x0_error_scale(self, alpha: Tensor, sigma: Tensor) -> Tensor:
        """How much x0 error one unit of output error makes at coefficients ``(alpha, sigma)`` (for weighting)."""
        raise NotImplementedError

    def restore(self, output: Tensor, x_t: Tensor, t: Tensor, degradation: Degradation) -> Tensor:
        """:meth:`to_x0` and, with ``clip_x0``, clipping to ``[0, 1]``: what the samplers receive."""
        x0_hat = self.to_x0(output, x_t, t, degradation)
        return x0_hat.clamp(0.0, 1.0) if self.clip_x0 else x0_hat

    def to_noise(self, output: Tensor, x_t: Tensor, t: Tensor, x0_hat: Tensor, degradation: Degradation
                 ) -> Tensor | None:
        """The network's noise estimate ``z~_hat`` (centred units) at ``(x_t, t)``: for a noise-bearing degradation,
        the noise that the unclipped ``x0_hat`` implies (:meth:`SignalNoise.noise_estimate`); ε-prediction overrides
        it with the output itself.  ``None`` for a degradation without noise."""
        if not isinstance(degradation, SignalNoise) or not degradation.param_keys:
            return None
        return degradation.noise_estimate(x_t, x0_hat, t)

    def to_previous(self, output: Tensor, x_t: Tensor, t: Tensor, degradation: Degradation) -> Tensor | None:
        """The less degraded image ``D(x0, t - 1)`` when the network predicts it directly (IHDM), else ``None``."""
        return None

    def predict(self, output: Tensor, x_t: Tensor, t: Tensor, degradation: Degradation
                ) -> tuple[Tensor, Callable[[], Tensor | None], Tensor | None]:
        """Everything a sampler may read from one network output: ``(x0_hat, noise_hat, previous)`` —
        :meth:`restore`'s ``x0_hat`` (clipped with ``clip_x0``), the noise estimate of :meth:`to_noise` as a function
        that computes it when a sampler asks (from the unclipped estimate, or the ε output: Blurring Diffusion's step
        uses it and never divides by ``alpha_t d_t``), and :meth:`to_previous`."""
        x0_hat = self.to_x0(output, x_t, t, degradation)
        previous = self.to_previous(output, x_t, t, degradation)
        return ((x0_hat.clamp(0.0, 1.0) if self.clip_x0 else x0_hat),
                lambda: self.to_noise(output, x_t, t, x0_hat, degradation), previous)

    def output_target(self, x0: Tensor, x_t: Tensor, t: Tensor, params: Params, degradation: Degradation) -> Tensor:
        """What the network should output at the training input ``x_t`` (as fed, with any input noise): the
        :meth:`target` (a residual objective also needs ``x_t``)."""
        return self.target(x0, t, params, degradation)

    # -------------------------------------------------------------------------------------------- loss
    def level_weights(self, t: Tensor, degradation: Degradation) -> Tensor | None:
        """Per-sample loss weights ``(B,)`` (``None``: unweighted)."""
        if self.weighting == "none":
            return None
        alpha, sigma = _signal_noise(degradation).coefficients(t)
        snr = alpha**2 / sigma**2
        return (snr.clamp(max=self.snr_gamma) * self.x0_error_scale(alpha, sigma) ** 2).float()

    def loss(self, output: Tensor, target: Tensor, t: Tensor, degradation: Degradation) -> Tensor:
        """The batch loss of ``output`` against ``target`` (mean over pixels, then over the batch, weighted)."""
        output = output.float()
        error = F.l1_loss(output, target, reduction="none") if self.loss_name == "l1" else \
            F.mse_loss(output, target, reduction="none")
        weights = self.level_weights(t, degradation)
        if weights is None:
            return error.mean()
        return (error.flatten(1).mean(1) * weights.to(error.device)).mean()

    def training_loss(self, network: Network, degradation: Degradation, x0: Tensor,
                      context: Mapping[str, Tensor] | None = None, generator: torch.Generator | None = None,
                      input_noise: Tensor | None = None) -> Tensor:
        """One training objective on clean images ``x0``: draw levels and params, degrade (as the network is fed
        it, :meth:`~colddiff.degradations.Degradation.degrade_input`), add ``input_noise[t] * eps`` when given
        (IHDM's noise-augmented training, a ``(T + 1,)`` schedule), run ``network(x_t, t)`` and return the loss."""
        t = self.draw_levels(x0.shape[0], degradation.num_steps, x0.device, generator, degradation)
        params = degradation.make_params(x0, generator, **(context or {}))
        x_t = degradation.degrade_input(x0, t, params)
        if input_noise is not None:
            x_t = x_t + _view(input_noise.index_select(0, t), x_t) * randn(tuple(x_t.shape), generator, x_t)
        return self.loss(network(x_t, t), self.output_target(x0, x_t, t, params, degradation), t, degradation)

    def extra_repr(self) -> str:
        extra = f", {self.weighting} (gamma {self.snr_gamma:g})" if self.weighting != "none" else ""
        return f"loss={self.loss_name!r}{extra}, levels={self.levels!r}, clip_x0={self.clip_x0}"


class PredictX0(Objective):
    """The network predicts the clean image (Cold Diffusion, arXiv 2208.09392, Algorithm 1's ``R``): the default of
    every deterministic degradation, under L1 as the paper trains it.  Works for every degradation.

    Args: as :class:`Objective`, with the paper's ``loss="l1"`` by default.
    """

    prediction = "x0"
    needs_signal_noise = False

    def __init__(self, loss: LossName = "l1", weighting: Weighting = "none", snr_gamma: float = 5.0,
                 levels: LevelDraw = "uniform", clip_x0: bool = False, end_probability: float = 0.0) -> None:
        super().__init__(loss, weighting, snr_gamma, levels, clip_x0, end_probability)

    def target(self, x0: Tensor, t: Tensor, params: Params, degradation: Degradation) -> Tensor:
        return x0

    def to_x0(self, output: Tensor, x_t: Tensor, t: Tensor, degradation: Degradation) -> Tensor:
        return output

    def x0_error_scale(self, alpha: Tensor, sigma: Tensor) -> Tensor:
        return torch.full_like(alpha, 2.0)  # the output is in [0, 1] units, the weighting in centred units


class PredictEpsilon(Objective):
    """The network predicts the noise ``z~`` (ε; DDPM, Ho et al., arXiv 2006.11239, eq. 14, "L_simple" under MSE).

    ``x~0 = A_t^-1 (x~_t - sigma_t o) / alpha_t``.  Refused for schedules with no signal left at some level
    (``alpha_t = 0``, e.g. the cosine schedule's last level: use :class:`PredictV`) and for signal operators that are
    not invertible (the kernel blur of ``BlurNoise``).

    Args: as :class:`Objective` (default L2).
    """

    prediction = "epsilon"
    predicts_noise = True

    def check_degradation(self, degradation: Degradation) -> None:
        super().check_degradation(degradation)
        degradation = _signal_noise(degradation)
        alpha, _ = degradation.level_coefficients()
        if bool((alpha <= 0).any()):
            levels = torch.arange(1, degradation.num_steps + 1)[(alpha <= 0).cpu()].tolist()
            raise ValueError(
                f"PredictEpsilon cannot recover x0 where no signal is left: {type(degradation).__name__} has "
                f"alpha_t = 0 at levels {levels} (its schedule ends at zero SNR: the cosine schedule, the flow's "
                "straight path); use PredictV or PredictVelocity (well posed there), or a schedule that keeps some "
                "signal (DDPM's linear betas, GaussianNoise(schedule='linear'))")
        if not degradation.signal_invertible():
            raise ValueError(f"PredictEpsilon needs an invertible signal operator to recover x0, and "
                             f"{type(degradation).__name__}'s is not ({degradation!r}); use PredictV")

    def target(self, x0: Tensor, t: Tensor, params: Params, degradation: Degradation) -> Tensor:
        return _signal_noise(degradation).noise_of(params).to(x0.dtype)

    def to_x0(self, output: Tensor, x_t: Tensor, t: Tensor, degradation: Degradation) -> Tensor:
        degradation = _signal_noise(degradation)
        alpha, sigma = degradation.coefficients(t)
        y = (2.0 * x_t - 1.0) - _view(sigma, x_t) * output.to(x_t.dtype)
        x0 = degradation.solve_signal(y, t, alpha, torch.zeros_like(alpha))
        return 0.5 + 0.5 * x0

    def to_noise(self, output: Tensor, x_t: Tensor, t: Tensor, x0_hat: Tensor, degradation: Degradation) -> Tensor:
        return output.to(x_t.dtype)

    def x0_error_scale(self, alpha: Tensor, sigma: Tensor) -> Tensor:
        return sigma / alpha


class PredictV(Objective):
    """The network predicts ``v = alpha_t z~ - sigma_t x~0`` (Salimans & Ho, arXiv 2202.00512, sec. 4).

    ``x~0 = (alpha_t^2 A_t + sigma_t^2)^-1 (alpha_t x~_t - sigma_t o)``: well posed for a positive ``A_t`` wherever
    ``sigma_t > 0``, so also at zero terminal SNR; for ``A_t = I`` and a variance-preserving schedule it is their
    ``x0 = alpha z_t - sigma v``.

    Args: as :class:`Objective` (default L2).
    """

    prediction = "v"

    def target(self, x0: Tensor, t: Tensor, params: Params, degradation: Degradation) -> Tensor:
        degradation = _signal_noise(degradation)
        alpha, sigma = degradation.coefficients(t)
        noise = degradation.noise_of(params).to(x0.dtype)
        return _view(alpha, x0) * noise - _view(sigma, x0) * (2.0 * x0 - 1.0)

    def to_x0(self, output: Tensor, x_t: Tensor, t: Tensor, degradation: Degradation) -> Tensor:
        degradation = _signal_noise(degradation)
        alpha, sigma = degradation.coefficients(t)
        y = _view(alpha, x_t) * (2.0 * x_t - 1.0) - _view(sigma, x_t) * output.to(x_t.dtype)
        return 0.5 + 0.5 * degradation.solve_signal(y, t, alpha**2, sigma**2)

    def x0_error_scale(self, alpha: Tensor, sigma: Tensor) -> Tensor:
        return sigma / (alpha**2 + sigma**2)


class PredictVelocity(Objective):
    """The network predicts the rectified-flow velocity ``u = z~ - x~0`` (flow matching with the linear path: Liu et
    al., arXiv 2209.03003, eq. 1; Lipman et al., arXiv 2210.02747, sec. 4.1 with ``sigma_min = 0``).

    ``x~0 = (alpha_t A_t + sigma_t)^-1 (x~_t - sigma_t o)``: on the linear path ``x~_s = (1 - s) x~0 + s z~``
    (:class:`~colddiff.degradations.GaussianNoise` with ``schedule="flow"``) this is ``x~0 = x~_s - s u``, and the
    path's velocity ``d x~_s / ds`` is exactly ``u``.

    Args: as :class:`Objective` (default L2).
    """

    prediction = "velocity"

    def target(self, x0: Tensor, t: Tensor, params: Params, degradation: Degradation) -> Tensor:
        return _signal_noise(degradation).noise_of(params).to(x0.dtype) - (2.0 * x0 - 1.0)

    def to_x0(self, output: Tensor, x_t: Tensor, t: Tensor, degradation: Degradation) -> Tensor:
        degradation = _signal_noise(degradation)
        alpha, sigma = degradation.coefficients(t)
        y = (2.0 * x_t - 1.0) - _view(sigma, x_t) * output.to(x_t.dtype)
        return 0.5 + 0.5 * degradation.solve_signal(y, t, alpha, sigma)

    def x0_error_scale(self, alpha: Tensor, sigma: Tensor) -> Tensor:
        return sigma / (alpha + sigma)


class PredictPrevious(Objective):
    """The network predicts the less degraded image ``D(x0, t - 1)`` as a residual of its input: Inverse Heat
    Dissipation's objective (Rissanen et al., arXiv 2206.13397, eq. 7 and their code's ``losses.py``:
    ``prediction = u_k + net(u_k, k)`` against the clean image blurred to ``k - 1``, under MSE).

    ``previous = x_t + o`` is what Algorithm 1 steps to from level ``t`` to ``t - 1``
    (:func:`colddiff.sampling.sample_naive`; plus the sampling noise ``delta``: IHDM's sampler), and at level 1 it is
    ``x0_hat`` itself.  The network never estimates ``x0`` from a higher level, so ``x0_hat`` at ``t > 1`` is the
    least degraded image it gives, ``D(x0, t - 1)`` (the one-shot "direct" restoration of such a model is one level
    back, not the clean image), and the samplers refuse to skip levels with it (its paper samples on every one of
    its ``K`` levels: train with ``num_steps`` the number of levels to sample).  Their loss sums the squared errors
    over pixels and averages over the batch; the mean over pixels here differs by a constant factor, which Adam's
    updates do not see.  Any degradation (no signal and noise coefficients needed).

    Args: as :class:`Objective` (default L2).
    """

    prediction = "previous"
    needs_signal_noise = False

    def target(self, x0: Tensor, t: Tensor, params: Params, degradation: Degradation) -> Tensor:
        return degradation.degrade_input(x0, t - 1, params)

    def output_target(self, x0: Tensor, x_t: Tensor, t: Tensor, params: Params, degradation: Degradation) -> Tensor:
        return self.target(x0, t, params, degradation) - x_t

    def to_previous(self, output: Tensor, x_t: Tensor, t: Tensor, degradation: Degradation) -> Tensor:
        return x_t + output.to(x_t.dtype)

    def to_x0(self, output: Tensor, x_t: Tensor, t: Tensor, degradation: Degradation) -> Tensor:
        return x_t + output.to(x_t.dtype)

    def x0_error_scale(self, alpha: Tensor, sigma: Tensor) -> Tensor:
        return torch.full_like(alpha, 2.0)


#: objectives by their ``prediction``, the name a degradation's
#: :attr:`~colddiff.degradations.Degradation.default_objective_spec` uses
OBJECTIVES: dict[str, type[Objective]] = {cls.prediction: cls for cls in (PredictX0, PredictEpsilon, PredictV,
                                                                          PredictVelocity, PredictPrevious)}


def default_objective(degradation: Degradation) -> Objective:
    """The objective ``degradation`` is trained with when a model names none.

    The one a degradation declares (:meth:`~colddiff.degradations.Degradation.default_objective`, its
    ``default_objective_spec``): x0 under L1 for the deterministic degradations (the cold paper) and for mixing,
    InDI's for :class:`~colddiff.degradations.Interpolation`, the velocity for
    :class:`~colddiff.degradations.FlowNoise`.  A noise-bearing operator that declares none gets what its paper
    trains, decided here from its :class:`~colddiff.degradations.base.SignalNoise` properties
    (:func:`_signal_noise_objective`)."""
    spec = degradation.default_objective()
    if spec is None:
        if not isinstance(degradation, SignalNoise):
            raise ValueError(f"{type(degradation).__name__}.default_objective() names no objective, and only a "
                             "noise-bearing (SignalNoise) degradation has one derived from its properties")
        return _signal_noise_objective(degradation)
    name, init_args = spec
    if name not in OBJECTIVES:
        raise ValueError(f"{type(degradation).__name__}.default_objective() names {name!r}; known objectives: "
                         f"{sorted(OBJECTIVES)}")
    return OBJECTIVES[name](**init_args)


def _signal_noise_objective(degradation: SignalNoise) -> Objective:
    """What the noise-bearing methods' papers train, from the operator's properties: ε-prediction under MSE (DDPM, Ho
    et al. arXiv 2006.11239, eq. 14, with ``x0_hat`` clipped to the data range while sampling; Blurring Diffusion,
    arXiv 2209.05557, without: its sampler works on ``eps_hat`` frequency by frequency, and an ``x0_hat`` that an ε or
    v output gives through a signal operator divides by ``alpha_t d_t``, so clipping it in pixel space would spread
    the amplified frequencies' errors over every pixel), where every level keeps some signal (``alpha_t > 0``) and
    the signal operator is invertible; where the schedule ends with no signal at all (``alpha_T = 0``, as the cosine
    schedule here), ε cannot determine x0 at that level and the default is v-prediction (Salimans & Ho, arXiv
    2202.00512), the remedy of Lin et al. (arXiv 2305.08891) for zero terminal SNR.  An operator with noise-free
    levels (``sigma_t = 0``, e.g. ``BlurNoise(noise="none")``) is deterministic there: x0 under L1 (the cold
    paper's); one whose signal operator changes sign (the kernel blur) has no well-conditioned ε or v conversion:
    x0 under MSE (the posterior mean)."""
    alpha, sigma = degradation.level_coefficients()
    if not bool((sigma > 0).all()):  # noise-free levels: deterministic, the cold paper's objective
        return PredictX0(loss="l1")
    if not degradation.signal_nonnegative():  # no well-conditioned conversion from eps or v: the mean of x0 directly
        return PredictX0(loss="l2", clip_x0=True)
    clip = degradation.signal_is_identity  # never clip an x0_hat that went through a signal operator's inverse
    if bool((alpha > 0).all()) and degradation.signal_invertible():
        return PredictEpsilon(loss="l2", clip_x0=clip)
    return PredictV(loss="l2", clip_x0=clip)


def resolve_objective(objective: Objective | None, loss: str | None, degradation: Degradation) -> Objective:
    """The objective a model trains: ``objective`` if given, x0-prediction with ``loss`` if that is given instead
    (the configs and checkpoints from before objectives existed), else the degradation's default."""
    if objective is not None and loss is not None:
        raise ValueError(f"give objective or loss, not both (loss={loss!r} means PredictX0(loss={loss!r}))")
    if loss is not None:
        return PredictX0(loss=loss)  # type: ignore[arg-type]
    return default_objective(degradation) if objective is None else objective


def describe_objective(objective: Objective) -> dict[str, Any]:
    """A short, JSON-ready description for reports: prediction, loss, weighting, levels, clipping."""
    return {"prediction": objective.prediction, "loss": objective.loss_name, "weighting": objective.weighting,
            "levels": objective.levels, "clip_x0": objective.clip_x0, "end_probability": objective.end_probability}
