"""Prove facegan's collapse scoring against ground truth: a mode-counting benchmark (issue 4).

Two datasets with known modes (see ``experiments/ground_truth.py``): the synthetic faces (96
attribute combinations) and stacked digits (1000 digit triples), both 32 x 32.

1. **Ladders**, exact and fast: sample sets drawn from k of the M modes (k from M down to 1), sets
   that repeat n distinct images, and sets from a trained generator whose latent is pulled towards
   a few anchor points (``z = anchor + t (z - anchor)``, t from 1 to 0). For each set the ground
   truth counts modes and facegan scores it; the Spearman correlation between facegan's diversity
   and coverage and the ground-truth modes is reported per ladder and feature space.
2. **Training histories**: short DCGAN runs on the synthetic faces with frequent checkpoints,
   some designed to collapse and some not. A designed collapse trains as the stable runs do,
   then from a set epoch freezes the discriminator (learning rate 0) and raises G's learning
   rate: G chases the frozen critic's favourite faces, and the ground-truth modes fell by 19% to
   76% by the next checkpoint on every seed tried. (Configurations meant to collapse by
   themselves -- a tiny latent, no batch norm in G, a critic far ahead -- never learned at all
   on this CPU, or wandered without a clear collapse; see the README.) The runs are trained
   into a real MLflow store and scored with ``evaluate_run`` (what ``facegan evaluate --run``
   does) in each feature space: ``random`` and ``encoder``, a SimCLR encoder trained on the
   real images (``evaluation/encoder.py``, ``facegan encoder``). Every checkpoint is also
   classified, on 10x as many samples as facegan scores; per run the table gives the
   ground-truth modes and quality of facegan's choice, of the lowest-FID checkpoint, of the
   last one and of the ground-truth best, and the detected collapse onset against the
   ground-truth onset: the first checkpoint whose modes fall >= 20% below the best so far and
   after which the run never regains that best (the collapse it does not recover from). The
   first such fall of any kind is reported beside it: GANs hop between modes, and on these runs
   that first fall was a dip the run recovered from, on stable runs too.
3. The same at 80 x 80 on a GPU: ``experiments/collapse_benchmark_gpu.py``, which runs on a bare
   GPU machine (no MLflow there) and writes ``collapse_benchmark-<scale>.json`` and ``.md``.

Usage::

    python experiments/collapse_benchmark.py [--quick | --tiny] [--encoder-epochs N] [--tracking-uri URI] [--out DIR]

Writes ``collapse_benchmark[-quick|-tiny][-encoderN].json`` and ``.md`` under ``experiments/results/``, logs
the study as one MLflow run (experiment ``facegan-collapse-benchmark``; the training runs sit in
the same experiment), prints a summary and, as its last line, one JSON object with every figure.
The JSON keeps every checkpoint's scores and the chance levels, so ``experiments/replay_rule.py``
can judge a changed collapse rule on the same runs in seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from evaluation.encoder import EncoderSettings, save_encoder, train_encoder
from evaluation.features import get_extractor
from evaluation.memorisation import detect_memorisation
from evaluation.metrics import RealReference, calibrate_noise, memorised_share, score
from evaluation.engine import generator_batches
from facegan.common import to_uint8
from facegan.evaluate import evaluate_run
from facegan.config import load_config
from facegan.synthetic import synthetic_faces
from facegan.training import Trainer, train

from experiments.collapse import ground_truth as gt

EXPERIMENT = "facegan-collapse-benchmark"
GT_ONSET_FALL = 0.20  # a ground-truth fall: modes >= 20% below the best so far
TRUNCATION_ANCHORS = 3  # latent points the truncation ladder pulls samples towards
TRUNCATION_STEPS = (1.0, 0.6, 0.4, 0.25, 0.15, 0.08, 0.03, 0.0)


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """One training configuration, run once per seed."""

    name: str
    overrides: dict
    designed_to_collapse: bool
    seeds: tuple[int, ...]
    # The designed collapse: from this many completed epochs on, these learning rates.
    collapse_after: int | None = None
    collapse_lr: tuple[float, float] = (1e-2, 0.0)  # (G, D)


# Shared by every run: small DCGANs on 32 x 32 synthetic faces, a checkpoint every 2 epochs.
BASE_OVERRIDES = {
    "train.loss": "dcgan",
    "model.image_size": 32,
    "model.g_width": 32,
    "model.d_width": 32,
    "train.batch_size": 64,
    "train.schedule": "fixed",
    "train.device": "cpu",
    "tracking.sample_every": 1000,
    "tracking.resume_every": 1000,
    "tracking.num_samples": 64,
}


@dataclass(frozen=True)
class Scale:
    """How big every part of the benchmark is."""

    name: str
    num_real: int
    num_samples: int
    face_modes_ladder: tuple[int, ...]
    digit_modes_ladder: tuple[int, ...]
    repeats_ladder: tuple[int, ...]
    runs: tuple[RunSpec, ...]
    epochs: int
    checkpoint_every: int
    num_train_images: int
    gt_samples: int  # samples per checkpoint the ground truth classifies (the literature uses 26k)
    face_classifier: gt.TrainSettings = gt.FACE_SETTINGS
    # "random", and "encoder": a SimCLR encoder trained on each dataset's real images
    # (evaluation/encoder.py; facegan evaluate --features torchscript:PATH)
    features: tuple[str, ...] = ("random", "encoder")
    encoder: EncoderSettings = EncoderSettings()


# Learns fastest of the configurations tried on this CPU (pilot, 2000 faces, 80 epochs, ~110 s):
# ground-truth modes 1, 14, 25, 30, 50, 40, 57, 46, 60 ... up to 61 of 96 by epoch 76, with a
# passing 30% dip at epoch 40; lr_g 2e-3 alone reached 56, lr_g 5e-3 fluctuated between 7 and 30.
STABLE = {"train.batch_size": 32, "train.n_critic": 1, "train.lr_g": 2e-3, "train.lr_d": 2e-3}

SCALES = {
    "full": Scale(
        name="full", num_real=2000, num_samples=1000, gt_samples=10000,
        face_modes_ladder=(96, 72, 48, 32, 24, 16, 12, 8, 4, 2, 1),
        digit_modes_ladder=(1000, 700, 500, 300, 200, 100, 50, 20, 10, 5, 2, 1),
        repeats_ladder=(1000, 500, 250, 120, 60, 30, 15, 8, 4, 2, 1),
        runs=(RunSpec("collapsing", STABLE, True, (0, 1, 2), collapse_after=28),
              RunSpec("stable", STABLE, False, (0, 1))),
        epochs=40, checkpoint_every=2, num_train_images=2000,
    ),
    "quick": Scale(
        name="quick", num_real=1000, num_samples=500, gt_samples=5000,
        face_modes_ladder=(96, 48, 24, 12, 6, 3, 1),
        digit_modes_ladder=(1000, 400, 150, 50, 15, 5, 1),
        repeats_ladder=(500, 150, 50, 15, 5, 1),
        runs=(RunSpec("collapsing", STABLE, True, (0, 1), collapse_after=16),
              RunSpec("stable", STABLE, False, (0,))),
        epochs=24, checkpoint_every=2, num_train_images=2000,
        # 30 epochs, not the default 60: two encoders at 60 would take --quick past 10 minutes.
        encoder=EncoderSettings(epochs=30),
    ),
    # For tests: seconds, not a measurement.
    "tiny": Scale(
        name="tiny", num_real=120, num_samples=60, gt_samples=60, encoder=EncoderSettings(epochs=1, batch_size=32),
        face_modes_ladder=(96, 12, 1), digit_modes_ladder=(1000, 30, 1), repeats_ladder=(60, 6, 1),
        runs=(RunSpec("collapsing", {**STABLE, "model.g_width": 8, "model.d_width": 8}, True, (0,),
                      collapse_after=1),),
        epochs=3, checkpoint_every=1, num_train_images=64,
    ),
}


# --------------------------------------------------------------------------------------------
# Datasets: real images, sample-set makers and the ground truth, behind one interface
# --------------------------------------------------------------------------------------------


@dataclass
class Domain:
    """A dataset with known modes: its real images, its classifier and how to draw from k modes."""

    name: str
    real: torch.Tensor  # uint8 N x 3 x S x S
    classifier: object  # gt.FaceClassifier or gt.DigitClassifier
    num_modes: int
    modes_ladder: tuple[int, ...]
    image_size: int = gt.IMAGE_SIZE  # faces only: the GPU part renders them at 80 x 80

    def draw(self, modes: np.ndarray, seed: int) -> torch.Tensor:
        """Fresh images of the given modes (not the real set's images)."""
        if self.name.startswith("faces"):
            return torch.from_numpy(gt.render_face_modes(modes, seed, self.image_size))
        return torch.from_numpy(gt.stacked_digits(len(modes), seed, modes=modes)[0])


def make_domains(scale: Scale) -> tuple[list[Domain], dict]:
    """Both domains and the classifiers' accuracies and training times."""
    faces = gt.FaceClassifier.load_or_train(settings=scale.face_classifier)
    digits = gt.DigitClassifier.train()
    domains = [
        Domain("faces", synthetic_faces(scale.num_real, gt.IMAGE_SIZE, seed=0).images, faces,
               gt.num_face_modes(), scale.face_modes_ladder),
        Domain("digits", torch.from_numpy(gt.stacked_digits(scale.num_real, seed=0)[0]), digits,
               gt.NUM_DIGIT_MODES, scale.digit_modes_ladder),
    ]
    info = {
        domain.name: {
            "held_out_accuracy": domain.classifier.accuracy,
            "train_seconds": round(domain.classifier.seconds, 1),
            "real_set": domain.classifier.count_modes(domain.real).to_dict(),
        }
        for domain in domains
    }
    return domains, info


# --------------------------------------------------------------------------------------------
# Part 1: ladders
# --------------------------------------------------------------------------------------------


def modes_ladder(domain: Domain, num_samples: int) -> list[tuple[str, torch.Tensor]]:
    """Sets of ``num_samples`` fresh images drawn uniformly from k randomly chosen modes."""
    sets = []
    for step, k in enumerate(domain.modes_ladder):
        rng = np.random.default_rng(100 + step)
        chosen = rng.choice(domain.num_modes, size=k, replace=False)
        modes = chosen[np.arange(num_samples) % k]
        sets.append((f"k={k}", domain.draw(rng.permutation(modes), seed=200 + step)))
    return sets


def repeats_ladder(domain: Domain, num_samples: int, sizes: tuple[int, ...]) -> list[tuple[str, torch.Tensor]]:
    """Sets of ``num_samples`` images that repeat n distinct fresh images (a planted collapse)."""
    sets = []
    for step, n in enumerate(sizes):
        rng = np.random.default_rng(300 + step)
        distinct = domain.draw(rng.integers(0, domain.num_modes, n), seed=400 + step)
        sets.append((f"n={n}", distinct[torch.arange(num_samples) % n]))
    return sets


COPY_SHARES = (0.0, 0.05, 0.10, 0.25, 0.50, 0.75, 1.0)
COPY_NOISE = 4  # the noisy copies: every pixel moved by up to this many levels


def copying_ladder(domain: Domain, num_samples: int, *, noisy: bool) -> list[tuple[float, torch.Tensor]]:
    """Sets of ``num_samples`` whose given share are training (real) images, exactly or with a little
    pixel noise, and the rest fresh images of the same data: the ground truth of copying."""
    rng = np.random.default_rng(600)
    novel = domain.draw(rng.integers(0, domain.num_modes, num_samples), seed=700)
    order = torch.from_numpy(rng.permutation(len(domain.real)))
    sets = []
    for share in COPY_SHARES:
        copied = round(share * num_samples)
        copies = domain.real[order[torch.arange(copied) % len(order)]]
        if noisy:
            jitter = torch.from_numpy(rng.integers(-COPY_NOISE, COPY_NOISE + 1, copies.shape))
            copies = (copies.int() + jitter).clamp(0, 255).to(torch.uint8)
        sets.append((share, torch.cat([copies, novel[: num_samples - copied]])))
    return sets


def score_copying(domain: Domain, extractors: dict, references: dict, num_samples: int) -> dict:
    """Per feature space and ladder: the memorised share of each set, Spearman with the copied share,
    and the smallest copied share the memorisation rule flags (held-out images: fresh ones)."""
    held_out = domain.draw(np.random.default_rng(800).integers(0, domain.num_modes, num_samples), seed=900)
    result = {}
    for space, extractor in extractors.items():
        reference = references[space]
        noise = calibrate_noise(reference, num_samples)
        noise["memorised_share_heldout"] = memorised_share(extractor.extract(held_out), reference, num_samples)
        noise["heldout_size"] = num_samples
        result[space] = {"noise": noise}
        for kind in ("exact", "noisy"):
            points = []
            for share, images in copying_ladder(domain, num_samples, noisy=kind == "noisy"):
                memorised = score(extractor.extract(images), reference)["memorised_share"]
                points.append({"copied_share": share, "memorised_share": memorised})
            rule = detect_memorisation([{"epoch": i, **p} for i, p in enumerate(points)], noise)
            for point, flagged in zip(points, rule.memorised):
                point["flagged"] = flagged
            flagged_shares = [p["copied_share"] for p in points if p["flagged"]]
            result[space][kind] = {
                "points": points, "threshold": rule.threshold, "chance": rule.chance,
                "spearman": _spearman([p["memorised_share"] for p in points], list(COPY_SHARES)),
                "first_flagged_share": min(flagged_shares) if flagged_shares else None,
                "flagged_at_zero": points[0]["flagged"],
            }
    return result


def copying_targets(copying: dict) -> dict:
    """Issue 16's copying targets: flagged at 25% copied or less, never at 0%."""
    targets = {}
    for domain, spaces in copying.items():
        for space, ladders in spaces.items():
            for kind in ("exact", "noisy"):
                ladder = ladders[kind]
                first = ladder["first_flagged_share"]
                targets[f"copying.{domain}.{space}.{kind}.flagged_at_25pct_or_less_never_at_0"] = (
                    first is not None and first <= 0.25 and not ladder["flagged_at_zero"])
    return targets


def copying_markdown(copying: dict) -> list[str]:
    lines = ["", "## Copying ladders: memorised share against the share of training images copied", "",
             "| dataset | features | copies | memorised share at " + ", ".join(f"{s:.0%}" for s in COPY_SHARES)
             + " copied | Spearman | threshold (chance) | first flagged |", "|---|---|---|---|---|---|---|"]
    for domain, spaces in copying.items():
        for space, ladders in spaces.items():
            for kind in ("exact", "noisy"):
                ladder = ladders[kind]
                shares = ", ".join(f"{p['memorised_share']:.3f}" for p in ladder["points"])
                first = ladder["first_flagged_share"]
                lines.append(f"| {domain} | {space} | {kind} | {shares} | {_fmt(ladder['spearman'])} | "
                             f"{ladder['threshold']:.3f} ({ladder['chance']:.3f}) | "
                             f"{'never' if first is None else f'{first:.0%}'} |")
    return lines


def truncation_ladder(generator: torch.nn.Module, num_samples: int) -> list[tuple[str, torch.Tensor]]:
    """Samples of a trained generator with each latent pulled towards one of a few anchors."""
    rng = torch.Generator().manual_seed(500)
    latents = torch.randn(num_samples, generator.latent_dim, generator=rng)
    anchors = torch.randn(TRUNCATION_ANCHORS, generator.latent_dim, generator=rng)
    nearest = anchors[torch.arange(num_samples) % TRUNCATION_ANCHORS]
    device = next(generator.parameters()).device
    sets = []
    with torch.inference_mode():
        for t in TRUNCATION_STEPS:
            images = generator.eval()((nearest + t * (latents - nearest)).to(device)).float().cpu()
            sets.append((f"t={t}", to_uint8(images)))
    return sets


def score_ladder(sets, domain: Domain, extractors: dict, references: dict) -> dict:
    """Ground truth and facegan's scores for each set, and Spearman per feature space."""
    points = []
    for label, images in sets:
        truth = domain.classifier.count_modes(images)
        point = {"set": label, "gt": truth.to_dict(), "scores": {}}
        for space, extractor in extractors.items():
            point["scores"][space] = score(extractor.extract(images), references[space])
        points.append(point)
    modes = [p["gt"]["modes"] for p in points]
    spearman = {}
    for space in extractors:
        spearman[space] = {
            key: _spearman([p["scores"][space][key] for p in points], modes) for key in ("diversity", "coverage")
        }
    return {"points": points, "spearman": spearman}


def _spearman(values, modes) -> float | None:
    if len(set(values)) < 2 or len(set(modes)) < 2:
        return None  # undefined when either side is constant
    return float(spearmanr(values, modes).statistic)


# --------------------------------------------------------------------------------------------
# Part 2: training histories
# --------------------------------------------------------------------------------------------


def train_run(spec: RunSpec, seed: int, scale: Scale, tracking_uri: str) -> str:
    """Train one run into the MLflow store; returns its run id."""
    from facegan.tracking import MlflowRunTracker

    tracker = MlflowRunTracker.start(tracking_uri, EXPERIMENT, f"{scale.name}-{spec.name}-seed{seed}")
    train_into(tracker, spec, seed, scale, BASE_OVERRIDES)
    return tracker.run_id


def train_online(spec: RunSpec, seed: int, scale: Scale, tracking_uri: str, features: str, label: str):
    """Train one run with every checkpoint scored as it is written, stopping at a confirmed collapse
    (``facegan train --evaluate FEATURES --stop-on-collapse``); returns (run id, trainer)."""
    from facegan.evaluate import training_judge, training_scorer
    from facegan.tracking import MlflowRunSource, MlflowRunTracker

    tracker = MlflowRunTracker.start(tracking_uri, EXPERIMENT, f"{scale.name}-{spec.name}-seed{seed}-online-{label}")
    evaluate = {"evaluate.features": features, "evaluate.num_samples": scale.num_samples,
                "evaluate.stop_on_collapse": True, "evaluate.register": None}

    def judge_for(cfg, data):
        source = MlflowRunSource(tracker.client, tracker.run_id, writer=tracker)  # a new run: nothing to download
        return training_judge(cfg, training_scorer(cfg, data, progress=False), source, progress=False)

    trainer = train_into(tracker, spec, seed, scale, {**BASE_OVERRIDES, **evaluate}, judge_for=judge_for)
    return tracker.run_id, trainer


def train_into(tracker, spec: RunSpec, seed: int, scale: Scale, base_overrides: dict, *, judge_for=None):
    """Train one run of ``spec`` on the synthetic faces into ``tracker`` (any RunTracker); returns the trainer.

    ``judge_for(cfg, data)``, when given, builds the judge that scores each checkpoint in training.
    """
    overrides = {
        **base_overrides,
        **spec.overrides,
        "train.seed": seed,
        "train.epochs": scale.epochs,
        "tracking.checkpoint_every": scale.checkpoint_every,
        "data.num_images": scale.num_train_images,
        "data.source": "synthetic",
        "tracking.experiment": EXPERIMENT,
    }
    cfg = load_config(None, overrides=overrides)
    data = synthetic_faces(cfg.data.num_images, cfg.model.image_size, seed=cfg.data.seed)
    judge = None if judge_for is None else judge_for(cfg, data)
    if spec.collapse_after is None:
        return train(cfg, data, tracker, progress=False, judge=judge)
    lr_g, lr_d = spec.collapse_lr
    # The run says what was done to it.
    tracker.log_params({"benchmark.collapse_after": spec.collapse_after,
                        "benchmark.collapse_lr_g": lr_g, "benchmark.collapse_lr_d": lr_d})
    return train(cfg, data, tracker, progress=False, judge=judge,
                 trainer_class=lambda *a, **k: DesignedCollapse(*a, after=spec.collapse_after, lr_g=lr_g, lr_d=lr_d,
                                                                **k))


class DesignedCollapse(Trainer):
    """Trains as configured, then from ``after`` completed epochs on with other learning rates.

    With the critic frozen (lr_d 0) and a larger G step, G moves every latent towards what the
    frozen critic rates most real, so the samples' modes collapse within an epoch.
    """

    def __init__(self, *args, after: int, lr_g: float, lr_d: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.after, self.lr_g, self.lr_d = after, lr_g, lr_d

    def run_epoch(self, stop=None):
        if self.epoch >= self.after:
            for group in self.gan.opt_g.param_groups:
                group["lr"] = self.lr_g
            for group in self.gan.opt_d.param_groups:
                group["lr"] = self.lr_d
        return super().run_epoch(stop)


def checkpoint_truth(run_id: str, tracking_uri: str, classifier, num_samples: int, keep_epoch=None):
    """Ground truth of every checkpoint on facegan's own fixed latents; optionally keep one generator."""
    from facegan.tracking import MlflowRunSource

    truth, kept = {}, None
    with MlflowRunSource.open(tracking_uri, run_id) as source:
        for checkpoint in source.checkpoints():
            generator, _ = checkpoint.load()
            images = torch.cat(list(generator_batches(generator, num_samples, torch.device("cpu"))))
            truth[checkpoint.epoch] = classifier.count_modes(images).to_dict()
            if keep_epoch is not None and checkpoint.epoch == keep_epoch(truth):
                kept = generator
    return truth, kept


def gt_falls(modes: list[int]) -> list[bool]:
    """Per checkpoint: do its ground-truth modes fall >= 20% below the best before it?"""
    falls, best = [], -math.inf
    for value in modes:
        falls.append(best > 0 and value <= (1 - GT_ONSET_FALL) * best)
        best = max(best, value)
    return falls


def gt_first_fall(epochs: list[int], modes: list[int]) -> int | None:
    """First checkpoint whose ground-truth modes fall >= 20% below the best so far."""
    return next((e for e, fall in zip(epochs, gt_falls(modes)) if fall), None)


def gt_onset(epochs: list[int], modes: list[int]) -> int | None:
    """Ground-truth collapse onset: the first fall (see :func:`gt_falls`) the run never recovers from.

    Never recovers: no later checkpoint gets back to the best before the fall. A fall the run
    climbs back from is a dip between modes, not the collapse to stop before.
    """
    for index, fall in enumerate(gt_falls(modes)):
        if fall and max(modes[index:]) < max(modes[:index]):
            return epochs[index]
    return None


def gt_best_epoch(truth: dict[int, dict]) -> int:
    """Most modes; ties go to the higher confident share, then the earlier checkpoint."""
    return max(truth, key=lambda e: (truth[e]["modes"], truth[e]["confident_share"], -e))


def summarise_run(name: str, seed: int, spec: RunSpec, evaluation, truth: dict[int, dict]) -> dict:
    rows = {c.epoch: c.scores for c in evaluation.checkpoints}
    epochs = sorted(rows)
    collapsed = dict(zip(evaluation.collapse.epochs, evaluation.collapse.collapsed))
    return {
        "run": name,
        "seed": seed,
        "config": spec.name,
        "designed_to_collapse": spec.designed_to_collapse,
        "run_id": evaluation.run_id,
        **judge_run(rows, truth, evaluation.best_epoch, evaluation.collapse),
        # Every score and the chance levels, so experiments/replay_rule.py can re-apply a changed
        # rule to these exact runs in seconds instead of training them again.
        "noise": dict(evaluation.noise),
        "checkpoints": [{"epoch": e, "gt": truth[e], **rows[e], "collapsed": bool(collapsed[e])} for e in epochs],
    }


def judge_run(rows: dict[int, dict], truth: dict[int, dict], chosen_epoch: int, collapse) -> dict:
    """Ground-truth modes at facegan's choice and at the other picks, and the onsets, for one run.

    ``rows`` maps epoch to facegan's scores (``fid`` at least), ``collapse`` is the run's
    :class:`evaluation.collapse.CollapseResult`.
    """
    epochs = sorted(rows)
    picks = {
        "facegan": chosen_epoch,
        "lowest_fid": min(epochs, key=lambda e: rows[e]["fid"]),
        "last": epochs[-1],
        "gt_best": gt_best_epoch(truth),
    }
    modes = [truth[e]["modes"] for e in epochs]
    onset_gt = gt_onset(epochs, modes)
    return {
        "picks": {key: {"epoch": e, **truth[e]} for key, e in picks.items()},
        "gt_onset": onset_gt,
        "gt_first_fall": gt_first_fall(epochs, modes),
        "detected_onset": collapse.onset_epoch,
        "unconfirmed_drop": collapse.unconfirmed_epoch,
        "onset_error_checkpoints": _index_gap(epochs, collapse.onset_epoch, onset_gt),
    }


def _index_gap(epochs: list[int], detected: int | None, truth: int | None) -> int | None:
    """Checkpoints between the detected and the true onset (None when either is missing)."""
    if detected is None or truth is None:
        return None
    return epochs.index(detected) - epochs.index(truth)


def history_targets(runs: list[dict]) -> dict:
    """The history targets per feature space (``<space>.<target>``) when runs carry one, else flat."""
    spaces = sorted({r["features"] for r in runs if "features" in r})
    if not spaces:
        return _space_targets(runs)
    return {f"{space}.{key}": value for space in spaces
            for key, value in _space_targets([r for r in runs if r.get("features") == space]).items()}


def _space_targets(runs: list[dict]) -> dict:
    collapsing = [r for r in runs if r["gt_onset"] is not None]
    keeps = [r["picks"]["facegan"]["modes"] / max(r["picks"]["gt_best"]["modes"], 1) for r in runs]
    return {
        "min_modes_kept_vs_gt_best": min(keeps) if keeps else None,
        "choice_keeps_95pct_every_run": all(k >= 0.95 for k in keeps),
        "never_worse_than_lowest_fid": all(
            r["picks"]["facegan"]["modes"] >= r["picks"]["lowest_fid"]["modes"] for r in runs),
        "strictly_better_on_a_collapsing_run": any(
            r["picks"]["facegan"]["modes"] > r["picks"]["lowest_fid"]["modes"] for r in collapsing),
        "onset_within_one_checkpoint_on_collapsing_runs": bool(collapsing) and all(
            r["onset_error_checkpoints"] is not None and abs(r["onset_error_checkpoints"]) <= 1 for r in collapsing),
        "no_onset_on_other_runs": all(r["detected_onset"] is None for r in runs if r["gt_onset"] is None),
        "collapsing_runs": len(collapsing),
        "runs": len(runs),
    }


def reliability(runs: list[dict]) -> dict:
    """Per configuration: how many seeds showed good-then-collapse in the ground truth."""
    result = {}
    first_space = runs[0].get("features") if runs else None
    for run in (r for r in runs if r.get("features") == first_space):  # the ground truth is per run
        entry = result.setdefault(run["config"], {"designed_to_collapse": run["designed_to_collapse"],
                                                  "seeds": 0, "collapsed": 0})
        entry["seeds"] += 1
        entry["collapsed"] += run["gt_onset"] is not None
    return result


def feature_specs(scale: Scale, name: str, real: torch.Tensor, folder: Path) -> tuple[dict[str, str], dict]:
    """``{label: --features spec}`` for one dataset; trains its encoder when asked for one."""
    specs, info = {}, {}
    for space in scale.features:
        if space != "encoder":
            specs[space] = space
            continue
        started = time.perf_counter()
        encoder = train_encoder(real, scale.encoder, progress=False)
        path = save_encoder(encoder, folder / f"encoder-{name}.pt")
        specs[space] = f"torchscript:{path}"
        info = {"train_images": int(real.shape[0]), "seconds": round(time.perf_counter() - started, 1)}
    return specs, info


def run_histories(scale: Scale, tracking_uri: str, spaces: dict[str, str], faces: Domain, log
                  ) -> tuple[list[dict], object]:
    """Train every run, score it in every feature space (``{label: --features spec}``) and with
    the ground truth; returns one summary per run and space, and a stable run's best generator."""
    runs, stable_generator = [], None
    for spec in scale.runs:
        for seed in spec.seeds:
            name = f"{spec.name}-seed{seed}"
            started = time.perf_counter()
            run_id = train_run(spec, seed, scale, tracking_uri)
            seconds = {"train": round(time.perf_counter() - started, 1)}
            started = time.perf_counter()
            keep = None if spec.designed_to_collapse or stable_generator is not None else gt_best_epoch
            truth, kept = checkpoint_truth(run_id, tracking_uri, faces.classifier, scale.gt_samples, keep)
            stable_generator = stable_generator or kept
            seconds["ground_truth"] = round(time.perf_counter() - started, 1)
            log(f"  {name}: GT modes by checkpoint {[truth[e]['modes'] for e in sorted(truth)]}, "
                f"GT onset {gt_onset(sorted(truth), [truth[e]['modes'] for e in sorted(truth)])}")
            for label, features in spaces.items():
                started = time.perf_counter()
                evaluation = evaluate_run(run_id, features=features, num_samples=scale.num_samples,
                                          tracking_uri=tracking_uri, register=None, device="cpu", progress=False)
                summary = summarise_run(name, seed, spec, evaluation, truth)
                summary["features"] = label
                summary["seconds"] = {**seconds, "evaluate": round(time.perf_counter() - started, 1)}
                runs.append(summary)
                log(f"    [{label}] choice epoch {summary['picks']['facegan']['epoch']}, "
                    f"onset {summary['detected_onset']} ({summary['seconds']['evaluate']} s)")
    return runs, stable_generator


def run_online(scale: Scale, tracking_uri: str, spaces: dict[str, str], faces: Domain, log) -> list[dict]:
    """Every run trained again per feature space with in-training evaluation and stopping on collapse.

    Per run: where it stopped (or not), the share of its planned epochs it did not train, the
    ground-truth onset of the checkpoints it did write, and ``facegan evaluate --force`` on those
    same checkpoints afterwards: whether the scores, the onset and the choice are the ones training
    logged and acted on.
    """
    runs = []
    for spec in scale.runs:
        for seed in spec.seeds:
            name = f"{spec.name}-seed{seed}"
            for label, features in spaces.items():
                started = time.perf_counter()
                run_id, trainer = train_online(spec, seed, scale, tracking_uri, features, label)
                seconds = {"train_and_judge": round(time.perf_counter() - started, 1)}
                online = trainer.judge.evaluation
                truth, _ = checkpoint_truth(run_id, tracking_uri, faces.classifier, scale.gt_samples)
                started = time.perf_counter()
                offline = evaluate_run(run_id, features=features, num_samples=scale.num_samples, force=True,
                                       tracking_uri=tracking_uri, register=None, device="cpu", progress=False)
                seconds["offline_evaluate"] = round(time.perf_counter() - started, 1)
                runs.append(summarise_online(name, seed, spec, scale, label, trainer, online, offline, truth, seconds))
                r = runs[-1]
                log(f"  online {name} [{label}]: stopped at {r['stopped_epoch']} of {r['planned_epochs']} "
                    f"(GT onset {r['gt_onset']}, saved {r['epochs_saved_share']:.0%}); choice {r['online_choice']} "
                    f"online, {r['offline_choice']} offline")
    return runs


def summarise_online(name: str, seed: int, spec: RunSpec, scale: Scale, label: str, trainer, online, offline,
                     truth: dict[int, dict], seconds: dict) -> dict:
    epochs = sorted(truth)
    gt = gt_onset(epochs, [truth[e]["modes"] for e in epochs])
    stopped = trainer.epoch if trainer.stopped is not None else None
    online_scores = {c.epoch: c.scores for c in online.checkpoints}
    differences = [abs(online_scores[c.epoch][k] - v) / max(abs(v), 1e-12)
                   for c in offline.checkpoints for k, v in c.scores.items()]
    designed = None
    if spec.collapse_after is not None:  # the first checkpoint trained with the collapsing learning rates
        designed = next((e for e in epochs if e > spec.collapse_after), None)
    return {
        "run": name, "seed": seed, "config": spec.name, "features": label, "run_id": offline.run_id,
        "designed_to_collapse": spec.designed_to_collapse,
        "planned_epochs": scale.epochs,
        "trained_epochs": trainer.epoch,
        "stopped_epoch": stopped,
        "stop_reason": None if trainer.stopped is None else trainer.stopped[1],
        "epochs_saved_share": round(1 - trainer.epoch / scale.epochs, 3),
        "gt_onset": gt,
        "designed_collapse_checkpoint": designed,
        "stop_checkpoints_after_gt_onset": _index_gap(epochs, stopped, gt),
        "online_onset": online.collapse.onset_epoch,
        "online_choice": online.best_epoch,
        "offline_onset": offline.collapse.onset_epoch,
        "offline_choice": offline.best_epoch,
        "choice_equals_offline": online.best_epoch == offline.best_epoch,
        "max_relative_score_difference": max(differences),
        "choice_gt": truth[online.best_epoch],
        "gt_best": {"epoch": gt_best_epoch(truth), **truth[gt_best_epoch(truth)]},
        "gt_modes": [truth[e]["modes"] for e in epochs],
        "seconds": seconds,
    }


def online_targets(runs: list[dict]) -> dict:
    """Issue 15's targets for in-training evaluation, per feature space."""
    targets = {}
    for space in sorted({r["features"] for r in runs}):
        mine = [r for r in runs if r["features"] == space]
        collapsing = [r for r in mine if r["designed_to_collapse"]]
        stable = [r for r in mine if not r["designed_to_collapse"]]
        targets[f"{space}.designed_collapses_stop_within_two_checkpoints_of_gt_onset"] = bool(collapsing) and all(
            r["stop_checkpoints_after_gt_onset"] is not None and 0 <= r["stop_checkpoints_after_gt_onset"] <= 2
            for r in collapsing)
        targets[f"{space}.stable_runs_do_not_stop"] = all(r["stopped_epoch"] is None for r in stable)
        targets[f"{space}.choice_equals_offline_evaluate"] = all(r["choice_equals_offline"] for r in mine)
        targets[f"{space}.mean_epochs_saved_on_collapsing_runs"] = (
            round(float(np.mean([r["epochs_saved_share"] for r in collapsing])), 3) if collapsing else None)
    return targets


def online_markdown(result: dict) -> str:
    lines = [f"# Collapse benchmark, in-training evaluation ({result['scale']})", "",
             f"Every run trained with `--evaluate FEATURES --stop-on-collapse` (samples per checkpoint: "
             f"{result['num_samples']}); afterwards `facegan evaluate --force` on the checkpoints it wrote. "
             f"Total {result['seconds_total']:.0f} s.", "",
             "| run | features | stopped at | of | epochs saved | GT onset | designed collapse | checkpoints after "
             "GT onset | choice online / offline | scores differ by | GT modes at choice / GT best |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        lines.append(
            f"| {r['run']} | {r['features']} | {r['stopped_epoch'] or 'not stopped'} | {r['planned_epochs']} | "
            f"{r['epochs_saved_share']:.0%} | {r['gt_onset']} | {r['designed_collapse_checkpoint']} | "
            f"{r['stop_checkpoints_after_gt_onset']} | {r['online_choice']} / {r['offline_choice']} | "
            f"{r['max_relative_score_difference']:.1e} | {r['choice_gt']['modes']} / {r['gt_best']['modes']} |")
    lines += ["", "## Targets", ""] + [f"- {key}: {value}" for key, value in result["targets"].items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def markdown(result: dict) -> str:
    lines = [f"# Collapse benchmark ({result['scale']})", "",
             f"Device: {result['device']}. Samples per set/checkpoint: {result['num_samples']}; "
             f"real images: {result['num_real']}. Encoder: {result['settings']['encoder']['epochs']} epochs. "
             f"Total {result['seconds_total']:.0f} s.", "",
             "## Ground truth", "", "| dataset | held-out accuracy | real set: modes | KL | confident |",
             "|---|---|---|---|---|"]
    for name, info in result["ground_truth"].items():
        real = info["real_set"]
        accuracy = ", ".join(f"{k} {v:.3f}" for k, v in info["held_out_accuracy"].items())
        lines.append(f"| {name} | {accuracy} | {real['modes']}/{real['num_modes']} | {real['kl']:.3f} | "
                     f"{real['confident_share']:.2f} |")
    lines += ["", "## Ladders: Spearman with ground-truth modes", ""]
    if result["ladders"]:
        lines += ["| dataset | ladder | features | diversity | coverage | GT modes along the ladder |",
                  "|---|---|---|---|---|---|"]
    else:
        lines.append("Not run in this study (--no-ladders).")
    for key, ladder in result["ladders"].items():
        dataset, kind = key.split("/")
        modes = [p["gt"]["modes"] for p in ladder["points"]]
        for space, values in ladder["spearman"].items():
            lines.append(f"| {dataset} | {kind} | {space} | {_fmt(values['diversity'])} | "
                         f"{_fmt(values['coverage'])} | {modes} |")
    size = result.get("image_size", gt.IMAGE_SIZE)
    if result.get("copying"):
        lines += copying_markdown(result["copying"])
    lines += ["", f"## Training histories (faces, {size} x {size})", "",
              "GT modes / confident share at each pick; onsets in epochs.", "",
              "GT onset: the first >= 20% fall in modes the run never recovers from; GT first fall: the "
              "first >= 20% fall of any kind (often a dip the run recovers from).", "",
              "| run | features | facegan choice | lowest FID | last | GT best | detected onset | GT onset "
              "| GT first fall |",
              "|---|---|---|---|---|---|---|---|---|"]
    for run in result["histories"]["runs"]:
        cells = [f"{p['modes']} / {p['confident_share']:.2f} (ep {p['epoch']})"
                 for p in (run["picks"][k] for k in ("facegan", "lowest_fid", "last", "gt_best"))]
        lines.append(f"| {run['run']} | {run.get('features', '')} | " + " | ".join(cells)
                     + f" | {onset_cell(run)} | {run['gt_onset']} | {run.get('gt_first_fall')} |")
    lines += ["", "Reliability (seeds whose ground truth shows good-then-collapse): "
              + ", ".join(f"{k}: {v['collapsed']}/{v['seeds']}" for k, v in result["histories"]["reliability"].items()),
              "", "## Targets", ""]
    lines += [f"- {key}: {value}" for key, value in result["targets"].items()]
    lines += ["", f"GPU part: {result['gpu']}"]
    return "\n".join(lines) + "\n"


def onset_cell(run: dict) -> str:
    """The detected onset for a table, naming an unconfirmed final drop when there is no onset."""
    if run["detected_onset"] is None and run.get("unconfirmed_drop") is not None:
        return f"None (drop at {run['unconfirmed_drop']}, unconfirmed)"
    return str(run["detected_onset"])


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def log_study(result: dict, tracking_uri: str, paths: list[Path]) -> str:
    """One MLflow run for the study: headline figures as metrics, the JSON and table as artifacts."""
    from facegan.tracking import connect

    client = connect(tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
    run = client.create_run(experiment_id, run_name=f"study-{result['scale']}")
    run_id = run.info.run_id
    client.log_param(run_id, "scale", result["scale"])
    client.log_param(run_id, "num_samples", result["num_samples"])
    client.log_param(run_id, "encoder_epochs", result["settings"]["encoder"]["epochs"])
    for key, value in _flat_figures(result).items():
        client.log_metric(run_id, key, value)
    for path in paths:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)
    return run_id


def _flat_figures(result: dict) -> dict[str, float]:
    figures = {}
    for key, ladder in result["ladders"].items():
        for space, values in ladder["spearman"].items():
            for metric, value in values.items():
                if value is not None:
                    figures[f"spearman.{key.replace('/', '.')}.{space}.{metric}"] = value
    for run in result["histories"]["runs"]:
        for pick, values in run["picks"].items():
            figures[f"modes.{run['run']}.{run.get('features', '')}.{pick}"] = values["modes"]
    for key, value in result["targets"].items():
        if isinstance(value, (bool, int, float)) and value is not None:
            figures[f"target.{key}"] = float(value)
    return figures


def headline(result: dict) -> dict:
    """The last printed line: every figure, compactly."""
    return {
        "scale": result["scale"],
        "device": result["device"],
        "seconds_total": round(result["seconds_total"], 1),
        "classifier_accuracy": {k: v["held_out_accuracy"] for k, v in result["ground_truth"].items()},
        "real_set_modes": {k: v["real_set"]["modes"] for k, v in result["ground_truth"].items()},
        "spearman": {key: ladder["spearman"] for key, ladder in result["ladders"].items()},
        "runs": {f"{r['run']}/{r.get('features', '')}": {"modes": {k: v["modes"] for k, v in r["picks"].items()},
                            "epochs": {k: v["epoch"] for k, v in r["picks"].items()},
                            "detected_onset": r["detected_onset"], "gt_onset": r["gt_onset"]}
                 for r in result["histories"]["runs"]},
        "reliability": result["histories"]["reliability"],
        "targets": result["targets"],
        "mlflow_study_run": result.get("mlflow_study_run"),
    }


def ladder_targets(ladders: dict, threshold: float = 0.95) -> dict:
    """Per dataset and feature space: the weakest ladder's diversity and coverage Spearman."""
    targets = {}
    for key, ladder in ladders.items():
        dataset = key.split("/")[0]
        for space, values in ladder["spearman"].items():
            for metric, value in values.items():
                if value is None:
                    continue  # undefined (constant ground truth along the ladder): no evidence either way
                name = f"ladder_min_spearman.{dataset}.{space}.{metric}"
                targets[name] = min(targets.get(name, math.inf), value)
    met = {}
    for dataset in {k.split(".")[1] for k in targets}:
        best = max(v for k, v in targets.items() if k.split(".")[1] == dataset)
        met[f"ladders_{dataset}_some_signal_reaches_{threshold}"] = best >= threshold
    return {**{k: round(v, 4) for k, v in targets.items()}, **met}


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="within 10 minutes on 2 CPU cores")
    size.add_argument("--tiny", action="store_true", help="seconds; for tests, not a measurement")
    parser.add_argument("--encoder-epochs", type=int, metavar="N",
                        help="train the encoder feature space N epochs instead of the scale's (an experiment on "
                             "the feature space: the runs and the ground truth stay the same); adds -encoderN "
                             "to the result files' names")
    parser.add_argument("--copying", action="store_true",
                        help="instead: only the copying ladders (memorisation against ground truth), in each feature "
                             "space (writes ...-copying.json/.md)")
    parser.add_argument("--online", action="store_true",
                        help="instead: train every run with in-training evaluation and stopping on collapse, in each "
                             "feature space, and compare with `facegan evaluate` on the same checkpoints (writes "
                             "...-online.json/.md)")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--out", type=Path, default=gt.RESULTS_DIR)
    args = parser.parse_args(argv)
    scale = SCALES["tiny" if args.tiny else "quick" if args.quick else "full"]
    suffix = "" if scale.name == "full" else f"-{scale.name}"
    if args.encoder_epochs is not None:
        if args.encoder_epochs < 1:
            parser.error(f"--encoder-epochs must be at least 1, got {args.encoder_epochs}")
        scale = replace(scale, encoder=replace(scale.encoder, epochs=args.encoder_epochs))
        suffix += f"-encoder{args.encoder_epochs}"
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {message}", flush=True)

    from facegan.tracking import connect

    connect(args.tracking_uri)  # create the store once, before anything else touches it
    domains, ground_truth = make_domains(scale)
    log(f"ground truth ready: {json.dumps({k: v['held_out_accuracy'] for k, v in ground_truth.items()})}")
    encoder_dir = Path(tempfile.mkdtemp(prefix="facegan-encoders-"))
    specs, encoders = {}, {}
    for domain in domains:
        # The faces' encoder learns from the training runs' own images, as a user's would.
        train_images = (synthetic_faces(scale.num_train_images, gt.IMAGE_SIZE, seed=0).images
                        if domain.name == "faces" else domain.real)
        specs[domain.name], encoders[domain.name] = feature_specs(scale, domain.name, train_images, encoder_dir)
        log(f"feature spaces for {domain.name}: {specs[domain.name]} ({encoders[domain.name]})")
        if args.online:
            break  # the training histories are faces only
    if args.online:
        try:
            return main_online(args, scale, suffix, domains[0], specs["faces"], encoders["faces"], started, log)
        finally:
            shutil.rmtree(encoder_dir, ignore_errors=True)
    extractors = {name: {space: get_extractor(spec) for space, spec in specs[name].items()} for name in specs}
    references = {
        domain.name: {space: RealReference.from_features(ex.extract(domain.real))
                      for space, ex in extractors[domain.name].items()}
        for domain in domains
    }

    copying = {domain.name: score_copying(domain, extractors[domain.name], references[domain.name], scale.num_samples)
               for domain in domains}
    firsts = {f"{name}/{space}/{kind}": ladders[kind]["first_flagged_share"]
              for name, spaces in copying.items() for space, ladders in spaces.items() for kind in ("exact", "noisy")}
    log(f"copying ladders, first copied share flagged: {firsts}")
    if args.copying:
        shutil.rmtree(encoder_dir, ignore_errors=True)
        return main_copying(args, scale, suffix, copying, started)

    ladders = {}
    for domain in domains:
        for kind, sets in (("modes", modes_ladder(domain, scale.num_samples)),
                           ("repeats", repeats_ladder(domain, scale.num_samples, scale.repeats_ladder))):
            ladders[f"{domain.name}/{kind}"] = score_ladder(sets, domain, extractors[domain.name],
                                                            references[domain.name])
            log(f"ladder {domain.name}/{kind}: {ladders[f'{domain.name}/{kind}']['spearman']}")

    faces = domains[0]
    runs, generator = run_histories(scale, args.tracking_uri, specs["faces"], faces, log)
    if generator is not None:
        ladders["faces/truncation"] = score_ladder(truncation_ladder(generator, scale.num_samples), faces,
                                                   extractors["faces"], references["faces"])
        log(f"ladder faces/truncation: {ladders['faces/truncation']['spearman']}")
    shutil.rmtree(encoder_dir, ignore_errors=True)

    result = {
        "scale": scale.name,
        "device": "cpu",
        "num_real": scale.num_real,
        "num_samples": scale.num_samples,
        "settings": {"runs": [asdict(r) for r in scale.runs], "base_overrides": BASE_OVERRIDES,
                     "epochs": scale.epochs, "checkpoint_every": scale.checkpoint_every,
                     "num_train_images": scale.num_train_images, "features": list(scale.features),
                     "gt_samples": scale.gt_samples, "encoder": asdict(scale.encoder), "encoders": encoders},
        "ground_truth": ground_truth,
        "ladders": ladders,
        "copying": copying,
        "histories": {"runs": runs, "reliability": reliability(runs)},
        "targets": {**ladder_targets(ladders), **copying_targets(copying), **history_targets(runs)},
        "gpu": "a separate script: experiments/collapse_benchmark_gpu.py (80 x 80 on a GPU machine; "
               "results in collapse_benchmark-gpu80.md)",
    }
    result["seconds_total"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = args.out / f"collapse_benchmark{suffix}.json", args.out / f"collapse_benchmark{suffix}.md"
    json_path.write_text(json.dumps(result, indent=1, default=_json_default))
    md_path.write_text(markdown(result))
    result["mlflow_study_run"] = log_study(result, args.tracking_uri, [json_path, md_path])
    print(markdown(result))
    print(json.dumps(headline(result), default=_json_default))
    return result


def main_copying(args, scale: Scale, suffix: str, copying: dict, started: float) -> dict:
    result = {"scale": scale.name, "device": "cpu", "num_samples": scale.num_samples, "num_real": scale.num_real,
              "copying": copying, "targets": copying_targets(copying), "seconds_total": time.perf_counter() - started}
    args.out.mkdir(parents=True, exist_ok=True)
    text = "\n".join([f"# Collapse benchmark, copying ladders ({scale.name})", "",
                      f"Samples per set: {scale.num_samples}; real (training) images: {scale.num_real}; held-out "
                      f"images: {scale.num_samples} fresh ones. Total {result['seconds_total']:.0f} s."]
                     + copying_markdown(copying) + ["", "## Targets", ""]
                     + [f"- {k}: {v}" for k, v in result["targets"].items()]) + "\n"
    (args.out / f"collapse_benchmark{suffix}-copying.json").write_text(json.dumps(result, indent=1, default=_json_default))
    (args.out / f"collapse_benchmark{suffix}-copying.md").write_text(text)
    print(text)
    print(json.dumps({"scale": scale.name, "targets": result["targets"]}, default=_json_default))
    return result


def main_online(args, scale: Scale, suffix: str, faces: Domain, spaces: dict[str, str], encoder: dict,
                started: float, log) -> dict:
    runs = run_online(scale, args.tracking_uri, spaces, faces, log)
    result = {
        "scale": scale.name, "device": "cpu", "num_samples": scale.num_samples,
        "settings": {"runs": [asdict(r) for r in scale.runs], "base_overrides": BASE_OVERRIDES,
                     "epochs": scale.epochs, "checkpoint_every": scale.checkpoint_every,
                     "features": list(spaces), "gt_samples": scale.gt_samples, "encoder": asdict(scale.encoder),
                     "encoders": {"faces": encoder}},
        "runs": runs,
        "targets": online_targets(runs),
        "seconds_total": time.perf_counter() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"collapse_benchmark{suffix}-online.json").write_text(json.dumps(result, indent=1, default=_json_default))
    (args.out / f"collapse_benchmark{suffix}-online.md").write_text(online_markdown(result))
    print(online_markdown(result))
    print(json.dumps({"scale": scale.name, "targets": result["targets"],
                      "runs": {f"{r['run']}/{r['features']}": {k: r[k] for k in (
                          "stopped_epoch", "gt_onset", "epochs_saved_share", "online_choice", "offline_choice")}
                               for r in runs}}, default=_json_default))
    return result


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


if __name__ == "__main__":
    main()
