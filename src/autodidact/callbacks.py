"""The two stop rules of skill training, as Lightning Callbacks.

* ``SkillLearnedStop``: stop as soon as every training example's latest check reproduced its answer
  (every answer token the argmax given the gold prefix = greedy decoding reproduces it, end-of-turn
  included), or once an epoch's mean loss is under a floor. Lightning's own ``min_steps`` holds a stop
  back; ``max_steps`` is only the budget.
* ``ConfirmLearned``: each example's check is taken before its own update, and maybe under bf16, so
  the weights training would end with are checked again, in fp32, before the stop counts. The last
  check is also the final evaluation, so a stop costs no second pass.

Under ddp each process sees a share of the examples: the verdicts are summed across processes
(``strategy.reduce``) so every process takes the same decision at the same step, as it must.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


class ConfirmLearned(Callback):
    """Evaluate the current weights in fp32; the latest result is kept as the final evaluation.

    ``evaluate()`` -> (mean answer loss, fraction of answers reproduced) over every training pair.
    """

    def __init__(self, evaluate: Callable[[], tuple[float, float]], prefix: str = "") -> None:
        self.evaluate = evaluate
        self.prefix = prefix
        self.result: tuple[float, float] | None = None
        self.at_step = -1

    def check(self, trainer: L.Trainer, pl_module: L.LightningModule, log_it: bool = True) -> bool:
        with torch.autocast(device_type=pl_module.device.type, enabled=False):
            self.result = self.evaluate()
        self.at_step = trainer.global_step
        ok = self.result[1] >= 1.0
        if log_it:
            pl_module.log(self.prefix + "train/confirmed", float(ok))
        return ok

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Training ended some other way (budget, loss floor, min_steps past the confirmation): the
        # final weights get their evaluation here, while they are still on the training device.
        if self.at_step != trainer.global_step:
            self.check(trainer, pl_module, log_it=False)  # Lightning refuses self.log in on_train_end


class SkillLearnedStop(Callback):
    """Stop when every example is reproduced (confirmed by ``confirm``) or an epoch's loss is under a floor.

    Reads ``outputs["exact"]`` (B,) from the training step and ``batch["index"]`` (B,), the examples'
    positions in the training set; batches without indices are judged a whole epoch at a time.
    """

    def __init__(self, n_examples: int, confirm: ConfirmLearned | None = None, stop_when_learned: bool = True,
                 loss_floor: float = 0.0, prefix: str = "", mid_epoch: bool = False) -> None:
        self.n = n_examples
        self.mid_epoch = mid_epoch  # judge each example's latest verdict mid-epoch (else whole epochs)
        self.confirm = confirm
        self.stop_when_learned = stop_when_learned
        self.loss_floor = loss_floor
        self.prefix = prefix
        self._latest: dict[int, bool] = {}  # example index -> exact at its most recent training step
        self._epoch_exact: list[torch.Tensor] = []
        self._epoch_loss: list[float] = []

    def _confirmed(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        return self.confirm is None or self.confirm.check(trainer, pl_module)

    def _all_reproduced(self, trainer: L.Trainer, device: torch.device) -> bool:
        """Every example's latest verdict, across processes, is "reproduced"."""
        ok = torch.zeros(self.n, device=device)
        bad = torch.zeros(self.n, device=device)
        for i, exact in self._latest.items():
            (ok if exact else bad)[i] = 1
        # Summed, not gathered: the distributed sampler pads by repeating examples, so an index can be
        # seen by two processes; it counts as reproduced only if no process saw it wrong.
        ok, bad = trainer.strategy.reduce(ok, reduce_op="sum"), trainer.strategy.reduce(bad, reduce_op="sum")
        return bool((ok > 0).all() and (bad == 0).all())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        exact = outputs["exact"]
        if self.mid_epoch and "index" in batch:  # per-example verdicts serve only the mid-epoch check
            self._latest.update(zip(batch["index"].tolist(), exact.tolist(), strict=True))
        self._epoch_exact.append(exact.detach().float())
        self._epoch_loss.append(float(outputs["loss"]))
        # Every process reaches this with the same step and flags, so the reduce below is collective.
        # Before min_steps no stop could count (Lightning holds it back), so no check is paid for.
        if not (self.stop_when_learned and self.mid_epoch and self.n and "index" in batch):
            return
        if trainer.global_step < (trainer.fit_loop.min_steps or 0):
            return
        # Mid-epoch: on average half an epoch sooner than waiting for the epoch's end.
        if self._all_reproduced(trainer, exact.device):
            if self._confirmed(trainer, pl_module):
                log.info("skill learned after %d steps (every answer reproduced)", trainer.global_step)
                trainer.should_stop = True
            else:
                self._latest.clear()  # the last updates broke something: every example must pass again

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        strategy = trainer.strategy
        exact_t = torch.cat(self._epoch_exact).mean() if self._epoch_exact else torch.tensor(0.0)
        loss_t = torch.tensor(sum(self._epoch_loss) / max(1, len(self._epoch_loss)))
        # One verdict for every process (each saw its share of the epoch).
        exact = float(strategy.reduce(exact_t.to(pl_module.device), reduce_op="mean"))
        loss = float(strategy.reduce(loss_t.to(pl_module.device), reduce_op="mean"))
        pl_module.log(self.prefix + "train/epoch_exact_match", exact)
        pl_module.log(self.prefix + "train/epoch_loss", loss)
        self._epoch_exact.clear()
        self._epoch_loss.clear()
        if trainer.should_stop:
            return
        # Judged per whole epoch (the default, or batches without example indices): every answer of
        # the epoch reproduced.
        reproduced = (self.stop_when_learned and not (self.mid_epoch and self._latest) and exact >= 1.0
                      and self._confirmed(trainer, pl_module))
        if reproduced or (self.loss_floor > 0 and loss < self.loss_floor):
            log.info("skill learned after %d steps (epoch exact match %.2f, loss %.4f)",
                     trainer.global_step, exact, loss)
            trainer.should_stop = True
