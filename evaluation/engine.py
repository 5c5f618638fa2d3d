"""The one evaluation engine: score a sequence of checkpoints against real images, then decide.

Scoring is written once here and fed from three kinds of source, each a thin adapter that
yields :class:`Checkpoint` objects (an epoch, a label, and a way to draw samples):

- a training run in MLflow (``facegan evaluate --run``): :class:`facegan.tracking.MlflowRunSource`,
  beside the tracker, since only that module talks to MLflow;
- folders of samples, ``DIR/<epoch>/*.png`` (``facegan evaluate --samples``):
  :class:`evaluation.sources.FolderCheckpoint`;
- generators in memory (while training runs, in the benchmarks):
  :class:`evaluation.sources.GeneratorCheckpoint`.

The flow, for any source::

    scorer = Scorer(extractor, real_images, num_samples)   # real features once (disk cache)
    evaluation = evaluate(checkpoints, scorer, log)         # score, or reuse what log holds
    evaluation.choice, evaluation.collapse                   # evaluation.collapse rule

Generator checkpoints all draw the same fixed latents (:data:`LATENT_SEED`), so scores are
comparable between checkpoints and repeatable. Real features and the scores' chance levels are
computed once per (dataset digest, feature space, image count) and cached on disk under
``$FACEGAN_CACHE_DIR`` (default ``~/.cache/facegan``). Only features are kept in memory, never all
generated images.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from evaluation.collapse import choose_best, detect_collapse
from evaluation.features import FeatureExtractor
from evaluation.memorisation import detect_memorisation
from evaluation.metrics import SCORE_KEYS, RealReference, calibrate_noise, copy_share, memorised_share, score
from evaluation.ranking import Evaluation, Scored, pyplot, scores_figure
from facegan.common import atomic_write, to_uint8
from facegan.errors import FaceganError

LATENT_SEED = 20240601  # every generator checkpoint draws the same latents
GENERATION_BATCH = 250
DEFAULT_NUM_SAMPLES = 2000
# Bump when calibrate_noise changes what it returns for the same reference and size.
_NOISE_CACHE_VERSION = 3  # 3: the copy test's chance levels (copy_share_loo, copy_share_heldout)


def cache_dir() -> Path:
    return Path(os.environ.get("FACEGAN_CACHE_DIR") or Path.home() / ".cache" / "facegan")


def space_label(extractor: FeatureExtractor) -> str:
    """Metric prefix for a feature space: ``inception``, ``random``, ``export-<file stem>``,
    ``torchscript-<file stem>``."""
    kind, _, path = extractor.name.partition(":")
    if kind in ("export", "torchscript") and path:
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(path).stem)
        return f"{kind}-{stem}"
    return extractor.name


# ----------------------------------------------------------------------------------------------
# What a source yields


@dataclass(frozen=True)
class RealImages:
    """The real side: uint8 images N x 3 x S x S and a digest that identifies them (cache key).

    ``holdout``, when there are real images of the same data that training did not see, returns
    them (uint8, called only when the chance levels are not cached); ``holdout_id`` identifies
    them. They set the chance level of copying (:mod:`evaluation.memorisation`).
    """

    images: torch.Tensor
    digest: str
    holdout: Callable[[], torch.Tensor] | None = None
    holdout_id: str = ""


class Checkpoint(Protocol):
    """One checkpoint of a source.

    Attributes:
        epoch: its epoch; checkpoints are scored and judged in epoch order.
        label: what users see (``generator-epoch-0100``, a folder path).
        model_id: the MLflow LoggedModel it is, or None outside MLflow.
    """

    epoch: int
    label: str
    model_id: str | None

    def samples(self, num_samples: int, device: torch.device) -> Iterable[torch.Tensor]:
        """uint8 N x 3 x H x W batches, at most ``num_samples`` images in all.

        Raises:
            FaceganError: the checkpoint cannot be read (damaged, foreign): it is skipped.
        """


class ScoreLog(Protocol):
    """Where a source keeps the scores it was given, so nothing is scored twice (MLflow runs)."""

    def logged_scores(self, checkpoint: Checkpoint, space: str, num_samples: int, *,
                      real_digest: str) -> dict[str, float] | None:
        """The checkpoint's scores in ``space`` at ``num_samples`` samples against the real images
        ``real_digest`` names, or None (scores against other real images are not these)."""

    def log_scores(self, checkpoint: Checkpoint, space: str, num_samples: int, scores: dict[str, float], *,
                   real_digest: str) -> None:
        """Keep one checkpoint's scores (all at once: never half of them) and which real images they are against."""


class DecisionLog(ScoreLog, Protocol):
    """A :class:`ScoreLog` that also keeps the decision (the run in MLflow)."""

    def record_progress(self, evaluation: Evaluation) -> None:
        """The decision so far (the chosen and onset epochs), cheap enough for every checkpoint."""

    def record(self, evaluation: Evaluation, figure, register_name: str | None) -> str | None:
        """The whole result (table, plot, summary) and the registered choice; returns its URI or None."""


def generator_batches(generator: torch.nn.Module, num_samples: int, device: torch.device, *,
                      seed: int = LATENT_SEED) -> Iterator[torch.Tensor]:
    """uint8 images from the fixed latents (``seed``: other latents), batch by batch (never all at once).

    The generator is used in eval mode (and left in the mode it was found in), moved to ``device``
    in channels-last layout: transposed convolutions run about twice as fast so on the CPU, and
    the images differ from contiguous weights' in about 4 of a million values, by one level.
    """
    rng = torch.Generator().manual_seed(seed)
    latents = torch.randn(num_samples, generator.latent_dim, generator=rng)
    was_training = generator.training
    generator = generator.to(device=device, memory_format=torch.channels_last).eval()
    try:
        for batch in latents.split(GENERATION_BATCH):
            # Inference mode per batch, not around the yield: a generator suspended (or abandoned on
            # Ctrl-C) inside the context would leave the caller's thread in inference mode.
            with torch.inference_mode():
                images = to_uint8(generator(batch.to(device))).cpu()
            yield images
    finally:
        generator.train(was_training)


# ----------------------------------------------------------------------------------------------
# The real side and the scorer


def _cache_key(digest: str, extractor: FeatureExtractor, num_images: int) -> str:
    return hashlib.sha256(f"{digest}|{extractor.identity}|{num_images}".encode()).hexdigest()[:24]


def real_reference(real: RealImages, extractor: FeatureExtractor, *, progress: bool) -> tuple[RealReference, bool]:
    """The real images' reference in ``extractor``'s space, from the disk cache when present;
    returns (reference, whether it came from the cache)."""
    path = cache_dir() / "real-features" / f"{_cache_key(real.digest, extractor, real.images.shape[0])}.npz"
    if path.is_file():
        try:
            return RealReference.load(path), True
        except FaceganError as exc:
            print(f"warning: {exc}; recomputing", file=sys.stderr)
    reference = RealReference.from_features(extractor.extract(real.images, progress=progress))
    path.parent.mkdir(parents=True, exist_ok=True)
    reference.save(path)
    return reference, False


class Scorer:
    """A feature space and the real images' reference in it: scores checkpoints, knows chance levels.

    Build one per evaluation (or per training run): the real features are extracted once (or read
    from the disk cache) at construction, so a bad feature space or unreadable real data fails
    here, before any checkpoint is touched.

    Args:
        extractor: the feature space.
        real: the real images.
        num_samples: samples drawn per generator checkpoint (folders: at most this many images).
        device: where generators run (the extractor has its own device).
        progress: progress bars for the real features.
    """

    def __init__(self, extractor: FeatureExtractor, real: RealImages, num_samples: int = DEFAULT_NUM_SAMPLES, *,
                 device: torch.device | str = "cpu", progress: bool = False):
        if num_samples < 10:
            raise FaceganError(f"the number of samples per checkpoint must be at least 10, got {num_samples}")
        self.extractor, self.real, self.num_samples = extractor, real, num_samples
        self.device = torch.device(device)
        self.space = space_label(extractor)
        self.reference, _ = real_reference(real, extractor, progress=progress)
        self._key = _cache_key(real.digest, extractor, real.images.shape[0])
        if real.holdout is not None:
            self._key += "-" + hashlib.sha256(real.holdout_id.encode()).hexdigest()[:8]
        self._noise: dict[int, dict[str, float]] = {}

    def noise(self, sample_size: int | None = None) -> dict[str, float]:
        """How much the scores move by chance at ``sample_size`` (default ``num_samples``); cached on disk."""
        size = self.num_samples if sample_size is None else sample_size
        if size not in self._noise:
            path = cache_dir() / "real-features" / f"{self._key}-noise{_NOISE_CACHE_VERSION}-{size}.json"
            try:
                self._noise[size] = json.loads(path.read_text())
            except (OSError, ValueError):
                noise = calibrate_noise(self.reference, size)
                if self.real.holdout is not None:  # novel real images: the chance level of copying
                    held = self.extractor.extract(self.real.holdout())
                    noise["memorised_share_heldout"] = memorised_share(held, self.reference, size)
                    noise["copy_share_heldout"] = copy_share(held, self.reference.features)
                    noise["heldout_size"] = int(held.shape[0])
                self._noise[size] = noise
                text = json.dumps(self._noise[size]).encode()
                atomic_write(path, lambda f: f.write(text))  # whole or absent: an interrupted run leaves no half file
        return self._noise[size]

    def score(self, checkpoint: Checkpoint, *, interrupt: Callable[[], None] | None = None) -> tuple[dict[str, float], int]:
        """One checkpoint's scores and the number of images they came from.

        ``interrupt`` is called between batches (it may raise, e.g. KeyboardInterrupt on Ctrl-C),
        so a long scoring stops promptly and nothing is logged half-done.

        Raises:
            FaceganError: the checkpoint cannot be read, or holds too few images.
        """
        batches = checkpoint.samples(self.num_samples, self.device)
        if interrupt is not None:
            batches = _checked(batches, interrupt)
        features = self.extractor.extract(batches)
        if features.shape[0] < self.reference.min_samples:
            raise FaceganError(f"{features.shape[0]} images; the metrics need at least {self.reference.min_samples}")
        return score(features, self.reference), int(features.shape[0])


def _checked(batches: Iterable[torch.Tensor], interrupt: Callable[[], None]) -> Iterator[torch.Tensor]:
    batches = iter(batches)
    try:
        for batch in batches:
            interrupt()
            yield batch
    finally:
        close = getattr(batches, "close", None)
        if close is not None:  # an interrupted source tidies up now (the generator's mode), not at collection
            close()


# ----------------------------------------------------------------------------------------------
# Deciding


def decide(scored: list[Scored], noise: dict[str, float], *, space: str, note: str, num_samples: int,
           skipped: list[tuple[str, str]] | None = None, real_digest: str | None = None) -> Evaluation:
    """The collapse and memorisation rules and the choice (:mod:`evaluation.collapse`,
    :mod:`evaluation.memorisation`) on scored checkpoints. ``real_digest`` names the real images
    the scores are against (scores against other images are not comparable)."""
    scored = sorted(scored, key=lambda c: c.epoch)
    rows = [{"epoch": c.epoch, **c.scores, "num_samples": c.num_samples or num_samples} for c in scored]
    collapse = detect_collapse(rows, noise)
    memorisation = detect_memorisation(rows, noise)
    return Evaluation(space, note, scored, collapse, choose_best(rows, collapse, memorisation), noise, num_samples,
                      list(skipped or []), memorisation=memorisation, real_digest=real_digest)


def score_all(checkpoints: Sequence[Checkpoint], scorer: Scorer, log: ScoreLog | None = None, *,
              force: bool = False, progress: bool = False,
              interrupt: Callable[[], None] | None = None) -> tuple[list[Scored], list[tuple[str, str]]]:
    """Score every checkpoint, or take its scores from ``log`` when it holds them (unless ``force``).

    Returns the scored checkpoints and the skipped ones as ``(label, reason)``; a checkpoint that
    cannot be read is skipped with a warning, the others still count.
    """
    scored: list[Scored] = []
    skipped: list[tuple[str, str]] = []
    pending = []
    for checkpoint in checkpoints:
        logged = None if force or log is None else log.logged_scores(checkpoint, scorer.space, scorer.num_samples,
                                                                    real_digest=scorer.real.digest)
        if logged is not None and all(key in logged for key in SCORE_KEYS):
            scored.append(Scored(checkpoint.epoch, checkpoint.label, logged, checkpoint.model_id, reused=True,
                                 num_samples=scorer.num_samples))
        else:
            pending.append(checkpoint)
    bar = tqdm(pending, desc="checkpoints", unit="ckpt", disable=not progress or not pending, file=sys.stderr)
    for checkpoint in bar:
        bar.set_postfix_str(checkpoint.label)
        try:
            scores, count = scorer.score(checkpoint, interrupt=interrupt)
        except FaceganError as exc:
            skipped.append((checkpoint.label, str(exc)))
            print(f"warning: skipping {checkpoint.label}: {exc}", file=sys.stderr)
            continue
        if log is not None:
            log.log_scores(checkpoint, scorer.space, scorer.num_samples, scores, real_digest=scorer.real.digest)
        scored.append(Scored(checkpoint.epoch, checkpoint.label, scores, checkpoint.model_id, num_samples=count))
    return sorted(scored, key=lambda c: c.epoch), skipped


def evaluate(checkpoints: Sequence[Checkpoint], scorer: Scorer, log: ScoreLog | None = None, *,
             force: bool = False, progress: bool = False, what: str = "checkpoint") -> Evaluation:
    """Score every checkpoint (reusing what ``log`` holds), find the collapse onset, choose.

    Args:
        checkpoints: the checkpoints, any order (judged in epoch order); epochs must be distinct.
        scorer: the feature space and real reference.
        log: where scores are kept and read back (None: nothing kept).
        force: score again checkpoints ``log`` already holds scores for.
        progress: a progress bar over the checkpoints.
        what: names one checkpoint of the source in errors (``checkpoint of run 1234``).

    Raises:
        FaceganError: no checkpoints, repeated epochs, or none could be scored.
    """
    if not checkpoints:
        raise FaceganError(f"nothing to evaluate: no {what}")
    epochs = [c.epoch for c in checkpoints]
    if len(set(epochs)) != len(epochs):
        repeated = sorted({e for e in epochs if epochs.count(e) > 1})
        raise FaceganError(f"more than one {what} at epoch {', '.join(map(str, repeated))}")
    scored, skipped = score_all(checkpoints, scorer, log, force=force, progress=progress)
    if not scored:
        raise FaceganError(f"no {what} could be scored: "
                           + "; ".join(f"{label}: {reason}" for label, reason in skipped))
    # Folders may hold different numbers of images: the chance levels are those of a typical one.
    sample_size = int(np.median([c.num_samples for c in scored]))
    return decide(scored, scorer.noise(sample_size), space=scorer.space, note=scorer.extractor.note,
                  num_samples=sample_size, skipped=skipped, real_digest=scorer.real.digest)


def record(log: DecisionLog, evaluation: Evaluation, register_name: str | None) -> str | None:
    """Hand the whole result to ``log`` (table, plot, summary, registered choice); returns the registered URI."""
    plt = pyplot()
    figure = scores_figure(evaluation)
    try:
        evaluation.registered = log.record(evaluation, figure, register_name)
    finally:
        plt.close(figure)
    return evaluation.registered


__all__ = [
    "DEFAULT_NUM_SAMPLES", "LATENT_SEED", "Checkpoint", "DecisionLog", "RealImages", "ScoreLog", "Scorer", "cache_dir",
    "decide", "evaluate", "generator_batches", "real_reference", "record", "score_all", "space_label",
]
