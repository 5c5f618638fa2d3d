"""Which checkpoints copy their training images beyond what chance allows.

FID cannot see copying: a generator that hands back its training set scores a near-perfect FID
(Jiralerspong et al. 2023's "copycat" beats every real model on it). Two per-sample tests look at
each sample's nearest training images (:func:`evaluation.metrics.score`):

- the **ratio test** (deciding; ``copy_share``): a sample is a copy when its nearest training
  image is less than :data:`evaluation.metrics.COPY_RATIO` times as far as its second nearest
  (Gu et al. 2023's memorisation ratio). It asks whether a sample is close to *one* training image
  rather than close to the data in general;
- the **distance test** (reported, not deciding; ``memorised_share``): a sample is a copy when
  its nearest training image is closer than all but 1% of the real images' own nearest
  neighbours are to each other. It cannot tell the two apart: novel but blurry or noisy samples
  lie closer to the training set than novel real images do, so on long runs of generators that
  never copy it raises false alarms (figures in experiments/RESULTS.md).

The chance level of the ratio test is the share of *novel real* images that pass it:

- **held-out images** where there are any (the built-in faces render fresh ones; ``facegan prepare
  --holdout N`` keeps a split): the held-out images against the training set
  (``noise["copy_share_heldout"]``, ``noise["heldout_size"]``);
- else **leave-one-out** within the training set: each training image against all the others
  (``noise["copy_share_loo"]``).

A checkpoint is **copying** when its number of copies among its ``n`` samples is too many for
chance: the binomial upper tail ``P(X >= copies | n, chance)`` is below ``false_alarm`` (1e-3
per checkpoint, so a 100-checkpoint run of a generator that never copies raises a false alarm
about one time in ten) **and** its copy share exceeds the chance share by at least ``floor``
(0.02: fewer copies than that are not worth a flag, and it absorbs the error of a chance level
measured on a finite held-out set, whose standard error is below 0.005 for shares up to 0.02 and
1000 images). The **threshold** is the copy share above which a checkpoint of ``n`` samples is
copying. A copying checkpoint is never the choice (:func:`evaluation.collapse.choose_best`); the
**memorisation onset** is the first of the copying checkpoints that last to the end of the run.

Why the ratio and not the published alternatives (issue 26 asked to compare): per sample,
"nearest training vs nearest held-out distance" (C_T's idea per sample) needs held-out images
at scoring time and, for a blurry novel sample, both distances shrink together, so it falls to
chance only where the held-out set is as dense as the training set; the ratio needs only the
training set, is scale-free (blur and noise move the nearest and the second nearest alike: on
the built-in faces degraded novel images have slightly *higher* ratios than sharp ones), and
has a measured chance level. Meehan et al. 2020's C_T compares whole distributions of
nearest-training distances per k-means cell (Mann-Whitney): a generator that copies a quarter of
its samples and draws the rest poorly can average out to C_T near 0, so it is a peer to report,
not a per-checkpoint flag. Figures: experiments/RESULTS.md, "Copying without false alarms".

Example:
    >>> noise = {"sample_size": 1000, "copy_share_loo": 0.002, "copy_share_loo_size": 2000}
    >>> rows = [{"epoch": e, "copy_share": s} for e, s in ((1, 0.0), (2, 0.01), (3, 0.4), (4, 0.9))]
    >>> result = detect_memorisation(rows, noise)
    >>> result.memorised, result.onset_epoch
    ([False, False, True, True], 3)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from scipy.stats import binom

from evaluation.metrics import COPY_RATIO

__all__ = ["MemorisationResult", "chance_level", "copy_chance", "copy_threshold", "detect_memorisation"]

RATIO_TEST = "ratio test"
DISTANCE_TEST = "distance test"


@dataclass(frozen=True)
class MemorisationResult:
    """Outcome of :func:`detect_memorisation`, one entry per checkpoint in the given order.

    Attributes:
        epochs: the checkpoints' epochs.
        memorised: whether each checkpoint copies training images beyond chance (the deciding
            test, the ratio test).
        onset_epoch: the first of the memorised checkpoints that last to the end, or None.
        threshold: the copy share above which a checkpoint is copying (at ``sample_size``
            samples; checkpoints with other sample counts have their own, in ``tests``).
        chance: the chance copy share the threshold was set from.
        reference: where the chance level came from, in words.
        key: the score the deciding test reads (``copy_share``).
        test: the deciding test's name, as the table marks it.
        sample_size: the sample count ``threshold`` is for.
        tests: every figure needed to redo each test's decision, by test name: the score key,
            whether it decides, its parameters, chance level and source, and per checkpoint the
            share, the sample count, the count of copies, the count that flags (``needed``),
            the binomial tail probability and whether it flagged.
    """

    epochs: list[int]
    memorised: list[bool]
    onset_epoch: int | None
    threshold: float
    chance: float
    reference: str
    key: str = "copy_share"
    test: str = RATIO_TEST
    sample_size: int = 0
    tests: dict[str, dict] = field(default_factory=dict)

    @property
    def memorised_epochs(self) -> list[int]:
        return [e for e, m in zip(self.epochs, self.memorised) if m]

    def flagged_epochs(self, test: str) -> list[int]:
        """The epochs ``test`` (``"ratio test"``, ``"distance test"``) flagged."""
        rows = self.tests.get(test, {}).get("checkpoints", [])
        return [row["epoch"] for row in rows if row["flagged"]]

    def to_dict(self) -> dict:
        return asdict(self)


def chance_level(noise: Mapping[str, float]) -> tuple[float, float, str]:
    """The distance test's ``(chance share, its standard error, where it came from)``."""
    n = float(noise.get("sample_size", 0)) or 1.0
    if "memorised_share_heldout" in noise:
        p = float(noise["memorised_share_heldout"])
        held = float(noise.get("heldout_size", n))
        error = math.sqrt(max(p * (1 - p), 1e-6) * (1 / n + 1 / held))
        return p, error, f"held-out real images ({int(held)})"
    p = float(noise["memorised_share_mean"])
    error = max(float(noise.get("memorised_share_std", 0.0)), math.sqrt(max(p * (1 - p), 1e-6) / n))
    return p, error, "a split of the training images (no held-out images)"


def copy_chance(noise: Mapping[str, float]) -> tuple[float, int, str]:
    """The ratio test's ``(chance share, images it was measured on, where it came from)``."""
    if "copy_share_heldout" in noise:
        held = int(noise.get("heldout_size", 0))
        return float(noise["copy_share_heldout"]), held, f"held-out real images ({held})"
    if "copy_share_loo" not in noise:
        raise ValueError("the chance levels have no copy test (copy_share_heldout or copy_share_loo); "
                         "they predate it: compute them again")
    size = int(noise.get("copy_share_loo_size", 0))
    return (float(noise["copy_share_loo"]), size,
            f"leave-one-out within the training images ({size}; no held-out images)")


def copy_threshold(n: int, chance: float, *, false_alarm: float = 1e-3, floor: float = 0.02) -> int:
    """The fewest copies among ``n`` samples that flag a checkpoint: the smallest count ``k`` with
    ``P(X >= k) <= false_alarm`` for ``X ~ Binomial(n, chance)`` and ``k / n >= chance + floor``.

    >>> copy_threshold(100, 0.0), copy_threshold(100, 0.01), copy_threshold(2000, 0.01)
    (2, 6, 60)
    """
    if n < 1:
        raise ValueError(f"need at least one sample, got {n}")
    p = min(max(chance, 0.0), 1.0)
    k = max(int(binom.isf(false_alarm, n, p)), -1) + 1
    while k > 0 and binom.sf(k - 2, n, p) <= false_alarm:  # isf's rounding: step to the smallest
        k -= 1
    while k <= n and binom.sf(k - 1, n, p) > false_alarm:
        k += 1
    return max(k, math.ceil((p + floor) * n - 1e-9))


def _onset(epochs: list[int], flags: list[bool]) -> int | None:
    onset = None
    for index in range(len(flags) - 1, -1, -1):
        if not flags[index]:
            break
        onset = epochs[index]
    return onset


def detect_memorisation(checkpoints: Sequence[Mapping[str, float]], noise: Mapping[str, float], *,
                        false_alarm: float = 1e-3, floor: float = 0.02, sigmas: float = 3.0) -> MemorisationResult:
    """Mark the checkpoints that copy training images beyond chance (rule in the module docstring).

    Args:
        checkpoints: per-checkpoint scores in epoch order, each with ``epoch`` and ``copy_share``
            (``memorised_share`` too for the distance test's report; ``num_samples`` where
            known, else ``noise["sample_size"]``).
        noise: chance levels from :func:`evaluation.metrics.calibrate_noise`, with
            ``copy_share_heldout`` and ``memorised_share_heldout`` (and ``heldout_size``) when
            held-out images were scored.
        false_alarm: the ratio test's false-alarm probability per checkpoint.
        floor: smallest excess over chance that counts (both tests).
        sigmas: the distance test's standard errors above chance (it only reports).
    """
    epochs = [int(c["epoch"]) for c in checkpoints]
    default_n = int(noise.get("sample_size", 0))
    counts_n = [int(c.get("num_samples") or default_n) for c in checkpoints]
    chance, chance_size, reference = copy_chance(noise)
    ratio_rows = []
    for epoch, n, c in zip(epochs, counts_n, checkpoints):
        share = float(c["copy_share"])
        copies = round(share * n)
        needed = copy_threshold(n, chance, false_alarm=false_alarm, floor=floor)
        ratio_rows.append({"epoch": epoch, "share": share, "num_samples": n, "copies": copies, "needed": needed,
                           "tail_probability": float(binom.sf(copies - 1, n, min(max(chance, 0.0), 1.0))),
                           "flagged": copies >= needed})
    memorised = [row["flagged"] for row in ratio_rows]
    size = int(sorted(counts_n)[len(counts_n) // 2]) if counts_n else default_n
    threshold = (copy_threshold(size, chance, false_alarm=false_alarm, floor=floor) - 1) / size
    tests = {RATIO_TEST: {
        "key": "copy_share", "deciding": True,
        "rule": (f"copies: samples whose nearest/second-nearest training distance ratio < {COPY_RATIO:g}; "
                 f"copying when P(X >= copies | n, chance) <= {false_alarm:g} and the share exceeds chance "
                 f"by at least {floor:g}"),
        "copy_ratio": COPY_RATIO, "false_alarm": false_alarm, "floor": floor,
        "chance": chance, "chance_size": chance_size, "chance_source": reference,
        "threshold": threshold, "sample_size": size, "checkpoints": ratio_rows,
    }}
    if all("memorised_share" in c for c in checkpoints) and (
            "memorised_share_heldout" in noise or "memorised_share_mean" in noise):
        old_chance, error, old_reference = chance_level(noise)
        old_threshold = old_chance + max(sigmas * error, floor)
        tests[DISTANCE_TEST] = {
            "key": "memorised_share", "deciding": False,
            "rule": ("copies: samples whose nearest training image is closer than the 1st percentile of real "
                     f"nearest-neighbour distances; flagged when the share exceeds chance by max({sigmas:g} "
                     f"standard errors, {floor:g})"),
            "sigmas": sigmas, "floor": floor, "chance": old_chance, "chance_error": error,
            "chance_source": old_reference, "threshold": old_threshold,
            "checkpoints": [{"epoch": e, "share": float(c["memorised_share"]),
                             "flagged": float(c["memorised_share"]) > old_threshold}
                            for e, c in zip(epochs, checkpoints)],
        }
    return MemorisationResult(epochs, memorised, _onset(epochs, memorised), threshold, chance, reference,
                              sample_size=size, tests=tests)
