"""A Lightning callback that judges a LightningModule's generator every N epochs (optional extra).

Install with ``pip install "facegan[lightning]"`` (PyTorch Lightning); the callback subclasses
``lightning.pytorch.Callback`` when the unified ``lightning`` package is installed, else
``pytorch_lightning.Callback``: use the one your Trainer comes from. It is a thin adapter over
:class:`facegan.judge.Judge`, which holds the whole logic::

    from facegan.judge import Judge
    from facegan.lightning import JudgeCallback

    judge = Judge("faces/", features="inception", latent_shape=(100, 1, 1), stop_on_collapse=True)
    trainer = Trainer(max_epochs=100, callbacks=[JudgeCallback(judge, generator="netG")])
    trainer.fit(gan)                  # stops at a confirmed collapse
    print(judge.result.render_table())

At the end of every ``every_n_epochs``-th training epoch the module's attribute ``generator``
is judged at ``trainer.current_epoch`` (counted from 0, as Lightning counts); its FID, KID,
coverage and diversity go to the Trainer's loggers as ``<space>/<name>`` (e.g. ``random/fid``);
``verdicts`` keeps every :class:`~facegan.judge.Verdict`; a verdict that says stop stops the
Trainer, as ``EarlyStopping`` does. Only the first process judges; under several processes its
decision to stop reaches them all.
"""

from __future__ import annotations

import math

try:
    from lightning.pytorch import Callback
except ImportError:
    try:
        from pytorch_lightning import Callback
    except ImportError as exc:
        raise ImportError("facegan.lightning needs PyTorch Lightning: pip install \"facegan[lightning]\"") from exc

from facegan.errors import FaceganError
from facegan.judge import Judge, Verdict

__all__ = ["JudgeCallback"]

_LOGGED = ("fid", "kid", "coverage", "diversity")


class JudgeCallback(Callback):
    """Judges ``pl_module.<generator>`` every ``every_n_epochs`` epochs; stops the Trainer when told.

    Args:
        judge: the judge (real images, feature space, stopping rules).
        generator: the LightningModule's attribute that holds the generator.
        every_n_epochs: judge after every this many training epochs.
        log: send the scores to the Trainer's loggers.
    """

    def __init__(self, judge: Judge, *, generator: str = "generator", every_n_epochs: int = 1, log: bool = True):
        super().__init__()
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise FaceganError(f"every_n_epochs must be a whole number, at least 1; got {every_n_epochs!r}")
        self.judge, self.generator, self.every_n_epochs, self.log = judge, generator, every_n_epochs, log
        self.verdicts: list[Verdict] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every_n_epochs:
            return
        stop = False
        if trainer.is_global_zero:
            generator = getattr(pl_module, self.generator, None)
            if generator is None:
                raise FaceganError(f"{type(pl_module).__name__} has no attribute {self.generator!r}: tell "
                                   "JudgeCallback(generator=...) where the generator is")
            verdict = self.judge.add(epoch, generator=generator)
            self.verdicts.append(verdict)
            stop = verdict.should_stop
            if self.log:
                space = self.judge.result.features
                metrics = {f"{space}/{k}": float(verdict.scores[k]) for k in _LOGGED
                           if math.isfinite(verdict.scores.get(k, math.nan))}
                for logger in trainer.loggers:
                    logger.log_metrics(metrics, step=epoch)
        # Every process must take the same decision (EarlyStopping's way of sharing one).
        if trainer.strategy.reduce_boolean_decision(stop, all=False):
            trainer.should_stop = True
