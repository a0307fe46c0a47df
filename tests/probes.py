"""Callbacks that training subprocesses load from their config (``tests.probes.X``) to report their state."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L
import torch


def tensor_digest(tensors) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class StateProbe(L.Callback):
    """Writes, per rank, the training state at the start of fitting and at its end, and a heartbeat every step."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)

    def _state(self, trainer: L.Trainer, module) -> dict:
        optimizer = trainer.optimizers[0]
        first = next(iter(optimizer.state.values()), {})
        return {
            "global_step": trainer.global_step,
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "adam_step": float(first["step"]) if "step" in first else 0.0,
            "ema": tensor_digest(module.ema_network.parameters()),
            "weights": tensor_digest(module.network.parameters()),
            "torch_rng": tensor_digest([torch.get_rng_state()]),
        }

    def setup(self, trainer, module, stage) -> None:
        # run after the model's callbacks (RNGState restores the RNG in its on_train_start)
        trainer.callbacks.remove(self)
        trainer.callbacks.append(self)

    def on_train_start(self, trainer, module) -> None:
        (self.out / f"start-rank{trainer.global_rank}.json").write_text(json.dumps(self._state(trainer, module)))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        (self.out / f"heartbeat-rank{trainer.global_rank}.txt").write_text(str(trainer.global_step))

    def on_train_end(self, trainer, module) -> None:
        (self.out / f"end-rank{trainer.global_rank}.json").write_text(json.dumps(self._state(trainer, module)))
