"""Judging checkpoints while training runs: score each one as it is written, stop when told to.

:class:`TrainingJudge` is the engine (:mod:`evaluation.engine`) fed one generator at a time: the
training loop hands it every generator checkpoint right after writing it, it scores the
checkpoint on the training device against real features computed once at the start, logs the
scores where ``facegan evaluate`` logs them, decides again (onset, choice) and says whether to
stop. It knows nothing of the loop or of MLflow: the loop calls it through a small hook
(``facegan.training.CheckpointHook``), and scores and decisions go through an :class:`evaluation.engine.DecisionLog`.

Two stopping rules (:class:`StopRule`), alone or together:

- **on collapse**: stop once the collapse rule confirms an onset (:mod:`evaluation.collapse`:
  a drop lasting ``patience`` checkpoints). With the default patience of 2 that is the
  checkpoint after the onset.
  With it, also stop on **lasting copying**: the last two checkpoints both copy training images
  beyond chance (:mod:`evaluation.memorisation`), confirmed by two checkpoints running as a
  collapse is (kind ``copying``).
- **patience** (the published advice for GANs: stop when FID has not reached a new minimum for
  3 to 5 checkpoints): stop after K checkpoints in a row none of which became the choice.

A run that was stopped and then resumed by a user who disagreed is not stopped again for the
same reason: only onsets (and copying checkpoints) after the epoch it stopped at count, and
patience counts from there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from evaluation.engine import Checkpoint, DecisionLog, Scorer, decide, record, score_all
from evaluation.ranking import Evaluation, Scored
from evaluation.sources import GeneratorCheckpoint


@dataclass(frozen=True)
class StopRule:
    """When training stops early.

    Attributes:
        on_collapse: stop when the collapse rule confirms an onset, or when the last two
            checkpoints both copy training images.
        patience: stop after this many checkpoints in a row without a new choice (None: never).
        after_epoch: only what happens after this epoch counts (the epoch a resumed run had
            stopped at before).
    """

    on_collapse: bool = False
    patience: int | None = None
    after_epoch: int = 0

    def __post_init__(self):
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be at least 1 checkpoint, got {self.patience}")

    @property
    def active(self) -> bool:
        return self.on_collapse or self.patience is not None

    def reason(self, evaluation: Evaluation) -> tuple[str, str] | None:
        """``(kind, sentence)`` when training should stop now (kind ``collapse``, ``copying`` or
        ``patience``), else None."""
        onset = evaluation.collapse.onset_epoch
        last = evaluation.checkpoints[-1].epoch
        if self.on_collapse and onset is not None and onset > self.after_epoch:
            return "collapse", (f"collapse confirmed at epoch {last}: onset at epoch {onset}; "
                                f"best checkpoint epoch {evaluation.best_epoch}")
        memorisation = evaluation.memorisation
        recent = [c.epoch for c in evaluation.checkpoints[-2:] if c.epoch > self.after_epoch]
        if (self.on_collapse and memorisation is not None and len(recent) == 2
                and all(evaluation.memorised(epoch) for epoch in recent)):
            shares = ", ".join(f"{evaluation.checkpoints[i].scores[memorisation.key]:.3f}" for i in (-2, -1))
            return "copying", (f"copying confirmed at epoch {last}: epochs {recent[0]} and {recent[1]} both copy "
                               f"training images ({memorisation.test}: copy shares {shares} above "
                               f"{memorisation.threshold:.3f}; by chance {memorisation.chance:.3f}, from "
                               f"{memorisation.reference}); best checkpoint epoch {evaluation.best_epoch}")
        if self.patience is not None:
            since = max(evaluation.best_epoch, self.after_epoch)
            without = [c.epoch for c in evaluation.checkpoints if c.epoch > since]
            if len(without) >= self.patience:
                return "patience", (f"{len(without)} checkpoints without a new best (epochs "
                                    f"{', '.join(map(str, without))}); best checkpoint epoch {evaluation.best_epoch}")
        return None


class TrainingJudge:
    """Scores a training run's checkpoints as they are written and decides after each.

    Args:
        scorer: the feature space and real reference (built before training starts, so a bad
            feature space or unreadable real data fails before any training).
        log: where scores and decisions go (the run in MLflow); None keeps them in memory only.
        rule: when to stop early.
        register: registered model name for the final choice (None: do not register).
    """

    def __init__(self, scorer: Scorer, log: DecisionLog | None = None, *, rule: StopRule = StopRule(),
                 register: str | None = None):
        self.scorer, self.log, self.rule, self.register = scorer, log, rule, register
        self.scored: list[Scored] = []
        self.skipped: list[tuple[str, str]] = []
        self.evaluation: Evaluation | None = None
        self.recorded = False  # finish() handed the whole result to the log

    @property
    def space(self) -> str:
        return self.scorer.space

    def resume(self, checkpoints: Sequence[Checkpoint], *, progress: bool = False) -> None:
        """Take in a resumed run's earlier checkpoints: their logged scores, or score them now."""
        scored, skipped = score_all(checkpoints, self.scorer, self.log, progress=progress)
        self.scored, self.skipped = scored, skipped
        if scored:
            self._decide()

    def checkpoint_written(self, epoch: int, generator: torch.nn.Module, *, label: str = "",
                           model_id: str | None = None,
                           interrupt: Callable[[], None] | None = None) -> tuple[str, str] | None:
        """Score the checkpoint just written, log it, decide; ``(kind, reason)`` to stop, else None.

        ``interrupt`` is called between sample batches and may raise (Ctrl-C): the checkpoint is
        then left unscored, and a resumed run scores it.
        """
        return self.add(GeneratorCheckpoint(epoch, generator, label=label, model_id=model_id), interrupt=interrupt)

    def add(self, checkpoint: Checkpoint, *, interrupt: Callable[[], None] | None = None) -> tuple[str, str] | None:
        """:meth:`checkpoint_written` for a checkpoint of any source (e.g. sample images)."""
        scores, count = self.scorer.score(checkpoint, interrupt=interrupt)
        if self.log is not None:
            self.log.log_scores(checkpoint, self.space, self.scorer.num_samples, scores,
                                   real_digest=self.scorer.real.digest)
        self.scored = [c for c in self.scored if c.epoch != checkpoint.epoch]
        self.scored.append(Scored(checkpoint.epoch, checkpoint.label, scores, checkpoint.model_id, num_samples=count))
        self._decide()
        return self.rule.reason(self.evaluation) if self.rule.active else None

    def _decide(self) -> None:
        self.evaluation = decide(self.scored, self.scorer.noise(), space=self.space, note=self.scorer.extractor.note,
                                 num_samples=self.scorer.num_samples, skipped=self.skipped,
                                 real_digest=self.scorer.real.digest)
        if self.log is not None:
            self.log.record_progress(self.evaluation)

    def status(self) -> dict[str, str]:
        """The latest FID and diversity and the best epoch so far, for a progress bar."""
        if self.evaluation is None:
            return {}
        latest = self.evaluation.checkpoints[-1].scores
        return {"fid": _short(latest["fid"]), "div": f"{latest['diversity']:.2f}", "best": str(self.evaluation.best_epoch)}

    def finish(self) -> str | None:
        """Log the ranking table, the plot and the summary, and register the choice; returns its URI."""
        if self.evaluation is None or self.log is None:
            return None
        uri = record(self.log, self.evaluation, self.register)
        self.recorded = True
        return uri


def _short(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
