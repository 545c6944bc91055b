"""One training step of F for every method of Tables 1-2, with Alg. 1's encoder rounds for `proposed`.

Methods (Sec. 5.2-5.3):
* `none`       no augmentation: each step sees the batch of originals.
* `heuristic`  "random compositions of the given set of transformation operations" (`heuristic.compose`):
               each step sees the originals and one heuristic transform of each (2B images).
* `proposed`   Alg. 1: x~ = G(x, E(x)) with G fixed (trained once per data set, `transforms.fit_generator`)
               and E trained to minimise the mean I_aug of its samples (Eq. 15, 19; last-layer form of Sec. 3.4)
               through the current, fixed F; F trains on the originals and their x~ (2B images).

Alg. 1 is not in the text we have, so its schedule is ours (README): the first `warmup_fraction` of the
epochs on the originals only (the influence of an untrained F says nothing), then `rounds` encoder rounds,
each at the start of an epoch, evenly spaced over the rest (`round_epochs`):
s_val = (H + damping I)^-1 grad L(z^val) on F's top layer (H over the train
originals' features, z^val the dev split), then `encoder.steps` Adam steps on E (Appendix B: lr 0.01,
betas (0.9, 0.99), batch 128) with F and G fixed; s_val stays fixed within the round (Sec. 3.4). E persists
across rounds. The originals are never dropped (Sec. 3.3: "it does not mean that original samples are excluded").
Random crop (and, for CIFAR-10, horizontal flip) is applied to every image of the augmenting methods (Sec. 5.2-5.3:
"we additionally use the random cropping technique as in Ratner et al."; we give `heuristic` the same, so the two
differ only in the learned part), never to `none`.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.train.batches import ArrayData, Batch
from papers.influence.heuristic import compose, crop_flip
from papers.influence.influence import LastLayerInfluence
from papers.influence.transforms import Encoder, Generator, encoder_loss

METHODS = ("none", "heuristic", "proposed")


def to_unit(x: Tensor) -> Tensor:
    """uint8 pixels -> float in [0, 1] (floats pass through)."""
    return x.float() / 255 if x.dtype == torch.uint8 else x


def features_of(model: nn.Module, x: Tensor, batch_size: int = 1000) -> Tensor:
    with torch.no_grad():
        return torch.cat([model.features(to_unit(x[i:i + batch_size])) for i in range(0, len(x), batch_size)])


class StepSchedule:
    """lr * lr_decay ** (milestones <= epoch), epoch = step // steps_per_epoch (0-based)."""

    def __init__(self, lr: float, lr_decay: float, milestones: list[int], steps_per_epoch: int):
        self.lr, self.lr_decay, self.milestones = lr, lr_decay, sorted(milestones)
        self.steps_per_epoch = max(int(steps_per_epoch), 1)

    def lr_at(self, step: int) -> float:
        return self.lr * self.lr_decay ** sum(m <= step // self.steps_per_epoch for m in self.milestones)


class AugmentStep:
    """F's step for one method; `proposed` also runs the encoder rounds. State (step count, the augmentation
    generator, E and its optimizer, the round log) goes into the run checkpoint."""

    def __init__(self, method: str, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: StepSchedule, *,
                 crop_pad: int, flip: bool, heuristic_ops: list[str], heuristic_length: int, seed: int,
                 generator: Generator | None = None, encoder: Encoder | None = None, encoder_cfg: dict | None = None,
                 train: ArrayData | None = None, dev: ArrayData | None = None, epochs: int = 1,
                 on_round: Callable[[AugmentStep, dict], None] | None = None):
        if method not in METHODS:
            raise ValueError(f"method: expected one of {list(METHODS)}, got {method!r}")
        if method == "proposed" and (generator is None or encoder is None or train is None or dev is None):
            raise ValueError("proposed: needs the fixed generator G, an encoder E, the train and the dev split")
        self.method, self.model, self.optimizer, self.schedule = method, model, optimizer, schedule
        self.crop_pad, self.flip = int(crop_pad), bool(flip)
        self.ops, self.length = list(heuristic_ops), int(heuristic_length)
        self.gen = torch.Generator().manual_seed(int(seed))
        self.g, self.e, self.ecfg, self.train, self.dev = generator, encoder, encoder_cfg or {}, train, dev
        self.e_opt = (torch.optim.Adam(encoder.parameters(), lr=self.ecfg["lr"], betas=tuple(self.ecfg["betas"]))
                      if encoder is not None else None)
        self.steps, self.epochs = 0, int(epochs)
        self.on_round = on_round     # an observer called after each encoder round (`encoder_probe`); no effect on F
        self.rounds: list[dict] = []

    # ------------------------------------------------------------------------------ Alg. 1, encoder
    def round_epochs(self, epochs: int) -> list[int]:
        """0-based epochs at whose start an encoder round runs: `rounds` evenly spaced after the warmup."""
        warm = round(self.ecfg["warmup_fraction"] * epochs)
        k = self.ecfg["rounds"]
        return sorted({min(warm + round(i * (epochs - warm) / k), epochs - 1) for i in range(k)})

    def _round_due(self) -> bool:
        if self.method != "proposed":
            return False
        spe = self.schedule.steps_per_epoch
        return self.steps % spe == 0 and self.steps // spe in self.round_epochs(self.epochs)

    def fit_encoder(self) -> dict:
        """One encoder round: s_val on F's top layer, then encoder.steps Adam steps on mean I_aug."""
        t0 = time.perf_counter()
        model, cfg = self.model, self.ecfg
        model.eval()
        inf = LastLayerInfluence(model.fc.weight.detach().cpu(), model.fc.bias.detach().cpu(),
                                 features_of(model, self.train.x).cpu(), damping=cfg["damping"])
        s_val = inf.s_val(features_of(model, self.dev.x).cpu(), self.dev.y.cpu())
        model.requires_grad_(False)
        losses = []
        try:
            for _ in range(cfg["steps"]):
                idx = torch.randint(0, len(self.train), (min(cfg["batch_size"], len(self.train)),),
                                    generator=self.gen).to(self.train.x.device)
                loss = encoder_loss(self.e, self.g, model.features, inf, to_unit(self.train.x[idx]),
                                    self.train.y[idx], s_val)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"encoder round {len(self.rounds) + 1}: mean I_aug is not finite")
                self.e_opt.zero_grad(set_to_none=True)
                loss.backward()
                self.e_opt.step()
                losses.append(float(loss.detach()))
        finally:
            model.requires_grad_(True)
            model.train()
        row = {"epoch": self.steps // self.schedule.steps_per_epoch, "i_aug_first": losses[0] if losses else None,
               "i_aug_last": losses[-1] if losses else None, "s_val_residual": s_val.residual,
               "seconds": time.perf_counter() - t0}
        self.rounds.append(row)
        if self.on_round is not None:
            self.on_round(self, row)
        return row

    # --------------------------------------------------------------------------------- F's step
    def inputs(self, batch: Batch) -> tuple[Tensor, Tensor]:
        x, y = to_unit(batch.x), batch.y
        if self.method == "none":
            return x, y
        parts = [x]
        if self.method == "heuristic":
            parts.append(compose(x, self.ops, self.length, self.gen))
        elif self.rounds:                                # proposed, after the first encoder round
            with torch.no_grad():
                parts.append(self.g(x, self.e(x)).x)
        return crop_flip(torch.cat(parts), self.crop_pad, self.flip, self.gen), y.repeat(len(parts))

    def __call__(self, batch: Batch) -> float:
        if self._round_due():
            self.fit_encoder()
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule.lr_at(self.steps)
        x, y = self.inputs(batch)
        self.model.train()
        loss = F.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        return float(loss.detach())

    # checkpointed state (tensors and plain containers only)
    def state_dict(self) -> dict:
        state = {"steps": self.steps, "generator": self.gen.get_state(), "rounds": [dict(r) for r in self.rounds]}
        if self.e is not None:
            state.update(encoder=self.e.state_dict(), encoder_optimizer=self.e_opt.state_dict())
        return state

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        self.gen.set_state(state["generator"])
        self.rounds = [dict(r) for r in state["rounds"]]
        if self.e is not None:
            self.e.load_state_dict(state["encoder"])
            self.e_opt.load_state_dict(state["encoder_optimizer"])

    def extra_metrics(self) -> dict:
        out = {"optimizer_steps": self.steps, "lr_final": self.schedule.lr_at(max(self.steps - 1, 0))}
        if self.method == "proposed":
            out.update(encoder_rounds=len(self.rounds), encoder_log=self.rounds,
                       encoder_seconds=sum(r["seconds"] for r in self.rounds))
        return out
