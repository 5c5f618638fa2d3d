"""Where mode collapse starts in a run, and which checkpoint to keep.

Pure functions on per-checkpoint scores (dicts from :func:`evaluation.metrics.score` plus an
``"epoch"``), ordered by epoch, and the chance levels from
:func:`evaluation.metrics.calibrate_noise`.

The rule, in plain words:

1. Every checkpoint is compared with the best scores of the checkpoints before it. A best
   counts only when it was **held**: the best level that ``patience`` consecutive earlier
   checkpoints all reached (the same length a drop must last, below). One lucky checkpoint
   must not set a bar that the run's ordinary checkpoint-to-checkpoint wobble then "falls"
   from. A checkpoint shows a **drop** when

   - its coverage is below the best held coverage by more than the coverage tolerance, or
   - its diversity is below the best held diversity by more than the diversity tolerance, or
   - its duplicate share is above both the real data's chance level and the lowest held
     duplicate share by more than the duplicate margin (so an untrained generator's identical
     blobs at the first checkpoints are not collapse: only a rise from the best so far counts).

   Each of the three counts only when **FID confirms it**: the checkpoint's FID is higher than
   the mean FID of the ``patience`` checkpoints that held the best it fell from. Losing modes
   raises FID in any feature space; a change in how the samples look need not. In the random
   feature space slightly blurred or down-sampled novel faces cover *more* real images than
   sharp ones (0.76-0.79 against 0.68), so a run that passes through blurred samples and ends
   sharp "falls" in coverage while its FID gets better: without the confirmation, 4 of 4 such
   histories got a collapse onset (figures in ``experiments/RESULTS.md``, "Collapse onsets on
   degraded histories"). The mean of the best stretch, not its worse or better checkpoint: one
   noisy checkpoint there must not let a real collapse through, nor a lucky one turn a wobble
   into a drop. What FID cannot separate is a loss of modes from a lasting loss of quality: a
   run whose samples stay much worse than at its best (heavy noise or blur) still shows drops.

   A tolerance is the larger of three times the spread that the score shows by chance on the real
   data at this sample size and a fixed floor (coverage 0.05, diversity 0.10, duplicate share
   0.10), because checkpoints also differ from each other by more than sampling noise. The
   diversity tolerance is also at least three times the run's own **wobble**: the typical
   checkpoint-to-checkpoint change of diversity among the last ``WOBBLE_WINDOW`` (6) earlier
   checkpoints it is compared with that showed no drop themselves (the median absolute change
   between neighbours / 0.954, which estimates a standard deviation and ignores a slow trend),
   once there are at least three of them. Only recent ones count: the big jumps of the first
   epochs of learning say nothing about how much a trained generator wanders. In a trained
   feature space good checkpoints' diversity wanders by more than a fixed floor, and a
   tolerance below that wander calls ordinary checkpoints collapsed (figures in
   ``experiments/RESULTS.md``, "Figures behind the docstrings").
   Diversity counts up to 1 (more spread than the real data is not better). The best held
   diversity and the lowest held duplicate share only count runs of checkpoints whose coverage
   was within the coverage tolerance of the best held coverage, this one's included, and at
   least ``min_coverage`` (1% of the real images): an untrained generator's noise can look
   diverse while covering nothing, and a generator still learning draws alike samples before it
   covers more, so comparing its duplicate share with the first checkpoints' would call learning
   a collapse.
2. A drop is **collapse** when it lasts: ``patience`` consecutive checkpoints (default 2) all show
   a drop. Each checkpoint of such a stretch is marked collapsed; a single dip that recovers at
   the next checkpoint is not.
3. The **onset** is the first checkpoint of the collapse the run never recovers from: the stretch
   of at least ``patience`` drops that reaches the last checkpoint. A collapsed stretch followed
   by a checkpoint with no drop (back within tolerance of the best so far) was a **passing**
   collapse: GANs often hop between modes and come back, and the checkpoints after it are as
   good as any before. Passing collapses are reported (``passing_epochs``) and their checkpoints
   never chosen, but they do not end the search for the best checkpoint. Only falls from the best
   so far count, so early checkpoints that are still learning (low but rising scores) are never
   collapse.
4. A run that **ends on a drop shorter than** ``patience`` has no onset yet: nothing says whether
   it is a dip or the start of a collapse until later checkpoints exist. Its first checkpoint is
   reported (``unconfirmed_epoch``) and, like every checkpoint with a drop, never chosen: stable
   runs often end on such a one-checkpoint dip, and calling each an onset is a false alarm.

The **choice** (:func:`choose_best`) is the checkpoint with the lowest FID before the onset (all
checkpoints when there is none), skipping checkpoints that themselves show a drop (passing
collapses included). Checkpoints whose KID differs from that one's by less than their combined
KID noise (``sqrt(kid_std_a² + kid_std_b²)``) are reported as tied with it, for the reader; they
do not change the choice: within a run FID tracks the ground-truth mode count better than KID or
coverage do, so a tie-break by coverage would move the choice to fewer modes.

Example:
    >>> noise = {"coverage_std": 0.01, "diversity_std": 0.02,
    ...          "duplicate_share_mean": 0.01, "duplicate_share_std": 0.005}
    >>> runs = [(100, 0.50, 0.6, 90.0), (200, 0.80, 0.9, 40.0), (300, 0.82, 0.9, 35.0),
    ...         (400, 0.50, 0.4, 60.0), (500, 0.40, 0.3, 80.0)]  # epoch, coverage, diversity, FID
    >>> checkpoints = [{"epoch": e, "coverage": c, "diversity": d, "duplicate_share": 0.01,
    ...                 "fid": f, "kid": f / 1000, "kid_std": 0.001} for e, c, d, f in runs]
    >>> result = detect_collapse(checkpoints, noise)
    >>> result.onset_epoch, choose_best(checkpoints, result).epoch
    (400, 300)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from evaluation.memorisation import MemorisationResult

__all__ = ["Choice", "CollapseResult", "choose_best", "detect_collapse"]

# Checkpoints whose diversity changes measure the run's wobble (module docstring): the recent ones.
WOBBLE_WINDOW = 6

_DETECT_KEYS = ("epoch", "coverage", "diversity", "duplicate_share", "fid")
_CHOICE_KEYS = ("epoch", "fid", "kid", "kid_std")
_NOISE_KEYS = ("coverage_std", "diversity_std", "duplicate_share_mean", "duplicate_share_std")


@dataclass(frozen=True)
class CollapseResult:
    """Outcome of :func:`detect_collapse`, one entry per checkpoint in the given order.

    Attributes:
        epochs: the checkpoints' epochs.
        collapsed: whether each checkpoint is part of a sustained drop.
        drops: why each checkpoint shows a drop (empty list: it does not), e.g.
            ``["coverage 0.412 < best 0.800 - 0.050"]``.
        onset_epoch: the first checkpoint of the collapse the run does not recover from, or None.
        thresholds: every number the rule used, for the output and the README.
        passing_epochs: first checkpoint of each collapse the run recovered from.
        unconfirmed_epoch: first checkpoint of a drop shorter than ``patience`` that reaches the
            last checkpoint (a dip or a collapse starting: later checkpoints decide), or None.
    """

    epochs: list[int]
    collapsed: list[bool]
    drops: list[list[str]]
    onset_epoch: int | None
    thresholds: dict[str, float]
    passing_epochs: list[int] = field(default_factory=list)
    unconfirmed_epoch: int | None = None

    def to_dict(self) -> dict:
        """Plain JSON-ready dict of all fields."""
        return asdict(self)

    @property
    def dip_epochs(self) -> list[int]:
        """Checkpoints with a drop too short to be a collapse that the run came back from (a drop
        still running at the last checkpoint is the unconfirmed one, not a dip)."""
        before_end = math.inf if self.unconfirmed_epoch is None else self.unconfirmed_epoch
        return [e for e, drop, collapsed in zip(self.epochs, self.drops, self.collapsed)
                if drop and not collapsed and e < before_end]


@dataclass(frozen=True)
class Choice:
    """Outcome of :func:`choose_best`.

    Attributes:
        epoch: the chosen checkpoint's epoch.
        reason: one sentence for users saying how it was chosen.
        tied_epochs: candidates whose KID is within KID noise of the chosen one's (it included):
            checkpoints the scores cannot tell apart from it.
    """

    epoch: int
    reason: str
    tied_epochs: list[int]

    def to_dict(self) -> dict:
        """Plain JSON-ready dict of all fields."""
        return asdict(self)


def _check_checkpoints(checkpoints: Sequence[Mapping], keys: tuple[str, ...]) -> None:
    if not checkpoints:
        raise ValueError("no checkpoints given")
    for position, checkpoint in enumerate(checkpoints):
        missing = [key for key in keys if key not in checkpoint]
        if missing:
            raise ValueError(f"checkpoint {position} lacks {missing}")
        if not all(math.isfinite(checkpoint[key]) for key in keys):
            raise ValueError(f"checkpoint at epoch {checkpoint['epoch']} has a non-finite score")
    epochs = [checkpoint["epoch"] for checkpoint in checkpoints]
    if any(later <= earlier for earlier, later in zip(epochs, epochs[1:])):
        raise ValueError(f"checkpoints must be in increasing epoch order, got {epochs}")


def _held_best(values: Sequence[float | None], width: int) -> tuple[float, int] | tuple[None, None]:
    """The highest level ``width`` consecutive values all reach (None entries break a run), and
    where the first window holding it starts.

    That is the largest minimum over windows of ``width``; (None, None) when no window is complete.
    """
    levels = [(min(values[i:i + width]), -i) for i in range(len(values) - width + 1)
              if None not in values[i:i + width]]
    if not levels:
        return None, None
    level, start = max(levels)
    return level, -start


def _wobble(values: Sequence[float]) -> float:
    """Robust standard deviation of the changes between neighbours; 0 for fewer than 3 values.

    For independent values of standard deviation s the change between neighbours has a median
    absolute size of 0.6745 * sqrt(2) * s = 0.954 s; a slow trend barely moves it.
    """
    if len(values) < 3:
        return 0.0
    changes = sorted(abs(b - a) for a, b in zip(values, values[1:]))
    middle = len(changes) // 2
    median = changes[middle] if len(changes) % 2 else (changes[middle - 1] + changes[middle]) / 2
    return median / 0.954


def _confirmed(reason: str, checkpoint: Mapping[str, float], best: Sequence[Mapping[str, float]]) -> str | None:
    """``reason`` with the FID that confirms it, or None when FID does not: the checkpoint's FID is
    no higher than the mean FID of the checkpoints that held the best it fell from (module
    docstring, 1)."""
    bar = sum(c["fid"] for c in best) / len(best)
    return f"{reason}, FID {checkpoint['fid']:.4g} > {bar:.4g} at that best" if checkpoint["fid"] > bar else None


def detect_collapse(
    checkpoints: Sequence[Mapping[str, float]],
    noise: Mapping[str, float],
    *,
    patience: int = 2,
    sigmas: float = 3.0,
    coverage_floor: float = 0.05,
    diversity_floor: float = 0.10,
    duplicate_floor: float = 0.10,
    min_coverage: float = 0.01,
) -> CollapseResult:
    """Flag collapsed checkpoints and find the onset (rule in the module docstring).

    Args:
        checkpoints: per-checkpoint scores in increasing epoch order, each with at least
            ``epoch``, ``coverage``, ``diversity``, ``duplicate_share`` and ``fid``.
        noise: chance levels from :func:`evaluation.metrics.calibrate_noise`; needs
            ``coverage_std``, ``diversity_std``, ``duplicate_share_mean`` and
            ``duplicate_share_std``.
        patience: consecutive checkpoints a drop must last to count as collapse.
        sigmas: how many chance standard deviations a drop must exceed.
        coverage_floor: smallest coverage fall that counts.
        diversity_floor: smallest diversity fall that counts (the run's own wobble times
            ``sigmas`` can raise it, see the module docstring).
        duplicate_floor: smallest rise of the duplicate share above chance that counts.
        min_coverage: coverage below which a checkpoint has learned nothing of the data in this
            feature space: it sets no best diversity or duplicate share (module docstring).

    Returns:
        A :class:`CollapseResult`.
    """
    if patience < 1:
        raise ValueError(f"patience must be at least 1, got {patience}")
    missing = [key for key in _NOISE_KEYS if key not in noise]
    if missing:
        raise ValueError(f"noise calibration lacks {missing}")
    _check_checkpoints(checkpoints, _DETECT_KEYS)

    coverage_tolerance = max(sigmas * noise["coverage_std"], coverage_floor)
    diversity_tolerance = max(sigmas * noise["diversity_std"], diversity_floor)
    duplicate_margin = max(sigmas * noise["duplicate_share_std"], duplicate_floor)
    duplicate_limit = noise["duplicate_share_mean"] + duplicate_margin

    drops: list[list[str]] = []
    for index, checkpoint in enumerate(checkpoints):
        earlier = checkpoints[:index]
        reasons = []
        best_coverage, coverage_from = _held_best([c["coverage"] for c in earlier], patience)
        if best_coverage is not None:  # too few checkpoints before this one: nothing to fall from
            # Bests of diversity and duplicates come only from checkpoints that covered about as
            # much as the best (and learned anything at all): an untrained generator's noise looks
            # diverse and its blobs alike, and a generator still learning draws alike faces before
            # it covers more. Neither is a best to fall from.
            frontier = max(max(best_coverage, checkpoint["coverage"]) - coverage_tolerance, min_coverage)
            on_frontier = [c["coverage"] >= frontier for c in earlier]
            fewest, fewest_from = _held_best(
                [-c["duplicate_share"] if ok else None for c, ok in zip(earlier, on_frontier)], patience)
            limit = None if fewest is None else max(duplicate_limit, -fewest + duplicate_margin)
            if limit is not None and checkpoint["duplicate_share"] > limit:
                reasons.append(_confirmed(f"duplicate share {checkpoint['duplicate_share']:.3f} > {limit:.3f}",
                                          checkpoint, earlier[fewest_from:fewest_from + patience]))
            if checkpoint["coverage"] < best_coverage - coverage_tolerance:
                reasons.append(_confirmed(
                    f"coverage {checkpoint['coverage']:.3f} < best {best_coverage:.3f} - {coverage_tolerance:.3f}",
                    checkpoint, earlier[coverage_from:coverage_from + patience]))
            compared = [min(c["diversity"], 1.0) if ok else None for c, ok in zip(earlier, on_frontier)]
            best_diversity, diversity_from = _held_best(compared, patience)
            # The wobble leaves out checkpoints that showed a drop: a collapse is not wobble.
            steady = [v for v, fell in zip(compared, drops) if v is not None and not fell]
            tolerance = max(diversity_tolerance, sigmas * _wobble(steady[-WOBBLE_WINDOW:]))
            diversity = min(checkpoint["diversity"], 1.0)
            if best_diversity is not None and diversity < best_diversity - tolerance:
                reasons.append(_confirmed(f"diversity {diversity:.3f} < best {best_diversity:.3f} - {tolerance:.3f}",
                                          checkpoint, earlier[diversity_from:diversity_from + patience]))
        drops.append([reason for reason in reasons if reason is not None])

    epochs = [int(c["epoch"]) for c in checkpoints]
    collapsed = [False] * len(checkpoints)
    onset, passing, unconfirmed = None, [], None
    start = 0
    while start < len(checkpoints):
        if not drops[start]:
            start += 1
            continue
        end = start
        while end < len(checkpoints) and drops[end]:
            end += 1
        if end - start < patience:
            if end == len(checkpoints):  # too short to tell a dip from a collapse yet
                unconfirmed = epochs[start]
        elif end == len(checkpoints):  # lasted and never recovered
            collapsed[start:end] = [True] * (end - start)
            onset = epochs[start]
        else:  # lasted, then came back: a passing collapse
            collapsed[start:end] = [True] * (end - start)
            passing.append(epochs[start])
        start = end

    thresholds = {
        "patience": patience,
        "sigmas": sigmas,
        "coverage_tolerance": coverage_tolerance,
        "diversity_tolerance": diversity_tolerance,
        "duplicate_share_limit": duplicate_limit,
        "coverage_floor": coverage_floor,
        "diversity_floor": diversity_floor,
        "duplicate_floor": duplicate_floor,
        "min_coverage": min_coverage,
        **{f"noise_{key}": float(noise[key]) for key in _NOISE_KEYS},
    }
    return CollapseResult(epochs=epochs, collapsed=collapsed, drops=drops, onset_epoch=onset,
                          thresholds=thresholds, passing_epochs=passing, unconfirmed_epoch=unconfirmed)


def choose_best(checkpoints: Sequence[Mapping[str, float]], collapse: CollapseResult,
                memorisation: MemorisationResult | None = None) -> Choice:
    """Pick the checkpoint to keep: the lowest FID before the onset, among checkpoints without a drop,
    never one that copies its training images (``memorisation``).

    Args:
        checkpoints: the same sequence given to :func:`detect_collapse`, each also with ``fid``,
            ``kid`` and ``kid_std``.
        collapse: its result.
        memorisation: :func:`evaluation.memorisation.detect_memorisation` on the same checkpoints.

    Returns:
        A :class:`Choice` with the epoch and the reason in words.
    """
    _check_checkpoints(checkpoints, _CHOICE_KEYS)
    if [int(c["epoch"]) for c in checkpoints] != collapse.epochs:
        raise ValueError("checkpoints do not match the collapse result")
    copied = set(memorisation.memorised_epochs) if memorisation is not None else set()
    drops = dict(zip(collapse.epochs, collapse.drops))
    onset = collapse.onset_epoch
    if onset is None:
        confirmed = "detected" if collapse.unconfirmed_epoch is None else "confirmed"
        pool, scope = list(checkpoints), f"of all checkpoints (no collapse {confirmed})"
    else:
        pool = [c for c in checkpoints if c["epoch"] < onset]
        scope = f"before the collapse onset at epoch {onset}"
    originals = [c for c in pool if c["epoch"] not in copied]
    if not originals:  # every candidate copies: the one that copies least, said plainly
        key = memorisation.key
        chosen = min(pool, key=lambda c: (c[key], c["fid"]))
        return Choice(epoch=int(chosen["epoch"]), tied_epochs=[int(chosen["epoch"])],
                      reason=f"every candidate {scope} copies training images beyond chance ({memorisation.test}: "
                             f"{key.replace('_', ' ')} > {memorisation.threshold:.3f}); epoch {chosen['epoch']} "
                             f"copies the least ({chosen[key]:.3f})")
    if len(originals) < len(pool):
        scope += (", skipping checkpoints that copy training images (epoch "
                  + ", ".join(str(c["epoch"]) for c in pool if c["epoch"] in copied) + ")")
    pool = originals
    steady = [c for c in pool if not drops[c["epoch"]]]
    if steady and len(steady) < len(pool):
        notes = []
        dip_epochs = set(collapse.dip_epochs)
        dips = [c["epoch"] for c in pool if c["epoch"] in dip_epochs]
        if dips:  # too short to be a collapse, and the run came back: named (the table marks them too)
            notes.append(f"{'a dip' if len(dips) == 1 else 'dips'} at epoch {', '.join(map(str, dips))}")
        if collapse.passing_epochs:
            notes.append(f"passing collapse at epoch {', '.join(map(str, collapse.passing_epochs))}")
        if collapse.unconfirmed_epoch is not None:
            notes.append(f"unconfirmed drop from epoch {collapse.unconfirmed_epoch} to the end")
        scope += ", skipping checkpoints with a drop" + (f" ({'; '.join(notes)})" if notes else "")
    pool = steady or pool

    chosen = min(pool, key=lambda c: c["fid"])
    tied = [
        c for c in pool
        if abs(c["kid"] - chosen["kid"]) < math.hypot(c["kid_std"], chosen["kid_std"]) or c is chosen
    ]
    reason = f"lowest FID ({chosen['fid']:.4g}, epoch {chosen['epoch']}) {scope}"
    others = [str(c["epoch"]) for c in tied if c is not chosen]
    if others:
        reason += f"; epoch {', '.join(others)} {'is' if len(others) == 1 else 'are'} tied with it within KID noise"
    return Choice(epoch=int(chosen["epoch"]), reason=reason, tied_epochs=[int(c["epoch"]) for c in tied])
