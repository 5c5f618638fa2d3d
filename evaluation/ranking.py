"""Evaluate a run's checkpoints, or folders of samples: score, find the collapse onset, choose.

Two sources of checkpoints, one procedure:

- a training run (``facegan evaluate --run``): each generator checkpoint draws the same fixed
  latent vectors; scores go back to MLflow (see :class:`facegan.tracking.EvaluationTracker`);
- folders (``facegan evaluate --samples DIR --real DATA``): ``DIR/<epoch>/*.png``, the seed's
  layout, for runs made with other code.

Real features are computed once per (dataset digest, feature space, image count) and cached on
disk under ``$FACEGAN_CACHE_DIR`` (default ``~/.cache/facegan``), so K checkpoints never extract
the real features K times. Only features are kept in memory, never all generated images.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from evaluation.collapse import Choice, CollapseResult, choose_best, detect_collapse
from evaluation.features import FeatureExtractor, get_extractor
from evaluation.metrics import SCORE_KEYS, RealReference, calibrate_noise, score
from facegan.checkpoint import load_generator
from facegan.config import Config
from facegan.data import Dataset, load_data, load_dataset, prepare_folder
from facegan.errors import FaceganError
from facegan.training import select_device

LATENT_SEED = 20240601  # every checkpoint draws the same latents
GENERATION_BATCH = 250
# Folder mode reads every image of a folder as it is: no per-person limit, no crop.
_ALL = 10**9


def cache_dir() -> Path:
    return Path(os.environ.get("FACEGAN_CACHE_DIR") or Path.home() / ".cache" / "facegan")


def space_label(extractor: FeatureExtractor) -> str:
    """Metric prefix for a feature space: ``inception``, ``random``, ``torchscript-<file stem>``."""
    if extractor.name.startswith("torchscript:"):
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(extractor.name.split(":", 1)[1]).stem)
        return f"torchscript-{stem}"
    return extractor.name


# ----------------------------------------------------------------------------------------------
# Real side


def real_reference(images: torch.Tensor, digest: str, extractor: FeatureExtractor, *, progress: bool) -> tuple[RealReference, bool]:
    """The real data's reference, from the disk cache when present; returns (reference, cached)."""
    key = hashlib.sha256(f"{digest}|{extractor.identity}|{images.shape[0]}".encode()).hexdigest()[:24]
    path = cache_dir() / "real-features" / f"{key}.npz"
    if path.is_file():
        try:
            return RealReference.load(path), True
        except FaceganError as exc:
            print(f"warning: {exc}; recomputing", file=sys.stderr)
    features = extractor.extract(images, progress=progress)
    reference = RealReference.from_features(features)
    path.parent.mkdir(parents=True, exist_ok=True)
    reference.save(path)
    return reference, False


# ----------------------------------------------------------------------------------------------
# Checkpoint side


def generator_batches(generator: torch.nn.Module, num_samples: int, device: torch.device, *,
                      seed: int = LATENT_SEED) -> Iterator[torch.Tensor]:
    """uint8 images from the fixed latents (``seed``: other latents), batch by batch (never all at once)."""
    rng = torch.Generator().manual_seed(seed)
    latents = torch.randn(num_samples, generator.latent_dim, generator=rng)
    generator = generator.to(device).eval()
    with torch.inference_mode():
        for batch in latents.split(GENERATION_BATCH):
            images = generator(batch.to(device))
            yield ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu()


def score_generator(generator: torch.nn.Module, extractor: FeatureExtractor, reference: RealReference,
                    num_samples: int, device: torch.device) -> dict[str, float]:
    """One checkpoint's scores: its samples from the fixed latents against the real reference."""
    return score(extractor.extract(generator_batches(generator, num_samples, device), progress=False), reference)


@dataclass
class Scored:
    epoch: int
    label: str
    scores: dict[str, float]
    model_id: str | None = None
    reused: bool = False  # read back from MLflow rather than computed now


@dataclass
class Evaluation:
    """Everything one evaluation found; ``to_json`` is the ``--json`` file."""

    features: str
    note: str
    checkpoints: list[Scored]
    collapse: CollapseResult
    choice: Choice
    noise: dict[str, float]
    num_samples: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    run_id: str | None = None
    registered: str | None = None

    @property
    def best_epoch(self) -> int:
        return self.choice.epoch

    def to_json(self) -> dict:
        collapsed = dict(zip(self.collapse.epochs, self.collapse.collapsed))
        return {
            "features": self.features,
            "features_note": self.note,
            "best_epoch": self.choice.epoch,
            "collapse_epoch": self.collapse.onset_epoch,
            "passing_collapse_epochs": self.collapse.passing_epochs,
            "unconfirmed_drop_epoch": self.collapse.unconfirmed_epoch,
            "choice_reason": self.choice.reason,
            "run_id": self.run_id,
            "registered": self.registered,
            "num_samples": self.num_samples,
            "checkpoints": [
                {"epoch": c.epoch, **{k: c.scores[k] for k in SCORE_KEYS if k in c.scores},
                 "collapsed": collapsed[c.epoch], "model_id": c.model_id}
                for c in self.checkpoints
            ],
            "thresholds": self.collapse.thresholds,
            "noise": self.noise,
            "skipped": [{"checkpoint": label, "reason": reason} for label, reason in self.skipped],
        }

    def _collapsed_and_rank(self) -> tuple[dict[int, bool], dict[int, int]]:
        """Per epoch: collapsed or not, and the rank by FID (1 = lowest)."""
        collapsed = dict(zip(self.collapse.epochs, self.collapse.collapsed))
        by_fid = sorted(self.checkpoints, key=lambda c: c.scores["fid"])
        return collapsed, {c.epoch: i + 1 for i, c in enumerate(by_fid)}

    def table_columns(self) -> dict[str, list]:
        """The ranking as columns (for MLflow's table view)."""
        collapsed, order = self._collapsed_and_rank()
        cols: dict[str, list] = {"epoch": [], "fid_rank": []}
        for key in SCORE_KEYS:
            cols[key] = []
        cols["collapsed"], cols["chosen"] = [], []
        for c in self.checkpoints:
            cols["epoch"].append(c.epoch)
            cols["fid_rank"].append(order[c.epoch])
            for key in SCORE_KEYS:
                cols[key].append(c.scores.get(key))
            cols["collapsed"].append(collapsed[c.epoch])
            cols["chosen"].append(c.epoch == self.choice.epoch)
        return cols

    def render_table(self) -> str:
        collapsed, order = self._collapsed_and_rank()
        head = f"{'epoch':>7} {'rank':>4} {'FID':>9} {'KID':>8} {'prec':>5} {'recall':>6} {'cover':>5} {'divers':>6} {'dupl':>5}  "
        lines = [head, "-" * len(head)]
        unconfirmed = self.collapse.unconfirmed_epoch
        for c in self.checkpoints:
            s = c.scores
            mark = []
            if c.epoch == self.choice.epoch:
                mark.append("<- best")
            if c.epoch == self.collapse.onset_epoch:
                mark.append("<- collapse onset")
            elif collapsed[c.epoch]:
                mark.append("collapsed" if self.collapse.onset_epoch is not None
                            and c.epoch > self.collapse.onset_epoch else "passing collapse")
            elif unconfirmed is not None and c.epoch >= unconfirmed:
                mark.append("drop, unconfirmed")
            lines.append(
                f"{c.epoch:>7} {order[c.epoch]:>4} {s['fid']:>9.3f} {s['kid']:>8.4f} {s['precision']:>5.2f} "
                f"{s['recall']:>6.2f} {s['coverage']:>5.2f} {s['diversity']:>6.2f} {s['duplicate_share']:>5.2f}  "
                + " ".join(mark)
            )
        onset = self.collapse.onset_epoch
        if onset is not None:
            onset_text = f"epoch {onset}"
        else:
            onset_text = "none detected" if unconfirmed is None else "none confirmed"
        lines += [
            "",
            f"best checkpoint: epoch {self.choice.epoch} ({self.choice.reason})",
            f"collapse onset: {onset_text}"
            + (f" (passing collapses, recovered from: epochs {', '.join(map(str, self.collapse.passing_epochs))})"
               if self.collapse.passing_epochs else ""),
        ]
        if unconfirmed is not None:
            reasons = self.collapse.drops[self.collapse.epochs.index(unconfirmed)]
            lines.append(
                f"unconfirmed drop: from epoch {unconfirmed} to the last checkpoint ({'; '.join(reasons)}); "
                "too short to tell a dip from a collapse: evaluate again when later checkpoints exist"
            )
        lines.append(f"features: {self.features} — {self.note}")
        for label, reason in self.skipped:
            lines.append(f"skipped {label}: {reason}")
        return "\n".join(lines)


def decide(scored: list[Scored], noise: dict[str, float]) -> tuple[CollapseResult, Choice]:
    rows = [{"epoch": c.epoch, **c.scores} for c in scored]
    collapse = detect_collapse(rows, noise)
    return collapse, choose_best(rows, collapse)


def scores_figure(evaluation: Evaluation):
    """FID and diversity/coverage against epoch, the onset and the choice marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [c.epoch for c in evaluation.checkpoints]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    ax.plot(epochs, [c.scores["fid"] for c in evaluation.checkpoints], "o-", color="tab:blue", label="FID")
    ax.set_xlabel("epoch")
    ax.set_ylabel("FID (lower is better)", color="tab:blue")
    right = ax.twinx()
    right.plot(epochs, [c.scores["diversity"] for c in evaluation.checkpoints], "s-", color="tab:orange", label="diversity")
    right.plot(epochs, [c.scores["coverage"] for c in evaluation.checkpoints], "^-", color="tab:green", label="coverage")
    right.set_ylabel("diversity, coverage (higher is better)")
    right.set_ylim(0, max(1.05, *[c.scores["diversity"] for c in evaluation.checkpoints]))
    if evaluation.collapse.onset_epoch is not None:
        ax.axvline(evaluation.collapse.onset_epoch, color="tab:red", linestyle="--", label="collapse onset")
    if evaluation.collapse.unconfirmed_epoch is not None:
        ax.axvline(evaluation.collapse.unconfirmed_epoch, color="tab:red", linestyle=":", label="unconfirmed drop")
    best = next(c for c in evaluation.checkpoints if c.epoch == evaluation.choice.epoch)
    ax.plot([best.epoch], [best.scores["fid"]], marker="*", markersize=18, color="gold",
            markeredgecolor="black", linestyle="none", label=f"chosen (epoch {best.epoch})")
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper center", fontsize=8, ncol=3)
    ax.set_title(f"checkpoint scores ({evaluation.features} features)")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------
# Run mode


def evaluate_run(
    run: str,
    *,
    features: str = "inception",
    inception_weights: str | None = None,
    num_samples: int = 2000,
    real: str | None = None,
    tracking_uri: str | None = None,
    force: bool = False,
    register: str | None = "facegan-generator",
    device: str = "auto",
    progress: bool = True,
) -> Evaluation:
    """Score every checkpoint of a training run, log the results to MLflow, register the choice."""
    from facegan.tracking import EvaluationTracker  # imports mlflow: only the run mode needs it

    torch_device = select_device(device)
    tracker = EvaluationTracker(tracking_uri, run)
    refs = tracker.checkpoints()
    if not refs:
        raise FaceganError(f"run {tracker.run_id} has no generator checkpoints to evaluate "
                           "(they are logged every --checkpoint-every epochs and at the last epoch)")
    extractor = get_extractor(features, inception_weights=inception_weights, device=str(torch_device))
    space = space_label(extractor)

    scored: list[Scored] = []
    skipped: list[tuple[str, str]] = []
    reference = noise = None
    with tempfile.TemporaryDirectory() as tmp:
        pending = []
        for ref in refs:
            logged = None if force else tracker.logged_scores(ref, space)
            if logged and all(k in logged for k in SCORE_KEYS):
                scored.append(Scored(ref.epoch, ref.name, logged, ref.model_id, reused=True))
            else:
                pending.append(ref)
        bar = tqdm(pending, desc="checkpoints", unit="ckpt", disable=not progress or not pending, file=sys.stderr)
        for ref in bar:
            bar.set_postfix_str(ref.name)
            try:
                generator, payload = load_generator(tracker.download(ref, Path(tmp) / ref.model_id))
            except FaceganError as exc:
                skipped.append((ref.name, str(exc)))
                print(f"warning: skipping {ref.name}: {exc}", file=sys.stderr)
                continue
            if reference is None:
                reference, noise = reference_and_noise(run_real_data(payload, real, progress), extractor,
                                                       num_samples, progress)
            result = score_generator(generator, extractor, reference, num_samples, torch_device)
            tracker.log_scores(ref, space, result)
            scored.append(Scored(ref.epoch, ref.name, result, ref.model_id))
        if not scored:
            raise FaceganError(f"no checkpoint of run {tracker.run_id} could be scored: "
                               + "; ".join(f"{label}: {reason}" for label, reason in skipped))
        if noise is None:  # everything was already scored: the chance levels are still needed
            generator, payload = load_generator(tracker.download(refs[-1], Path(tmp) / "noise"))
            reference, noise = reference_and_noise(run_real_data(payload, real, progress), extractor,
                                                   num_samples, progress)
    scored.sort(key=lambda c: c.epoch)
    collapse, choice = decide(scored, noise)
    evaluation = Evaluation(space, extractor.note, scored, collapse, choice, noise, num_samples, skipped,
                            run_id=tracker.run_id)
    best_ref = next(r for r in refs if r.epoch == choice.epoch)
    figure = scores_figure(evaluation)
    evaluation.registered = tracker.record(
        space, table=evaluation.table_columns(), figure=figure, best=best_ref,
        collapse_epoch=collapse.onset_epoch, register_name=register, summary=evaluation.to_json(),
    )
    import matplotlib.pyplot as plt

    plt.close(figure)
    return evaluation


def run_real_data(payload: dict, real: str | None, progress: bool) -> Dataset:
    """The real images of a run: its own training data (checked by digest), or ``--real``."""
    if real is not None:
        return load_real(real, payload["network"]["image_size"], progress)
    cfg = Config.from_dict(payload["config"])
    try:
        data = load_data(cfg.data.source, num_images=cfg.data.num_images, image_size=cfg.model.image_size,
                         seed=cfg.data.seed, progress=progress)
    except FaceganError as exc:
        raise FaceganError(f"cannot load the run's training data ({exc}); pass --real FILE|FOLDER") from None
    if data.digest != payload["dataset"]["digest"]:
        raise FaceganError(f"the run's data at {cfg.data.source} has changed since training (digest differs); "
                           "pass --real FILE|FOLDER to compare against other real images")
    return data


def reference_and_noise(data: Dataset, extractor, num_samples: int, progress: bool):
    """The real images' reference in ``extractor``'s space (cached) and the scores' chance levels."""
    reference, _ = real_reference(data.images, data.digest, extractor, progress=progress)
    return reference, calibrate_noise(reference, num_samples)


def load_real(real: str, image_size: int, progress: bool) -> Dataset:
    """``--real``: a dataset file as it is, or every image of a folder resized to ``image_size``.

    Sizes need not match the samples': every feature extractor resizes to its own input.
    """
    path = Path(real)
    if path.is_dir():
        return prepare_folder(path, image_size=image_size, per_identity=_ALL, limit=_ALL, crop=1.0, progress=progress)
    if not path.is_file():
        raise FaceganError(f"--real {real}: no such file or folder")
    return load_dataset(path)


# ----------------------------------------------------------------------------------------------
# Folder mode


def sample_folders(root: Path) -> tuple[list[tuple[int, Path]], list[str]]:
    """``(epoch, folder)`` for numeric sub-folders, sorted; names of the others (ignored)."""
    if not root.is_dir():
        raise FaceganError(f"--samples {root}: no such folder")
    numeric, ignored = [], []
    for child in sorted(root.iterdir()):
        if not child.is_dir():
            continue
        if child.name.isdigit():
            numeric.append((int(child.name), child))
        else:
            ignored.append(child.name)
    if not numeric:
        raise FaceganError(f"--samples {root} has no numeric sub-folders (expected {root}/<epoch>/*.png)")
    return sorted(numeric), ignored


def evaluate_folders(
    samples: str,
    real: str,
    *,
    features: str = "inception",
    inception_weights: str | None = None,
    num_samples: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> Evaluation:
    """Score folders of samples, one per epoch, against real images; no MLflow involved."""
    folders, ignored = sample_folders(Path(samples))
    for name in ignored:
        print(f"warning: ignoring {Path(samples) / name}: not an epoch number", file=sys.stderr)
    extractor = get_extractor(features, inception_weights=inception_weights, device=str(select_device(device)))
    first_image = next((p for _, f in folders for p in sorted(f.rglob("*")) if p.is_file()), None)
    data = load_real(real, _image_side(first_image), progress)
    image_size = data.images.shape[-1]

    scored, skipped, counts = [], [], []
    reference = None
    bar = tqdm(folders, desc="checkpoints", unit="folder", disable=not progress, file=sys.stderr)
    for epoch, folder in bar:
        bar.set_postfix_str(folder.name)
        try:
            images = prepare_folder(folder, image_size=image_size, per_identity=_ALL,
                                    limit=num_samples or _ALL, crop=1.0, progress=False).images
        except FaceganError as exc:
            skipped.append((str(folder), str(exc)))
            print(f"warning: skipping {folder}: {exc}", file=sys.stderr)
            continue
        if reference is None:
            reference, _ = real_reference(data.images, data.digest, extractor, progress=progress)
        if images.shape[0] < reference.min_samples:
            skipped.append((str(folder), f"{images.shape[0]} images; the metrics need at least {reference.min_samples}"))
            print(f"warning: skipping {folder}: only {images.shape[0]} images", file=sys.stderr)
            continue
        scored.append(Scored(epoch, str(folder), score(extractor.extract(images), reference)))
        counts.append(images.shape[0])
    if not scored:
        raise FaceganError(f"no sample folder under {samples} could be scored: "
                           + "; ".join(f"{label}: {reason}" for label, reason in skipped))
    sample_size = int(np.median(counts))
    noise = calibrate_noise(reference, sample_size)
    collapse, choice = decide(scored, noise)
    return Evaluation(space_label(extractor), extractor.note, scored, collapse, choice, noise, sample_size, skipped)


def _image_side(path: Path | None, default: int = 80) -> int:
    """The smaller side of an image file, to read a real folder at the samples' size."""
    from PIL import Image

    if path is None:
        return default
    try:
        with Image.open(path) as image:
            return max(8, min(image.size))
    except Exception:  # unreadable: the folder scan will report it
        return default


def write_json(evaluation: Evaluation, path: str) -> None:
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(clean(evaluation.to_json()), indent=2))
