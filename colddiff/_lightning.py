"""Every use of a private Lightning API in colddiff, each behind one small function.

Lightning gives no public way to do these; each function names the Lightning version it was written for, so an
upgrade that breaks one breaks it here, in one place, with a clear error.
"""

from __future__ import annotations

from typing import Any

__all__ = ["built_by_cli", "fit_loop_dataloader"]


def built_by_cli() -> bool:
    """Whether the module being constructed is built by LightningCLI (which records its own hyper-parameters).

    Written for Lightning 2.2–2.6: LightningCLI sets the context variable
    ``lightning.pytorch.core.mixins.hparams_mixin._given_hyperparameters`` while it instantiates the model.
    """
    from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

    return _given_hyperparameters.get() is not None


def fit_loop_dataloader(trainer: Any) -> Any:
    """The training dataloader a fit loop iterates, available before the first batch.

    Written for Lightning 2.2–2.6: ``trainer.fit_loop._data_source.dataloader()``.
    """
    return trainer.fit_loop._data_source.dataloader()
