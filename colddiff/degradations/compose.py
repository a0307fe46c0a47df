"""Several degradations driven by the same level ``t`` (e.g. blur then noise)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from colddiff.degradations.base import Degradation, Params

__all__ = ["Compose"]


class Compose(Degradation):
    """``D(x, t) = D_n(... D_2(D_1(x, t), t) ..., t)``, itself a degradation.

    Params of the parts are kept in one flat dict under ``"<index>.<key>"``; context (such as a mixing
    ``partner``) is routed to the parts that accept it.  During sampling only the last part can re-estimate its params
    (it is the one whose output is the current state).

    Exact and observed forms: :meth:`degrade` chains the parts' exact :meth:`degrade`; the observed form
    (:meth:`degrade_input`, the module call) applies the parts' :meth:`observe` maps, in order, to the composite's
    exact output, never between parts.  An observation such as 8-bit rounding models how the final image is measured
    or stored, not an intermediate image that nobody stores; so a composition with any quantising part is rounded
    once, at the end (rounding is idempotent, so several quantising parts still round once).

    Args:
        degradations: the parts, in order of application; all with the same ``num_steps``.

    Shape:
        ``x0``: ``(B, C, H, W)``; ``t``: ``int`` or ``(B,)``; output: ``(B, C, H, W)``.
    """

    def __init__(self, degradations: Sequence[Degradation]) -> None:
        parts = list(degradations)
        if not parts:
            raise ValueError("Compose needs at least one degradation, got none")
        for i, part in enumerate(parts):
            if not isinstance(part, Degradation):
                raise TypeError(f"Compose: part {i} must be a Degradation, got {type(part).__name__}")
        steps = {part.num_steps for part in parts}
        if len(steps) != 1:
            raise ValueError(f"Compose: all parts must have the same num_steps, got {[p.num_steps for p in parts]}")
        channels = {part.channels for part in parts} - {None}
        if len(channels) > 1:
            raise ValueError(f"Compose: parts accept different channel counts {sorted(channels)}")
        super().__init__(steps.pop(), channels.pop() if channels else None)
        self.degradations = nn.ModuleList(parts)
        self.param_keys = tuple(f"{i}.{k}" for i, part in enumerate(parts) for k in part.param_keys)
        self.context_keys = tuple(sorted({k for part in parts for k in part.context_keys}))

    def _split(self, params: Params) -> list[Params]:
        parts: list[Params] = [{} for _ in self.degradations]
        for key, value in params.items():
            index, name = key.split(".", 1)
            parts[int(index)][name] = value
        return parts

    @staticmethod
    def _join(parts: list[Params]) -> Params:
        return {f"{i}.{k}": v for i, part in enumerate(parts) for k, v in part.items()}

    def make_params(self, x0: Tensor, generator: torch.Generator | None = None, **context: Tensor) -> Params:
        self._check_context(context)
        return self._join([
            part.make_params(x0, generator, **{k: v for k, v in context.items() if k in part.context_keys})
            for part in self.degradations
        ])

    def unknown_params_reason(self) -> str | None:
        for i, part in enumerate(self.degradations):
            reason = part.unknown_params_reason()
            if reason is not None:
                return f"Compose part {i}: {reason}"
        return None

    def check_image_size(self, height: int, width: int) -> None:
        for part in self.degradations:
            part.check_image_size(height, width)

    def check_input(self, x, name: str = "x0") -> Tensor:
        for part in self.degradations:
            x = part.check_input(x, name)
        return x

    def check_params(self, params, x: Tensor) -> Params:
        params = super().check_params(params, x)
        return self._join([part.check_params(p, x) for part, p in zip(self.degradations, self._split(params))])

    def degrade(self, x0: Tensor, t: Tensor, params: Params) -> Tensor:
        x = x0
        for part, part_params in zip(self.degradations, self._split(params)):
            x = part.degrade(x, t, part_params)
        return x

    def observe(self, y: Tensor, t: Tensor) -> Tensor:
        """The parts' observations, in order, applied to the composite's exact output."""
        for part in self.degradations:
            y = part.observe(y, t)
        return y

    def update_params(self, x_t: Tensor, x0_hat: Tensor, t: Tensor, params: Params) -> Params:
        parts = self._split(params)
        y = x0_hat
        for part, part_params in zip(self.degradations[:-1], parts[:-1]):
            y = part.degrade(y, t, part_params)
        parts[-1] = self.degradations[-1].update_params(x_t, y, t, parts[-1])
        return self._join(parts)

    def extra_repr(self) -> str:
        return f"num_steps={self.num_steps}"
