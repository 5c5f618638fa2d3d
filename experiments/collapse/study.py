"""The collapse benchmark's study (issue 4): one runner for the CPU and the GPU benchmark.

A study measures facegan's collapse scoring against datasets whose modes are known
(:mod:`experiments.collapse.ground_truth`): the synthetic faces (96 attribute combinations) and
stacked digits (1000 digit triples).

1. **Ladders**, exact and fast: sample sets drawn from k of the M modes (k from M down to 1), sets
   that repeat n distinct images, and sets from a trained generator whose latent is pulled towards
   a few anchor points (``z = anchor + t (z - anchor)``, t from 1 to 0). For each set the ground
   truth counts modes and facegan scores it; the Spearman correlation between facegan's diversity
   and coverage and the ground-truth modes is reported per ladder and feature space. The copying
   ladders (CPU benchmark) do the same for the memorisation rule: sets with a known share of
   training images copied.
2. **Training histories**: short DCGAN runs on the synthetic faces with frequent checkpoints,
   some designed to collapse and some not. A designed collapse trains as the stable runs do,
   then from a set epoch freezes the discriminator (learning rate 0) and raises G's learning
   rate: G chases the frozen critic's favourite faces, and the ground-truth modes fell by 19% to
   76% by the next checkpoint on every seed tried. (Configurations meant to collapse by
   themselves -- a tiny latent, no batch norm in G, a critic far ahead -- never learned at all
   on this CPU, or wandered without a clear collapse; see the README.) Every checkpoint is
   scored as ``facegan evaluate`` scores it, in each feature space, and classified by the ground
   truth on 10x as many samples; per run the table gives the ground-truth modes and quality of
   facegan's choice, of the lowest-FID checkpoint, of the last one and of the ground-truth best,
   and the detected collapse onset against the ground-truth onset: the first checkpoint whose
   modes fall >= 20% below the best so far and after which the run never regains that best (the
   collapse it does not recover from). The first such fall of any kind is reported beside it:
   GANs hop between modes, and on these runs that first fall was a dip the run recovered from,
   on stable runs too.

:func:`run_study` runs both parts. What differs between the benchmarks is how a run is trained
and its checkpoints scored, a :class:`Histories`: ``benchmark.py`` (32 x 32, CPU) trains into a
real MLflow store and scores with ``score_run``, what ``facegan evaluate --run`` does;
``benchmark_gpu.py`` (80 x 80, a bare GPU machine without MLflow) keeps the checkpoints in memory
and scores them with the same evaluation engine. Both write the same JSON and markdown
(:func:`write_result`), which ``replay.py`` and ``ground_truth_noise.py`` read back.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from scipy.stats import spearmanr

from evaluation.encoder import EncoderSettings
from evaluation.memorisation import detect_memorisation
from evaluation.metrics import RealReference, calibrate_noise, copy_share, memorised_share, score
from facegan.common import to_uint8
from facegan.config import load_config
from facegan.synthetic import synthetic_faces
from facegan.training import Trainer, train

from experiments import provenance
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
    # (evaluation/encoder.py; facegan evaluate --features export:PATH)
    features: tuple[str, ...] = ("random", "encoder")
    encoder: EncoderSettings = EncoderSettings()


# Learns fastest of the configurations tried on this CPU (pilot, 2000 faces, 80 epochs, ~110 s):
# ground-truth modes 1, 14, 25, 30, 50, 40, 57, 46, 60 ... up to 61 of 96 by epoch 76, with a
# passing 30% dip at epoch 40; lr_g 2e-3 alone reached 56, lr_g 5e-3 fluctuated between 7 and 30.
STABLE = {"train.batch_size": 32, "train.n_critic": 1, "train.lr_g": 2e-3, "train.lr_d": 2e-3}


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
    """Per feature space and ladder: the copy share (and the distance test's memorised share) of each
    set, Spearman with the copied share, and the smallest copied share the memorisation rule flags
    (held-out images: fresh ones)."""
    held_out = domain.draw(np.random.default_rng(800).integers(0, domain.num_modes, num_samples), seed=900)
    result = {}
    for space, extractor in extractors.items():
        reference = references[space]
        noise = calibrate_noise(reference, num_samples)
        held_features = extractor.extract(held_out)
        noise["memorised_share_heldout"] = memorised_share(held_features, reference, num_samples)
        noise["copy_share_heldout"] = copy_share(held_features, reference.features)  # the deciding test's chance
        noise["heldout_size"] = num_samples
        result[space] = {"noise": noise}
        for kind in ("exact", "noisy"):
            points = []
            for share, images in copying_ladder(domain, num_samples, noisy=kind == "noisy"):
                scores = score(extractor.extract(images), reference)
                points.append({"copied_share": share, "memorised_share": scores["memorised_share"],
                               "copy_share": scores["copy_share"], "num_samples": len(images)})
            rule = detect_memorisation([{"epoch": i, **p} for i, p in enumerate(points)], noise)
            distance = set(rule.flagged_epochs("distance test"))
            for index, (point, flagged) in enumerate(zip(points, rule.memorised)):
                point["flagged"] = flagged
                point["distance_test_flagged"] = index in distance  # the rule before issue 26, reported
            flagged_shares = [p["copied_share"] for p in points if p["flagged"]]
            result[space][kind] = {
                "points": points, "threshold": rule.threshold, "chance": rule.chance,
                "spearman": _spearman([p["copy_share"] for p in points], list(COPY_SHARES)),
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
    lines = ["", "## Copying ladders: copy share against the share of training images copied", "",
             "| dataset | features | copies | copy share at " + ", ".join(f"{s:.0%}" for s in COPY_SHARES)
             + " copied | Spearman | threshold (chance) | first flagged |", "|---|---|---|---|---|---|---|"]
    for domain, spaces in copying.items():
        for space, ladders in spaces.items():
            for kind in ("exact", "noisy"):
                ladder = ladders[kind]
                shares = ", ".join(f"{p['copy_share']:.3f}" for p in ladder["points"])
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
        # Every score and the chance levels, so experiments/collapse/replay.py can re-apply a changed
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
        "onset_error_checkpoints": index_gap(epochs, collapse.onset_epoch, onset_gt),
    }


def index_gap(epochs: list[int], detected: int | None, truth: int | None) -> int | None:
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


# --------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------


class Histories(Protocol):
    """How a benchmark trains a run and scores its checkpoints: into a store, or in memory."""

    def train(self, spec: RunSpec, seed: int) -> str:
        """Train one run of ``spec``; returns its id."""

    def ground_truth(self, run_id: str, *, keep_best: bool) -> tuple[dict[int, dict], torch.nn.Module | None]:
        """Every checkpoint's ground truth (``{epoch: ModeReport.to_dict()}``), on facegan's own
        latents; with ``keep_best``, also the ground-truth best checkpoint's generator."""

    def evaluate(self, run_id: str, space: str):
        """What ``facegan evaluate`` reports for the run's checkpoints in feature space ``space``
        (an :class:`evaluation.ranking.Evaluation`)."""


def references_of(domains: Sequence[Domain], extractors: dict[str, dict]) -> dict[str, dict]:
    """Per domain and feature space, the real images' reference features."""
    return {domain.name: {space: RealReference.from_features(ex.extract(domain.real))
                          for space, ex in extractors[domain.name].items()}
            for domain in domains}


def run_order(scale: Scale, order: Sequence[tuple[str, int]] | None = None) -> list[tuple[RunSpec, int]]:
    """The scale's runs as (spec, seed): in the scale's order, or in ``order`` (names and seeds)."""
    if order is None:
        return [(spec, seed) for spec in scale.runs for seed in spec.seeds]
    specs = {spec.name: spec for spec in scale.runs}
    return [(specs[name], seed) for name, seed in order if name in specs and seed in specs[name].seeds]


def run_study(result: dict, scale: Scale, domains: Sequence[Domain], extractors: dict[str, dict],
              references: dict[str, dict], histories: Histories, log: Callable[[str], None], *,
              ladders: bool = True, order: Sequence[tuple[str, int]] | None = None,
              after_run: Callable[[dict], None] | None = None) -> dict:
    """Both parts of the study into ``result`` (its ``ladders`` and ``histories``); returns it.

    Args:
        result: the result being built, with ``ladders`` and ``histories.runs`` to add to.
        scale: what to run.
        domains: the datasets; the first is the faces, the runs' data.
        extractors: per domain, ``{feature space: extractor}`` for the ladders.
        references: per domain and space, the real images' features (:func:`references_of`).
        histories: how the runs are trained and scored; spaces are the faces' extractors' keys.
        log: progress lines.
        ladders: the modes and repeats ladders of every domain, and the truncation ladder on the
            first stable run's ground-truth best generator.
        order: the runs' order (:func:`run_order`).
        after_run: called with ``result`` after every run (to write what is finished so far).
    """
    faces = domains[0]
    if ladders:
        for domain in domains:
            for kind in ("modes", "repeats"):
                sets = (modes_ladder(domain, scale.num_samples) if kind == "modes"
                        else repeats_ladder(domain, scale.num_samples, scale.repeats_ladder))
                key = f"{domain.name}/{kind}"
                result["ladders"][key] = score_ladder(sets, domain, extractors[domain.name], references[domain.name])
                log(f"ladder {key}: {result['ladders'][key]['spearman']}")
    truncation = f"{faces.name}/truncation"
    for spec, seed in run_order(scale, order):
        name = f"{spec.name}-seed{seed}"
        began = time.perf_counter()
        run_id = histories.train(spec, seed)
        seconds = {"train": round(time.perf_counter() - began, 1)}
        began = time.perf_counter()
        keep = ladders and not spec.designed_to_collapse and truncation not in result["ladders"]
        truth, generator = histories.ground_truth(run_id, keep_best=keep)
        seconds["ground_truth"] = round(time.perf_counter() - began, 1)
        epochs = sorted(truth)
        log(f"{name}: trained {seconds['train']} s; GT modes {[truth[e]['modes'] for e in epochs]}, "
            f"GT onset {gt_onset(epochs, [truth[e]['modes'] for e in epochs])}")
        for space in extractors[faces.name]:
            began = time.perf_counter()
            evaluation = histories.evaluate(run_id, space)
            summary = summarise_run(name, seed, spec, evaluation, truth)
            summary["features"] = space
            summary["seconds"] = {**seconds, "evaluate": round(time.perf_counter() - began, 1)}
            result["histories"]["runs"].append(summary)
            picks = summary["picks"]
            log(f"  [{space}] choice epoch {picks['facegan']['epoch']} ({picks['facegan']['modes']} modes; GT best "
                f"{picks['gt_best']['modes']}, lowest FID {picks['lowest_fid']['modes']}), onset "
                f"{summary['detected_onset']} ({summary['seconds']['evaluate']} s)")
        if generator is not None:
            result["ladders"][truncation] = score_ladder(truncation_ladder(generator, scale.num_samples), faces,
                                                         extractors[faces.name], references[faces.name])
            log(f"ladder {truncation}: {result['ladders'][truncation]['spearman']}")
        if after_run is not None:
            after_run(result)
    return result


def finish(result: dict, started: float) -> dict:
    """Refresh the reliability, the targets and the total time from what ``result`` holds."""
    runs = result["histories"]["runs"]
    result["histories"]["reliability"] = reliability(runs)
    result["targets"] = {**ladder_targets(result["ladders"]),
                         **(copying_targets(result["copying"]) if "copying" in result else {}),
                         **(history_targets(runs) if runs else {})}
    result["seconds_total"] = time.perf_counter() - started
    return result


def write_result(result: dict, out: Path, stem: str) -> list[Path]:
    """``<stem>.json`` (everything, for replay.py and ground_truth_noise.py) and ``<stem>.md`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps(result, indent=1, default=json_default))
    md_path.write_text(markdown(result))
    return [json_path, md_path]


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
    if "provenance" in result:
        lines += provenance.markdown_lines(result["provenance"])
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


def json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
