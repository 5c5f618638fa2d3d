"""Copying ladders, degraded ladders, C_T and long stable histories (issue 26, the measuring half).

facegan's copying check must flag generators that hand back training images and must not flag
generators that draw novel but imperfect images (blurry, noisy, off-colour): those lie closer to
the training set than novel real images do, which made the old rule (``memorised_share``) raise
false alarms. This script measures whatever rule :mod:`evaluation.memorisation` holds today on
sets whose truth is known, through the product's own scoring path (:class:`evaluation.engine.Scorer`
and :func:`evaluation.engine.evaluate`, with the built-in faces' held-out renders as the chance
level, as ``facegan evaluate`` does), and beside it Meehan et al. 2020's C_T:

1. **Degraded ladders** (0% copied): novel faces (fresh renders, never training images) blurred,
   with pixel noise, colour-shifted, down-and-up sampled and JPEG-compressed, 3 strengths each,
   plus the clean set. None should be flagged.
2. **Copy ladders**: 0, 2, 5, 10% of the samples training images, exact or with pixel noise,
   many distinct ones or a handful repeated; the rest novel. All but 0% should be flagged.
3. **Long stable histories**: (a) runs of checkpoints whose samples are novel faces whose
   degradation wanders over the kinds and strengths; (b) the collapse benchmark's stable
   training configuration trained into an MLflow store with >= 40 checkpoints and scored with
   ``score_run`` (``facegan evaluate --run``). Neither copies nor is designed to collapse: the
   target is 0 checkpoints called copying and no collapse onset.

Each part at every sample count asked for (default 100, 500 and 2000 per checkpoint) and in each
feature space: ``random`` and ``encoder``, a SimCLR encoder trained on the training faces and
written as a torch.export program (``.pt2``), as ``facegan encoder`` writes it.

C_T (:func:`ct_score`) is a reading of layer6ai-labs/dgm-eval ``dgm_eval/metrics/ct.py`` (itself
from casey-meehan/data-copying): features above 64 dimensions reduced to 64 by PCA fitted on the
training features, 3 k-means cells on the training features, per cell a Mann-Whitney U of the
generated samples' against the held-out images' nearest-training distances (training images of
that cell only), Z-scored under the null with dgm-eval's continuity correction and no tie
correction, averaged over the cells holding more than 20 generated samples, weighted by the
held-out images' share of each cell. C_T << 0: the samples lie closer to the training images than
held-out ones do (copying); >> 0: farther (underfitting). dgm-eval reports the number; the call
"copying" below is ours: C_T < :data:`CT_COPYING`.

Usage (from the repository root)::

    python -m experiments.collapse.copying [--tiny] [--sizes 100 500 2000] [--encoder FILE.pt2]
        [--parts ladders,histories,trained] [--tag TAG] [--tracking-uri URI] [--out DIR]
    python -m experiments.collapse.copying --compare BEFORE.json AFTER.json [--out DIR]

Writes ``copying_ladders[-TAG].json`` and ``.md`` under ``experiments/results/``; ``--compare``
writes ``copying_ladders-compare.md``: two runs of this script (e.g. before and after a rule
change) side by side, set by set.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.stats import rankdata

from evaluation.encoder import EncoderSettings, encoder_format, save_encoder, train_encoder
from evaluation.engine import Scorer, evaluate
from evaluation.features import get_extractor
from evaluation.sources import ImagesCheckpoint
from facegan.scoring import real_images
from facegan.synthetic import synthetic_faces, synthetic_holdout

from experiments import RESULTS_DIR, provenance

IMAGE_SIZE = 32  # the collapse benchmark's CPU size
NUM_TRAIN = 2000  # training images: the benchmark's trained runs use 2000 faces
NUM_HELDOUT = 1000  # the product's held-out renders for the built-in faces (facegan.scoring.SYNTHETIC_HOLDOUT)
NOVEL_SEED = 5000  # novel faces are rendered from seeds NOVEL_SEED + k: neither training (0) nor held-out
SIZES = (100, 500, 2000)
# Strengths chosen before looking at any result; blur and noise differ from the strengths the
# rule's author tuned on (experiments/copy_ratio.py: blur sigma 1 and 2, noise 16 and 32, at 64 x 64).
DEGRADATIONS: dict[str, tuple[float, ...]] = {
    "blur": (0.7, 1.5, 2.5),  # Gaussian sigma, pixels
    "noise": (8, 24, 48),  # Gaussian pixel noise, std in grey levels
    "colour": (10, 25, 50),  # per image, each channel shifted by up to this many levels
    "resample": (24, 16, 8),  # down to this side (antialiased), back up to 32 (bilinear)
    "jpeg": (50, 20, 5),  # PIL JPEG quality
}
COPY_SHARES = (0.0, 0.02, 0.05, 0.10)
COPY_NOISE = 4  # noisy copies: every pixel moved by up to this many levels (as the benchmark's copying ladder)
HANDFUL = 5  # "a handful repeated": this many training images, each copied many times
CT_COPYING = -3.0  # our call on C_T: below this, copying
CT_CELLS = 3  # dgm-eval's k-means cells
CT_MIN_GENERATED = 20  # dgm-eval: a cell counts when it holds more than 20 generated samples
CT_MAX_DIM = 64  # dgm-eval: PCA to 64 components above this
HISTORY_CHECKPOINTS = 40
HISTORY_SAMPLES = 500


# --------------------------------------------------------------------------------------------
# Degradations
# --------------------------------------------------------------------------------------------


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    return images.round().clamp(0, 255).to(torch.uint8)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (reflect padding) of uint8 images."""
    radius = max(1, int(np.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    out = F.pad(images.float(), (radius,) * 4, mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    out = F.conv2d(out, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)
    return _to_uint8(out)


def jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Each image through PIL's JPEG encoder at ``quality`` and back."""
    out = []
    for image in images.permute(0, 2, 3, 1).numpy():
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
        out.append(np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def degrade(images: torch.Tensor, kind: str, strength: float, seed: int) -> torch.Tensor:
    """``images`` (uint8 N x 3 x S x S) degraded by ``kind`` (a key of :data:`DEGRADATIONS`) at ``strength``."""
    rng = torch.Generator().manual_seed(seed)
    if kind == "blur":
        return gaussian_blur(images, strength)
    if kind == "noise":
        return _to_uint8(images.float() + strength * torch.randn(images.shape, generator=rng))
    if kind == "colour":
        shift = (torch.rand(images.shape[0], 3, 1, 1, generator=rng) * 2 - 1) * strength
        return _to_uint8(images.float() + shift)
    if kind == "resample":
        side = images.shape[-1]
        small = F.interpolate(images.float(), size=(int(strength),) * 2, mode="bilinear", align_corners=False,
                              antialias=True)
        return _to_uint8(F.interpolate(small, size=(side, side), mode="bilinear", align_corners=False))
    if kind == "jpeg":
        return jpeg(images, int(strength))
    raise ValueError(f"unknown degradation {kind!r}; known: {', '.join(DEGRADATIONS)}")


def novel_faces(num_images: int, key: int) -> torch.Tensor:
    """Fresh faces, neither training nor held-out images (``key`` picks the draw)."""
    return synthetic_faces(num_images, IMAGE_SIZE, seed=NOVEL_SEED + key).images


# --------------------------------------------------------------------------------------------
# The sets
# --------------------------------------------------------------------------------------------


def degraded_ladder(num_samples: int) -> list[tuple[str, torch.Tensor]]:
    """The clean novel set and each degradation at each strength: 0% copied."""
    novel = novel_faces(num_samples, 0)
    sets = [("clean", novel)]
    for k, (kind, strengths) in enumerate(DEGRADATIONS.items()):
        for s, strength in enumerate(strengths):
            sets.append((f"{kind}={strength:g}", degrade(novel, kind, strength, seed=10 * k + s)))
    return sets


def copy_ladders(training: torch.Tensor, num_samples: int) -> dict[str, list[tuple[float, torch.Tensor]]]:
    """Per kind (exact/noisy x many/handful), sets with each share of :data:`COPY_SHARES` copied."""
    novel = novel_faces(num_samples, 0)
    order = torch.from_numpy(np.random.default_rng(600).permutation(len(training)))
    ladders = {}
    for noisy in (False, True):
        for handful in (False, True):
            kind = f"{'noisy' if noisy else 'exact'}-{'handful' if handful else 'many'}"
            rng = np.random.default_rng(700 + 2 * noisy + handful)
            sets = []
            for share in COPY_SHARES:
                copied = round(share * num_samples)
                pool = HANDFUL if handful else len(order)
                copies = training[order[torch.arange(copied) % pool]]
                if noisy:
                    jitter = torch.from_numpy(rng.integers(-COPY_NOISE, COPY_NOISE + 1, copies.shape))
                    copies = (copies.int() + jitter).clamp(0, 255).to(torch.uint8)
                sets.append((share, torch.cat([copies, novel[: num_samples - copied]])))
            ladders[kind] = sets
    return ladders


def degraded_history(num_checkpoints: int, num_samples: int, seed: int,
                     max_level: int = 3, fixed: bool = False) -> list[tuple[str, torch.Tensor]]:
    """A run that neither copies nor collapses: every checkpoint fresh novel faces, degraded by a
    kind that changes every 8 checkpoints at a strength that wanders (0 = clean, 1..``max_level``
    of :data:`DEGRADATIONS`' strengths; 1: the look of an ordinary GAN's imperfect samples).

    ``fixed``: instead, one look for the whole run, a kind and a strength up to ``max_level``
    drawn once (a generator's own imperfection: always a little blurry, say)."""
    rng = np.random.default_rng(seed)
    kinds = list(DEGRADATIONS)
    if fixed:
        kind = kinds[int(rng.integers(len(kinds)))]
        strength = DEGRADATIONS[kind][int(rng.integers(max_level))]
        return [(f"{kind}={strength:g}", degrade(novel_faces(num_samples, 1000 * (seed + 1) + index), kind, strength,
                                                  seed=index)) for index in range(num_checkpoints)]
    level, sets = int(rng.integers(0, max_level + 1)), []
    for index in range(num_checkpoints):
        kind = kinds[(index // 8 + seed) % len(kinds)]
        level = int(np.clip(level + rng.integers(-1, 2), 0, max_level))
        images = novel_faces(num_samples, 1000 * (seed + 1) + index)
        if level == 0:
            sets.append(("clean", images))
        else:
            strength = DEGRADATIONS[kind][level - 1]
            sets.append((f"{kind}={strength:g}", degrade(images, kind, strength, seed=index)))
    return sets


# --------------------------------------------------------------------------------------------
# Features: each distinct image once
# --------------------------------------------------------------------------------------------


class MemoExtractor:
    """A feature extractor that computes each distinct image's features once (keyed by its bytes).

    The ladders share most of their images (the novel part of every copy set, the prefixes at
    each sample count); the features are exactly the wrapped extractor's. Everything else (name,
    identity, note) is the wrapped extractor's, so the engine's cache keys do not change.
    """

    def __init__(self, inner):
        self.inner = inner
        self._memo: dict[bytes, np.ndarray] = {}

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def extract(self, images, *, batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        batches = [images] if isinstance(images, torch.Tensor) else list(images)
        if not batches:
            return self.inner.extract(batches)
        stacked = torch.cat(batches)
        keys = [hashlib.blake2b(image.numpy().tobytes(), digest_size=16).digest() for image in stacked]
        todo: dict[bytes, int] = {}
        for index, key in enumerate(keys):
            if key not in self._memo and key not in todo:
                todo[key] = index
        if todo:
            fresh = self.inner.extract(stacked[list(todo.values())], batch_size=batch_size, progress=progress)
            self._memo.update(zip(todo, fresh))
        return np.stack([self._memo[key] for key in keys])


# --------------------------------------------------------------------------------------------
# C_T (Meehan et al. 2020, as dgm-eval computes it)
# --------------------------------------------------------------------------------------------


def mann_whitney_z(generated: np.ndarray, held_out: np.ndarray) -> tuple[float, float]:
    """``(U, Z)``: U of ``generated`` against ``held_out`` (ties share their mean rank) and its Z
    under the null with dgm-eval's continuity correction (+0.5) and no tie correction.

    U is what ``scipy.stats.mannwhitneyu(generated, held_out).statistic`` returns; without ties
    ``norm.cdf(Z)`` is its asymptotic one-sided ``alternative="less"`` p-value.
    """
    m, n = len(generated), len(held_out)
    ranks = rankdata(np.concatenate([generated, held_out]))
    u = float(ranks[:m].sum() - m * (m + 1) / 2)
    z = (u - (n * m / 2 - 0.5)) / np.sqrt(n * m * (n + m + 1) / 12)
    return u, float(z)


def _nearest(points: np.ndarray, training: np.ndarray) -> np.ndarray:
    squared = (points**2).sum(1)[:, None] - 2 * points @ training.T + (training**2).sum(1)[None, :]
    return np.sqrt(np.maximum(squared.min(axis=1), 0.0))


class CTReference:
    """Meehan et al.'s C_T against fixed training and held-out features: the PCA, the k-means cells
    and the held-out images' nearest-training distances are computed once, here.

    Raises:
        ValueError: a cell holds no held-out or no training images (as dgm-eval does: use fewer cells).
    """

    def __init__(self, training: np.ndarray, held_out: np.ndarray, *, cells: int = CT_CELLS, seed: int = 0):
        from sklearn.cluster import KMeans
        from sklearn.decomposition import PCA

        self.pca = None
        if training.shape[1] > CT_MAX_DIM:
            self.pca = PCA(n_components=CT_MAX_DIM, random_state=seed).fit(training)
            training, held_out = self.pca.transform(training), self.pca.transform(held_out)
        self.kmeans = KMeans(n_clusters=cells, n_init=10, random_state=seed).fit(training)
        self.cells = cells
        t_cells, p_cells = self.kmeans.labels_, self.kmeans.predict(held_out)
        self.weights = np.bincount(p_cells, minlength=cells) / len(held_out)
        self.training = [training[t_cells == cell] for cell in range(cells)]
        self.held_distances = []
        for cell in range(cells):
            held_in = held_out[p_cells == cell]
            if len(self.training[cell]) == 0 or len(held_in) == 0:
                raise ValueError(f"C_T cell {cell} holds no training or no held-out images; use fewer cells")
            self.held_distances.append(_nearest(held_in, self.training[cell]))

    def score(self, generated: np.ndarray) -> dict:
        """``{"ct": C_T, "cells": per-cell Z (None where a cell holds at most 20 generated samples)}``;
        C_T is NaN when no cell holds enough."""
        if self.pca is not None:
            generated = self.pca.transform(generated)
        q_cells = self.kmeans.predict(generated)
        zs: list[float | None] = []
        for cell in range(self.cells):
            gen_in = generated[q_cells == cell]
            if len(gen_in) <= CT_MIN_GENERATED:
                zs.append(None)
                continue
            zs.append(mann_whitney_z(_nearest(gen_in, self.training[cell]), self.held_distances[cell])[1])
        kept = [cell for cell in range(self.cells) if zs[cell] is not None]
        weights = self.weights[kept]
        ct = float(np.dot(weights, [zs[c] for c in kept]) / weights.sum()) if kept else float("nan")
        return {"ct": ct, "cells": zs}


def ct_score(training: np.ndarray, held_out: np.ndarray, generated: np.ndarray, *, cells: int = CT_CELLS,
             seed: int = 0) -> float:
    """C_T of ``generated`` against ``training``, ``held_out`` the novel reference (:class:`CTReference`)."""
    return CTReference(training, held_out, cells=cells, seed=seed).score(generated)["ct"]


# --------------------------------------------------------------------------------------------
# Judging sets through the product's path
# --------------------------------------------------------------------------------------------


def copy_keys(scores: dict) -> dict:
    """The copying scores a checkpoint has under today's rule (old: memorised_share; new: copy_share)."""
    return {k: round(float(v), 4) for k, v in scores.items() if k in ("memorised_share", "copy_share")}


def judge(sets: list[tuple[str, torch.Tensor]], scorer: Scorer, ct: CTReference) -> dict:
    """The sets as the checkpoints of one run, through :func:`evaluation.engine.evaluate`: per set
    the copying scores, the memorisation rule's call and C_T; the run's memorisation and collapse onsets."""
    checkpoints = [ImagesCheckpoint(epoch=i + 1, images=images, label=str(label)) for i, (label, images) in
                   enumerate(sets)]
    evaluation = evaluate(checkpoints, scorer)
    memorisation = evaluation.memorisation
    distance = set(_distance_flags(memorisation))
    points = []
    for (label, images), scored in zip(sets, evaluation.checkpoints):
        value = ct.score(scorer.extractor.extract(images))["ct"]
        points.append({"set": label, **copy_keys(scored.scores), "flagged": evaluation.memorised(scored.epoch),
                       "distance_flagged": scored.epoch in distance,
                       "ct": round(value, 3), "ct_flagged": bool(value < CT_COPYING),
                       "coverage": round(scored.scores["coverage"], 4),
                       # Every score, so a changed rule can be judged on this history again in seconds
                       # (``python -m experiments.collapse.replay`` on this script's JSON).
                       "scores": {k: float(v) for k, v in scored.scores.items()}})
    return {"points": points, "threshold": memorisation.threshold, "chance": memorisation.chance,
            "reference": memorisation.reference, "memorisation_onset": memorisation.onset_epoch,
            "collapse_onset": evaluation.collapse.onset_epoch, "rule": _rule_name(evaluation),
            "noise": dict(evaluation.noise)}


def _distance_flags(memorisation) -> list[int]:
    """The epochs the distance test (the old rule, ``memorised_share``) flags: the deciding test
    before the ratio test came, a reported one since (``MemorisationResult.tests``)."""
    if getattr(memorisation, "key", "memorised_share") == "memorised_share" or not hasattr(memorisation, "tests"):
        return memorisation.memorised_epochs
    return memorisation.flagged_epochs("distance test")


def _rule_name(evaluation) -> str:
    keys = evaluation.checkpoints[0].scores
    return "copy_share (nearest/second-nearest ratio)" if "copy_share" in keys else "memorised_share (old)"


# --------------------------------------------------------------------------------------------
# Trained runs (MLflow store, score_run)
# --------------------------------------------------------------------------------------------


def trained_histories(spaces: dict[str, str], tracking_uri: str, seeds: tuple[int, ...], epochs: int,
                      checkpoint_every: int, num_samples: int, gt_samples: int, log) -> list[dict]:
    """The collapse benchmark's stable configuration trained for ``epochs`` (a checkpoint every
    ``checkpoint_every``) into the store and scored with ``score_run`` in each space; a run already
    in the store under the same name is scored again, not retrained (scores already logged are reused)."""
    from experiments.collapse import ground_truth as gt
    from experiments.collapse.benchmark import SCALES, StoreHistories
    from experiments.collapse.study import STABLE, RunSpec, summarise_run
    from facegan.tracking import connect

    spec = RunSpec("stable", STABLE, False, seeds)
    scale = replace(SCALES["quick"], name=f"long{epochs}", runs=(spec,), epochs=epochs,
                    checkpoint_every=checkpoint_every, num_samples=num_samples, gt_samples=gt_samples,
                    num_train_images=NUM_TRAIN)
    client = connect(tracking_uri)
    histories = StoreHistories(scale, tracking_uri, gt.FaceClassifier.load_or_train(), spaces)
    runs = []
    for seed in seeds:
        name = f"{scale.name}-stable-seed{seed}"
        found = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                   f"attributes.run_name = '{name}' and attributes.status = 'FINISHED'")
        started = time.perf_counter()
        run_id = found[0].info.run_id if found else histories.train(spec, seed)
        trained = round(time.perf_counter() - started, 1)
        truth, _ = histories.ground_truth(run_id, keep_best=False)
        log(f"{name}: {len(truth)} checkpoints ({'reused' if found else f'trained {trained} s'})")
        for space in spaces:
            evaluation = histories.evaluate(run_id, space)
            summary = summarise_run(f"stable-seed{seed}", seed, spec, evaluation, truth)
            memorisation = evaluation.memorisation
            runs.append({**summary, "features": space, "run_id": run_id,
                         "memorised_epochs": memorisation.memorised_epochs,
                         "distance_test_epochs": _distance_flags(memorisation),
                         "memorisation_onset": memorisation.onset_epoch,
                         "memorisation_threshold": memorisation.threshold, "rule": _rule_name(evaluation)})
            log(f"  [{space}] copying at {memorisation.memorised_epochs or 'none'}; collapse onset "
                f"{evaluation.collapse.onset_epoch}; GT onset {summary['gt_onset']}")
    return runs


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def _calls(points: list[dict], key: str) -> str:
    return "".join(_mark(p.get(key, p["flagged"])) for p in points)


def _mark(flag: bool) -> str:
    return "X" if flag else "."


def _share(point: dict, key: str) -> str:
    return f"{point[key]:.3f}" if key in point else "n/a"


def markdown(result: dict) -> str:
    lines = [f"# Copying: degraded and copy ladders, C_T, long stable histories ({result['rule']})", "",
             f"Faces {IMAGE_SIZE} x {IMAGE_SIZE}; training images {NUM_TRAIN}; held-out renders {NUM_HELDOUT} "
             f"(the rule's chance level and C_T's novel reference). Flags: X flagged, . not. C_T copying call: "
             f"C_T < {CT_COPYING}. Total {result['seconds_total']:.0f} s.", ""]
    if result.get("degraded"):
        lines += ["## Degraded ladders (novel faces, 0% copied): none should be flagged", "",
                  "| features | samples | set | memorised share | copy share | rule | distance test (old rule) | C_T "
                  "| C_T call |", "|---|---|---|---|---|---|---|---|---|"]
        for key, ladder in result["degraded"].items():
            space, size = key.split("/")
            for p in ladder["points"]:
                lines.append(f"| {space} | {size} | {p['set']} | {_share(p, 'memorised_share')} | "
                             f"{_share(p, 'copy_share')} | {_mark(p['flagged'])} | "
                             f"{_mark(p.get('distance_flagged', p['flagged']))} | {p['ct']:.1f} | "
                             f"{_mark(p['ct_flagged'])} |")
        lines += [""]
    if result.get("copies"):
        lines += ["## Copy ladders: flagged at " + ", ".join(f"{s:.0%}" for s in COPY_SHARES)
                  + " copied (0%: none should be; the others all should)", "",
                  "| features | samples | copies | rule's share at each copied share | rule | distance test "
                  "(old rule) | C_T at each share | C_T call |", "|---|---|---|---|---|---|---|---|"]
        for key, ladder in result["copies"].items():
            space, size, kind = key.split("/")
            scores = ", ".join(f"{p.get('copy_share', p.get('memorised_share')):.3f}" for p in ladder["points"])
            cts = ", ".join(f"{p['ct']:.1f}" for p in ladder["points"])
            lines.append(f"| {space} | {size} | {kind} | {scores} | {_calls(ladder['points'], 'flagged')} | "
                         f"{_calls(ladder['points'], 'distance_flagged')} | {cts} | "
                         f"{_calls(ladder['points'], 'ct_flagged')} |")
        lines += [""]
    if result.get("histories"):
        lines += ["## Long histories of degraded novel faces (no copying, no collapse)", "",
                  "| features | history | checkpoints | called copying (rule) | (distance test) | called copying (C_T) | "
                  "memorisation onset | collapse onset | C_T min / median |", "|---|---|---|---|---|---|---|---|---|"]
        for key, history in result["histories"].items():
            space, name = key.split("/")
            points = history["points"]
            cts = [p["ct"] for p in points]
            lines.append(f"| {space} | {name} | {len(points)} | {sum(p['flagged'] for p in points)} | "
                         f"{sum(p.get('distance_flagged', p['flagged']) for p in points)} | "
                         f"{sum(p['ct_flagged'] for p in points)} | {history['memorisation_onset']} | "
                         f"{history['collapse_onset']} | {min(cts):.1f} / {np.median(cts):.1f} |")
        lines += [""]
    if result.get("trained"):
        lines += ["## Long trained stable runs (MLflow store, score_run)", "",
                  "| run | features | checkpoints | called copying | (distance test) | memorisation onset | "
                  "collapse onset | GT onset | GT modes first / best / last |", "|---|---|---|---|---|---|---|---|---|"]
        for r in result["trained"]:
            modes = [c["gt"]["modes"] for c in r["checkpoints"]]
            distance = r.get("distance_test_epochs", r["memorised_epochs"])
            lines.append(f"| {r['run']} | {r['features']} | {len(r['checkpoints'])} | "
                         f"{len(r['memorised_epochs'])} {r['memorised_epochs'] or ''} | {len(distance)} | "
                         f"{r['memorisation_onset']} | "
                         f"{r['detected_onset']} | {r['gt_onset']} | {modes[0]} / {max(modes)} / {modes[-1]} |")
        lines += [""]
    lines += ["## Totals", ""] + [f"- {k}: {v}" for k, v in result["totals"].items()]
    lines += provenance.markdown_lines(result["provenance"])
    return "\n".join(lines) + "\n"


def totals(result: dict) -> dict:
    """False alarms and misses, rule and C_T."""
    out = {}
    degraded = [p for ladder in result.get("degraded", {}).values() for p in ladder["points"]]
    whos = (("rule", "flagged"), ("distance test", "distance_flagged"), ("C_T", "ct_flagged"))

    def flagged(point: dict, key: str) -> bool:
        return bool(point.get(key, point["flagged"]))

    if degraded:
        for who, key in whos:
            out[f"degraded sets flagged ({who})"] = f"{sum(flagged(p, key) for p in degraded)} of {len(degraded)}"
    zero = [ladder["points"][0] for ladder in result.get("copies", {}).values()]
    copied = [p for ladder in result.get("copies", {}).values() for p in ladder["points"][1:]]
    if copied:
        for who, key in whos:
            out[f"0%-copied sets flagged ({who})"] = f"{sum(flagged(p, key) for p in zero)} of {len(zero)}"
            out[f"copy sets (2-10%) missed ({who})"] = f"{sum(not flagged(p, key) for p in copied)} of {len(copied)}"
            for share in COPY_SHARES[1:]:
                at = [p for ladder in result["copies"].values() for p in ladder["points"] if p["set"] == share]
                out[f"missed at {share:.0%} copied ({who})"] = f"{sum(not flagged(p, key) for p in at)} of {len(at)}"
    points = [p for h in result.get("histories", {}).values() for p in h["points"]]
    if points:
        for who, key in whos:
            out[f"degraded-history checkpoints called copying ({who})"] = (
                f"{sum(flagged(p, key) for p in points)} of {len(points)}")
        out["degraded-history collapse onsets"] = sum(h["collapse_onset"] is not None
                                                      for h in result["histories"].values())
    if result.get("trained"):
        runs = result["trained"]
        count = sum(len(r["checkpoints"]) for r in runs)
        out["trained-run checkpoints called copying (rule)"] = (f"{sum(len(r['memorised_epochs']) for r in runs)} "
                                                                f"of {count}")
        out["trained-run checkpoints called copying (distance test)"] = (
            f"{sum(len(r.get('distance_test_epochs', r['memorised_epochs'])) for r in runs)} of {count}")
        out["trained-run collapse onsets"] = f"{sum(r['detected_onset'] is not None for r in runs)} of {len(runs)}"
    return out


def compare_markdown(before: dict, after: dict) -> str:
    """Two results of this script (e.g. the old rule and the new) side by side, with C_T."""
    lines = [f"# Copying ladders: {before['rule']} vs {after['rule']}, and C_T", "",
             f"Before: `{before['provenance']['command']}` at {before['provenance']['commit']}; after: "
             f"`{after['provenance']['command']}` at {after['provenance']['commit']}. Flags: X flagged, . not.", ""]
    for part, title in (("degraded", "Degraded ladders (0% copied: every X is a false alarm)"),
                        ("copies", "Copy ladders (0, 2, 5, 10% copied: X expected but at 0%)"),
                        ("histories", "Long degraded histories (every X is a false alarm)")):
        common = [k for k in before.get(part, {}) if k in after.get(part, {})]
        if not common:
            continue
        lines += [f"## {title}", "", "| set | old rule | new rule | C_T | flagged: old / new / C_T |",
                  "|---|---|---|---|---|"]
        for key in common:
            old, new = before[part][key]["points"], after[part][key]["points"]
            if part == "degraded":
                for p, q in zip(old, new):
                    lines.append(f"| {key} {p['set']} | {p.get('memorised_share', p.get('copy_share')):.3f} | "
                                 f"{q.get('copy_share', q.get('memorised_share')):.3f} | {q['ct']:.1f} | "
                                 f"{'X' if p['flagged'] else '.'} / {'X' if q['flagged'] else '.'} / "
                                 f"{'X' if q['ct_flagged'] else '.'} |")
            else:
                lines.append(f"| {key} | {_calls(old, 'flagged')} | {_calls(new, 'flagged')} | "
                             f"{_calls(new, 'ct_flagged')} | {sum(p['flagged'] for p in old)} / "
                             f"{sum(p['flagged'] for p in new)} / {sum(p['ct_flagged'] for p in new)} of {len(new)} |")
        lines += [""]
    if before.get("trained") and after.get("trained"):
        lines += ["## Long trained stable runs", "", "| run | features | checkpoints | copying: old / new | "
                  "collapse onset: old / new | GT onset |", "|---|---|---|---|---|---|"]
        for p, q in zip(before["trained"], after["trained"]):
            lines.append(f"| {q['run']} | {q['features']} | {len(q['checkpoints'])} | {len(p['memorised_epochs'])} / "
                         f"{len(q['memorised_epochs'])} | {p['detected_onset']} / {q['detected_onset']} | "
                         f"{q['gt_onset']} |")
        lines += [""]
    lines += ["## Totals", "", "| figure | before | after |", "|---|---|---|"]
    lines += [f"| {k} | {before['totals'].get(k, before['totals'].get(k.replace(' (rule)', ''), ''))} | {v} |"
              for k, v in after["totals"].items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="seconds; for tests, not a measurement")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="samples per checkpoint")
    parser.add_argument("--parts", default="ladders,histories,trained",
                        help="comma-separated: ladders (degraded and copy), histories (degraded), trained")
    parser.add_argument("--encoder", type=Path, metavar="FILE.pt2",
                        help="the encoder space (from `facegan encoder` or an earlier run, kept with --keep-encoder); "
                             "default: train one on the training faces (30 epochs, --quick's)")
    parser.add_argument("--keep-encoder", type=Path, metavar="FILE.pt2", help="write the trained encoder here")
    parser.add_argument("--histories", type=int, default=2, help="degraded histories per feature space (seeds 0..N-1)")
    parser.add_argument("--history-levels", type=int, default=3, choices=(1, 2, 3),
                        help="the strongest degradation the histories wander to (1: only each kind's mildest, the "
                             "look of an ordinary GAN's samples; 3: all; default 3)")
    parser.add_argument("--history-fixed", action="store_true",
                        help="histories keep one look (a kind and a strength up to --history-levels, drawn per "
                             "history) instead of wandering")
    parser.add_argument("--history-seeds", type=int, nargs="+", metavar="SEED",
                        help="instead: the degraded histories' seeds (held-out ones: seeds no rule was tuned on)")
    parser.add_argument("--trained-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--trained-epochs", type=int, default=80)
    parser.add_argument("--checkpoint-every", type=int, default=2)
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--tag", default="", help="adds -TAG to the result files' names")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("BEFORE.json", "AFTER.json"))
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.compare:
        before, after = (json.loads(path.read_text()) for path in args.compare)
        text = compare_markdown(before, after)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "copying_ladders-compare.md").write_text(text)
        print(text)
        return {}
    parts = set(args.parts.split(","))
    unknown = parts - {"ladders", "histories", "trained"}
    if unknown:
        parser.error(f"unknown --parts {sorted(unknown)}")
    record = provenance.announce(__spec__.name, argv)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {message}", flush=True)

    num_train, sizes, checkpoints = (120, [30], 4) if args.tiny else (NUM_TRAIN, args.sizes, HISTORY_CHECKPOINTS)
    dataset = synthetic_faces(num_train, IMAGE_SIZE, seed=0)
    real = real_images(dataset)  # with the product's held-out renders, as `facegan evaluate` builds it
    held_out = synthetic_holdout(120 if args.tiny else NUM_HELDOUT, IMAGE_SIZE, 0)
    if args.tiny:
        real = replace(real, holdout=lambda: held_out, holdout_id="tiny")
    folder = Path(tempfile.mkdtemp(prefix="facegan-copying-"))
    os.environ["FACEGAN_CACHE_DIR"] = str(folder / "cache")  # this run's real features and chance levels only
    encoder = args.encoder
    if encoder is None:
        began = time.perf_counter()
        settings = EncoderSettings(epochs=1, batch_size=32) if args.tiny else EncoderSettings(epochs=30)
        encoder = save_encoder(train_encoder(dataset.images, settings, progress=False),
                               args.keep_encoder or folder / "encoder-faces.pt2")
        log(f"encoder trained in {time.perf_counter() - began:.0f} s: {encoder}")
    spaces = {"random": "random", "encoder": f"{encoder_format(encoder)}:{encoder}"}
    result = {"provenance": record, "image_size": IMAGE_SIZE, "num_train": num_train, "sizes": sizes,
              "degradations": DEGRADATIONS, "copy_shares": COPY_SHARES, "encoder": str(encoder),
              "ct_copying_below": CT_COPYING, "degraded": {}, "copies": {}, "histories": {}, "trained": []}
    rule = None
    for space, spec in spaces.items():
        extractor = MemoExtractor(get_extractor(spec))
        ct = CTReference(extractor.extract(dataset.images), extractor.extract(held_out))
        if "ladders" in parts:
            for size in sizes:
                scorer = Scorer(extractor, real, size)
                key = f"{space}/{size}"
                result["degraded"][key] = judge(degraded_ladder(size), scorer, ct)
                rule = result["degraded"][key]["rule"]
                log(f"degraded {key}: rule {_calls(result['degraded'][key]['points'], 'flagged')}, "
                    f"C_T {_calls(result['degraded'][key]['points'], 'ct_flagged')}")
                for kind, sets in copy_ladders(dataset.images, size).items():
                    result["copies"][f"{key}/{kind}"] = ladder = judge(sets, scorer, ct)
                    log(f"copies {key}/{kind}: rule {_calls(ladder['points'], 'flagged')}, "
                        f"C_T {_calls(ladder['points'], 'ct_flagged')}")
        if "histories" in parts:
            size = sizes[0] if args.tiny else HISTORY_SAMPLES
            scorer = Scorer(extractor, real, size)
            for seed in args.history_seeds or range(args.histories):
                level = ("-fixed" if args.history_fixed else "") + (
                    "" if args.history_levels == 3 else f"-level{args.history_levels}")
                result["histories"][f"{space}/degraded{level}-{seed}"] = history = judge(
                    degraded_history(checkpoints, size, seed, args.history_levels, args.history_fixed), scorer, ct)
                rule = history["rule"]
                log(f"history {space}/degraded{level}-{seed}: rule {_calls(history['points'], 'flagged')}, C_T "
                    f"{_calls(history['points'], 'ct_flagged')}, collapse onset {history['collapse_onset']}")
    if "trained" in parts and not args.tiny:
        result["trained"] = trained_histories(spaces, args.tracking_uri, tuple(args.trained_seeds),
                                              args.trained_epochs, args.checkpoint_every, HISTORY_SAMPLES, 2000, log)
        rule = rule or result["trained"][0]["rule"]
    shutil.rmtree(folder, ignore_errors=True)  # this run's feature cache (and its encoder, unless --keep-encoder)
    result["rule"] = rule or "n/a"
    result["totals"] = totals(result)
    result["seconds_total"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "copying_ladders" + ("-tiny" if args.tiny else "") + (f"-{args.tag}" if args.tag else "")
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=_json_default))
    (args.out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))
    print(json.dumps({"rule": result["rule"], "totals": result["totals"]}))
    return result


def _json_default(value):
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


if __name__ == "__main__":
    main()
