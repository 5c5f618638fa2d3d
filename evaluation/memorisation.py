"""Which checkpoints copy their training images beyond what chance allows.

FID cannot see copying: a generator that hands back its training set scores a near-perfect FID
(Jiralerspong et al. 2023's "copycat" beats every real model on it). The signal here is the
``memorised_share`` of :func:`evaluation.metrics.score`: the share of a checkpoint's samples whose
nearest training image is closer than all but 1% of the real images' own nearest neighbours are
to each other. Novel images of the same distribution land that close by chance only rarely, so
the rule compares a checkpoint's share with that chance level:

- **held-out images** where there are any (the built-in faces render fresh ones; ``facegan prepare
  --holdout N`` keeps a split): the share of held-out real images that come that close to the
  training set, at the same sample count (``noise["memorised_share_heldout"]``);
- else a **split of the training set** itself: part of it scored against the rest
  (:func:`evaluation.metrics.calibrate_noise`), a leave-out estimate.

A checkpoint is **memorised** when its share exceeds that chance level by more than
``max(sigmas x the chance level's standard error, floor)`` (binomial standard errors of the
checkpoint's and the held-out share, or the split's own spread; floor 0.02). It is never the
choice (:func:`evaluation.collapse.choose_best`). The **memorisation onset** is the first of the
memorised checkpoints that last to the end of the run.

Why this test and not the published ones: Meehan et al. 2020's C_T compares the whole
distribution of nearest-training distances of generated and held-out samples (Mann-Whitney per
k-means cell): a generator that copies a quarter of its samples and draws the rest poorly can
average out to C_T near 0, and it needs held-out data. Alaa et al. 2022's authenticity compares
each sample with its nearest training image's own neighbour distance; its chance level for
novel samples is not a small known number, so a flag needs a calibration anyway. torchmetrics'
MiFID divides FID by a mean cosine distance clipped at a fixed 0.1: a rescaled score, not a
yes/no per checkpoint, and its threshold is not calibrated to the data. The share of close
copies is a per-sample count with a known chance level, which is what a flag needs; it is the
"authenticity" idea with a global threshold.

Example:
    >>> noise = {"sample_size": 1000, "memorised_share_mean": 0.01, "memorised_share_std": 0.003}
    >>> rows = [{"epoch": e, "memorised_share": s} for e, s in ((1, 0.0), (2, 0.01), (3, 0.4), (4, 0.9))]
    >>> result = detect_memorisation(rows, noise)
    >>> result.memorised, result.onset_epoch
    ([False, False, True, True], 3)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

__all__ = ["MemorisationResult", "detect_memorisation"]


@dataclass(frozen=True)
class MemorisationResult:
    """Outcome of :func:`detect_memorisation`, one entry per checkpoint in the given order.

    Attributes:
        epochs: the checkpoints' epochs.
        memorised: whether each checkpoint copies training images beyond chance.
        onset_epoch: the first of the memorised checkpoints that last to the end, or None.
        threshold: the memorised share above which a checkpoint is memorised.
        chance: the chance level the threshold was set from.
        reference: where the chance level came from, in words.
    """

    epochs: list[int]
    memorised: list[bool]
    onset_epoch: int | None
    threshold: float
    chance: float
    reference: str

    @property
    def memorised_epochs(self) -> list[int]:
        return [e for e, m in zip(self.epochs, self.memorised) if m]

    def to_dict(self) -> dict:
        return asdict(self)


def chance_level(noise: Mapping[str, float]) -> tuple[float, float, str]:
    """``(chance share, its standard error, where it came from)`` from the chance levels."""
    n = float(noise.get("sample_size", 0)) or 1.0
    if "memorised_share_heldout" in noise:
        p = float(noise["memorised_share_heldout"])
        held = float(noise.get("heldout_size", n))
        error = math.sqrt(max(p * (1 - p), 1e-6) * (1 / n + 1 / held))
        return p, error, f"held-out real images ({int(held)})"
    p = float(noise["memorised_share_mean"])
    error = max(float(noise.get("memorised_share_std", 0.0)), math.sqrt(max(p * (1 - p), 1e-6) / n))
    return p, error, "a split of the training images (no held-out images)"


def detect_memorisation(checkpoints: Sequence[Mapping[str, float]], noise: Mapping[str, float], *,
                        sigmas: float = 3.0, floor: float = 0.02) -> MemorisationResult:
    """Mark the checkpoints that copy training images beyond chance (rule in the module docstring).

    Args:
        checkpoints: per-checkpoint scores in epoch order, each with ``epoch`` and ``memorised_share``.
        noise: chance levels from :func:`evaluation.metrics.calibrate_noise`, with
            ``memorised_share_heldout`` (and ``heldout_size``) when held-out images were scored.
        sigmas: standard errors above chance a share must lie.
        floor: smallest excess over chance that counts.
    """
    chance, error, reference = chance_level(noise)
    threshold = chance + max(sigmas * error, floor)
    epochs = [int(c["epoch"]) for c in checkpoints]
    memorised = [float(c["memorised_share"]) > threshold for c in checkpoints]
    onset = None
    for index in range(len(memorised) - 1, -1, -1):
        if not memorised[index]:
            break
        onset = epochs[index]
    return MemorisationResult(epochs, memorised, onset, threshold, chance, reference)
