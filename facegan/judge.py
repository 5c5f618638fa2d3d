"""Judge the checkpoints of your own training loop: facegan's evaluation engine in a few lines.

This is the engine's public face, kept small and stable: :class:`Judge` (give it the real
images and a feature space once, then each checkpoint's generator or samples with its epoch)
and the :class:`Verdict` it answers with (the scores, the best epoch so far, the collapse and
copying onsets, and whether to stop). Its scores, onsets and choice are exactly those of
``facegan evaluate`` and ``facegan train --evaluate`` (the same :class:`evaluation.engine.Scorer`,
fixed latents and rules; the judge is :class:`evaluation.online.TrainingJudge`).

A plain loop (pytorch/examples' DCGAN: ``netG`` takes N x 100 x 1 x 1 latents, draws [-1, 1])::

    from facegan.judge import Judge

    judge = Judge("faces/", features="inception", latent_shape=(100, 1, 1), stop_on_collapse=True)
    for epoch in range(epochs):
        train_one_epoch(netG, netD)
        verdict = judge.add(epoch, generator=netG)
        print(verdict)                    # epoch 7: FID 41.2, diversity 0.83; best epoch 7
        if verdict.is_best:
            torch.save(netG.state_dict(), "netG_best.pth")
        if verdict.should_stop:           # a confirmed collapse (or patience ran out)
            break
    print(judge.finish().render_table())  # the ranking table `facegan evaluate` prints

The generator is copied before it is scored (in eval mode, on the judge's device): the one you
train is not touched, not even moved. ``log=`` takes an :class:`evaluation.engine.DecisionLog`
(scores, the decision after each checkpoint, the result at :meth:`Judge.finish`) to keep them
somewhere; :func:`facegan.tracking.active_run_log` is the active MLflow run, logged exactly as
``facegan train --evaluate`` logs a run (metrics ``<space>/fid``... at ``step=epoch``, tags, and
at :meth:`Judge.finish` the table, the plot and the registered choice)::

    with mlflow.start_run():
        judge = Judge("faces/", features="random", log=active_run_log())
        ...
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from evaluation.engine import DEFAULT_NUM_SAMPLES, DecisionLog, RealImages, Scorer
from evaluation.features import FeatureExtractor
from evaluation.online import StopRule, TrainingJudge
from evaluation.ranking import Evaluation
from evaluation.sources import AdaptedGenerator, GeneratorCheckpoint, ImagesCheckpoint
from facegan.common import select_device, to_uint8
from facegan.dataset import DEFAULT_IMAGE_SIZE, Dataset, make_manifest
from facegan.errors import FaceganError

__all__ = ["Judge", "Verdict"]


@dataclass(frozen=True)
class Verdict:
    """What the judge says after one checkpoint.

    Attributes:
        epoch: the checkpoint's epoch.
        scores: its scores: ``fid``, ``kid``, ``precision``, ``recall``, ``density``, ``coverage``,
            ``diversity``, ``duplicate_share``, ``memorised_share`` and more (``facegan evaluate``'s).
        best_epoch: the checkpoint chosen so far (lowest FID before any collapse, none that drops).
        collapse_epoch: where a confirmed collapse starts, or None.
        copying_epoch: from where on the checkpoints copy training images beyond chance, or None.
        should_stop: whether to stop training now (only with ``stop_on_collapse`` or ``patience``).
        stop_rule: ``"collapse"`` or ``"patience"`` when ``should_stop``, else None.
        reason: the stop, in one sentence, when ``should_stop``, else None.
    """

    epoch: int
    scores: dict[str, float]
    best_epoch: int
    collapse_epoch: int | None
    copying_epoch: int | None
    should_stop: bool = False
    stop_rule: str | None = None
    reason: str | None = None

    @property
    def is_best(self) -> bool:
        """Whether this checkpoint is the choice so far (keep its weights)."""
        return self.best_epoch == self.epoch

    def __str__(self) -> str:
        s = self.scores
        text = f"epoch {self.epoch}: FID {s['fid']:.4g}, diversity {s['diversity']:.2f}; best epoch {self.best_epoch}"
        if self.collapse_epoch is not None:
            text += f"; collapse from epoch {self.collapse_epoch}"
        if self.copying_epoch is not None:
            text += f"; copying from epoch {self.copying_epoch}"
        return text + (f"; stop: {self.reason}" if self.should_stop else "")


class Judge:
    """Scores each checkpoint of a training loop as it comes and decides after each.

    Args:
        real: the real images: a dataset file (``facegan prepare``), an image folder (read at
            80 x 80; the feature spaces resize everything to their own input), the tutorial's
            ``data/`` folder, a :class:`~facegan.dataset.Dataset`, or a tensor N x 3 x H x W
            (uint8, or float in ``value_range``).
        features: the feature space, as ``facegan evaluate --features``: ``"inception"`` (the
            standard FID; downloads its weights once, or ``FACEGAN_INCEPTION_WEIGHTS``), ``"dinov2"``,
            ``"random"`` (offline; ranks checkpoints within one study), ``"export:PATH"``,
            ``"torchscript:PATH"``; or a :class:`~evaluation.features.FeatureExtractor`.
        num_samples: images drawn from each generator (the same fixed latents every time).
        latent_shape: one latent's shape as the generator takes it, e.g. ``128`` or DCGAN's
            ``(100, 1, 1)``; default: the generator's ``latent_dim`` attribute (facegan's).
        value_range: what float tensors you hand span (real images, samples, generator outputs),
            e.g. ``(0, 1)`` after a sigmoid.
        transposed: every tensor you hand is the tutorial's C x W x H (swapped back to C x H x W).
        stop_on_collapse: ``should_stop`` once the collapse rule confirms an onset.
        patience: ``should_stop`` after this many checkpoints in a row without a new best.
        device: where generators and the feature network run: ``auto``, ``cpu``, ``cuda``.
        log: where scores and decisions go (None: kept in memory only).
        progress: a progress bar while the real images' features are computed.

    Raises:
        FaceganError: unreadable real images, a bad feature space or missing weights, a bad
            device: at construction, before any checkpoint.
    """

    def __init__(self, real: str | Path | Dataset | torch.Tensor, *, features: str | FeatureExtractor,
                 num_samples: int = DEFAULT_NUM_SAMPLES, latent_shape: int | tuple[int, ...] | None = None,
                 value_range: tuple[float, float] = (-1.0, 1.0), transposed: bool = False,
                 stop_on_collapse: bool = False, patience: int | None = None, device: str = "auto",
                 log: DecisionLog | None = None, progress: bool = False):
        from facegan.config import ScoringOptions
        from facegan.scoring import make_extractor  # the CLI's feature-space choice, imported when used

        self.device = select_device(device)
        self.latent_shape = (latent_shape,) if isinstance(latent_shape, int) else latent_shape
        self.value_range, self.transposed = value_range, transposed
        if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
            raise FaceganError(f"patience must be a whole number of checkpoints, at least 1; got {patience!r}")
        extractor = (features if isinstance(features, FeatureExtractor)
                     else make_extractor(ScoringOptions(features, device=str(self.device))))
        scorer = Scorer(extractor, self._real(real, progress), num_samples, device=self.device, progress=progress)
        self._judge = TrainingJudge(scorer, log, rule=StopRule(on_collapse=stop_on_collapse, patience=patience))

    def add(self, epoch: int, generator: torch.nn.Module | None = None, *, samples: torch.Tensor | None = None,
            label: str = "", model_id: str | None = None) -> Verdict:
        """Score one checkpoint (a generator, or samples already drawn) and decide again.

        Args:
            epoch: its epoch (checkpoints are judged in epoch order; the same epoch again replaces it).
            generator: the generator (any ``nn.Module``); a copy is scored, the original is untouched.
            samples: instead of a generator, images N x 3 x H x W (uint8, or float in ``value_range``).
            label: what tables call it (default ``epoch N``).
            model_id: the MLflow LoggedModel it is, for a ``log`` that links scores to models.

        Raises:
            FaceganError: neither or both of generator and samples, a generator that fails on the
                latents or draws no images, too few samples.
        """
        if (generator is None) == (samples is None):
            raise FaceganError("give the checkpoint's generator or its samples (one of them)")
        if generator is not None:
            checkpoint = GeneratorCheckpoint(epoch, self._adapted(generator, epoch), label=label, model_id=model_id)
        else:
            checkpoint = ImagesCheckpoint(epoch, self._uint8(samples, "the samples"), label=label, model_id=model_id)
        stop = self._judge.add(checkpoint)
        evaluation = self._judge.evaluation
        scored = next(c for c in evaluation.checkpoints if c.epoch == epoch)
        memorisation = evaluation.memorisation
        return Verdict(epoch, dict(scored.scores), evaluation.best_epoch, evaluation.collapse.onset_epoch,
                       None if memorisation is None else memorisation.onset_epoch, should_stop=stop is not None,
                       stop_rule=stop[0] if stop else None, reason=stop[1] if stop else None)

    @property
    def result(self) -> Evaluation | None:
        """Everything so far (the engine's :class:`~evaluation.ranking.Evaluation`: ``render_table()``,
        ``to_json()``), or None before the first checkpoint."""
        return self._judge.evaluation

    def finish(self, register: str | None = None) -> Evaluation:
        """The result, also handed whole to ``log`` (table, plot, summary; the choice registered as
        ``register`` when the log registers models). Raises FaceganError before any checkpoint."""
        if self._judge.evaluation is None:
            raise FaceganError("nothing was judged: add a checkpoint first")
        self._judge.register = register
        self._judge.finish()
        return self._judge.evaluation

    # -- conversions ---------------------------------------------------------------------------

    def _real(self, real, progress: bool) -> RealImages:
        from facegan.scoring import load_real, real_images

        if isinstance(real, (str, Path)):
            real = load_real(str(real), DEFAULT_IMAGE_SIZE, progress)
        elif isinstance(real, torch.Tensor):
            images = self._uint8(real, "the real images")
            try:
                real = Dataset(images, make_manifest(images, "tensor", {}))
            except ValueError as exc:
                raise FaceganError(f"the real images: {exc}") from None
        elif not isinstance(real, Dataset):
            raise FaceganError(f"real images are a file, a folder, a Dataset or a tensor; got a {type(real).__name__}")
        return real_images(real)

    def _uint8(self, images: torch.Tensor, what: str) -> torch.Tensor:
        if not (isinstance(images, torch.Tensor) and images.ndim == 4 and images.shape[1] in (1, 3) and len(images)):
            found = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise FaceganError(f"{what} must be a tensor N x 3 x H x W; got {found}")
        images = images.detach().cpu()
        if images.dtype != torch.uint8:
            low, high = (float(v) for v in self.value_range)
            images = to_uint8((images.float() - low) * (2.0 / (high - low)) - 1.0)
        if self.transposed:
            images = images.transpose(-1, -2)
        return images.expand(-1, 3, -1, -1).contiguous()

    def _adapted(self, generator: torch.nn.Module, epoch: int) -> AdaptedGenerator:
        shape = self.latent_shape
        if shape is None:
            latent_dim = getattr(generator, "latent_dim", None)
            if isinstance(latent_dim, bool) or not isinstance(latent_dim, int):
                raise FaceganError("the generator has no latent_dim attribute: give the Judge its latent_shape "
                                   "(e.g. latent_shape=(100, 1, 1) for DCGAN's netG)")
            shape = (latent_dim,)
        try:
            with torch.no_grad():
                snapshot = copy.deepcopy(generator)
        except Exception as exc:  # noqa: BLE001 - whatever a module that cannot be copied raises
            raise FaceganError(f"the generator cannot be copied for scoring ({type(exc).__name__}: {exc}); "
                               "pass samples= it drew instead") from None
        adapted = AdaptedGenerator(snapshot, shape, output_range=self.value_range, transposed=self.transposed)
        return adapted.check(f"epoch {epoch}")
