"""Copying training images: the ratio test, its chance level, the rule, and a choice that never falls on a copy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from scipy.stats import binom

from evaluation.collapse import choose_best, detect_collapse
from evaluation.engine import RealImages, Scorer, decide, evaluate
from evaluation.features import get_extractor
from evaluation.memorisation import (
    DISTANCE_TEST, RATIO_TEST, chance_level, copy_chance, copy_threshold, detect_memorisation,
)
from evaluation.metrics import COPY_RATIO, RealReference, calibrate_noise, copy_share, nearest_training, score
from evaluation.online import StopRule
from evaluation.ranking import Scored
from evaluation.sources import GeneratorCheckpoint
from experiments.copy_ratio import blur, noise
from facegan.synthetic import synthetic_faces, synthetic_holdout
from helpers import PoolGenerator

LOO = {"sample_size": 1000, "copy_share_loo": 0.002, "copy_share_loo_size": 2000,
       "memorised_share_mean": 0.012, "memorised_share_std": 0.003}
COLLAPSE_NOISE = {"coverage_std": 0.01, "diversity_std": 0.01, "duplicate_share_mean": 0.01, "duplicate_share_std": 0.005}


def rows(*shares, memorised=None, num_samples=1000):
    memorised = memorised or [0.0] * len(shares)
    return [{"epoch": 10 * (i + 1), "copy_share": s, "memorised_share": m, "num_samples": num_samples,
             "fid": 50.0 - i, "kid": 0.05 - i / 100, "kid_std": 1e-4, "coverage": 0.8, "diversity": 0.9,
             "duplicate_share": 0.01} for i, (s, m) in enumerate(zip(shares, memorised))]


def brute_force_ratio(features, training, exclude_self=False):
    distances = cdist(features, training)
    if exclude_self:
        np.fill_diagonal(distances, np.inf)
    ordered = np.sort(distances, axis=1)
    return np.argmin(distances, axis=1), ordered[:, 0], ordered[:, 1]


# --- the numerics against independent references ------------------------------------------------


def test_nearest_training_matches_a_brute_force_search():
    rng = np.random.default_rng(0)
    training, features = rng.normal(size=(300, 12)), rng.normal(size=(150, 12))
    features[:10] = training[:10] + 1e-3 * rng.normal(size=(10, 12))  # ten near-copies
    got = nearest_training(features, training)
    index, first, second = brute_force_ratio(features, training)
    np.testing.assert_array_equal(got.index, index)
    np.testing.assert_allclose(got.first, first, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got.second, second, rtol=1e-9)
    assert got.copies[:10].all() and copy_share(features, training) == np.mean(first / second < COPY_RATIO)
    loo = nearest_training(training, training, exclude_self=True)
    index, first, second = brute_force_ratio(training, training, exclude_self=True)
    np.testing.assert_array_equal(loo.index, index)
    np.testing.assert_allclose(loo.ratio, first / second, rtol=1e-6)
    # score() finds the two nearest in its own pass over the distances: the same copies.
    reference = RealReference.from_features(training)
    assert score(features, reference)["copy_share"] == pytest.approx(copy_share(features, training))


@pytest.mark.parametrize("n, chance", [(100, 0.0), (100, 0.01), (500, 0.004), (2000, 0.01), (2000, 0.05)])
def test_copy_threshold_is_the_smallest_count_the_binomial_tail_and_the_floor_allow(n, chance):
    needed = copy_threshold(n, chance, false_alarm=1e-3, floor=0.02)
    tail = 1.0 - np.concatenate([[0.0], np.cumsum(binom.pmf(np.arange(n + 1), n, chance))])  # P(X >= k), k = 0..n+1
    allowed = [k for k in range(n + 1) if tail[k] <= 1e-3 + 1e-12 and k / n >= chance + 0.02 - 1e-12]
    assert needed == allowed[0]


def test_ten_percent_copied_is_flagged_at_100_samples_and_chance_is_not():
    for chance in (0.0, 0.01, 0.02):
        needed = copy_threshold(100, chance)
        assert needed <= 8  # 10 copied of 100, plus the chance copies, is flagged
        assert binom.sf(needed - 1, 100, chance) <= 1e-3  # chance alone rarely is
        # ten copied samples (and chance's): flagged at least 99 times in 100
        assert binom.sf(needed - 11, 90, chance) > 0.99


# --- the rule on scores ---------------------------------------------------------------------------


def test_rule_counts_copies_against_the_binomial_threshold_and_keeps_every_figure():
    result = detect_memorisation(rows(0.0, 0.02, 0.021, 0.03, 0.04), LOO)
    needed = copy_threshold(1000, 0.002)
    assert needed == 22  # (0.002 + floor 0.02) x 1000; the tail alone would allow 9: the floor decides
    assert result.memorised == [False, False, False, True, True] and result.onset_epoch == 40
    assert result.threshold == pytest.approx(0.021) and result.chance == 0.002 and result.sample_size == 1000
    assert result.reference == "leave-one-out within the training images (2000; no held-out images)"
    ratio = result.tests[RATIO_TEST]
    assert ratio["deciding"] and ratio["copy_ratio"] == COPY_RATIO and ratio["chance_source"] == result.reference
    last = ratio["checkpoints"][-1]
    assert last == {"epoch": 50, "share": 0.04, "num_samples": 1000, "copies": 40, "needed": 22,
                    "tail_probability": pytest.approx(binom.sf(39, 1000, 0.002)), "flagged": True}
    # The onset is the first of the copying checkpoints that last to the end.
    assert detect_memorisation(rows(0.5, 0.0, 0.5, 0.6), LOO).onset_epoch == 30
    assert detect_memorisation(rows(0.5, 0.0), LOO).onset_epoch is None


def test_the_distance_test_is_reported_but_does_not_decide():
    near = detect_memorisation(rows(0.0, 0.0, 0.001, memorised=[0.0, 0.04, 0.05]), LOO)
    assert near.memorised == [False, False, False] and near.onset_epoch is None
    assert near.flagged_epochs(DISTANCE_TEST) == [20, 30] and near.flagged_epochs(RATIO_TEST) == []
    distance = near.tests[DISTANCE_TEST]
    assert not distance["deciding"] and distance["threshold"] == pytest.approx(0.032)  # 0.012 + floor 0.02
    assert distance["chance_source"] == "a split of the training images (no held-out images)"


def test_chance_comes_from_held_out_images_when_there_are_any():
    held = {**LOO, "copy_share_heldout": 0.004, "heldout_size": 500, "memorised_share_heldout": 0.02}
    assert copy_chance(held) == (0.004, 500, "held-out real images (500)")
    assert copy_chance(LOO)[0] == 0.002
    p, error, reference = chance_level(held)  # the distance test's, unchanged
    assert p == 0.02 and error == pytest.approx((0.02 * 0.98 * (1 / 1000 + 1 / 500)) ** 0.5)
    with pytest.raises(ValueError, match="predate"):
        copy_chance({"sample_size": 1000, "memorised_share_mean": 0.01})


def test_choice_skips_copies_even_with_the_lowest_fid():
    checkpoints = rows(0.0, 0.0, 0.9, 0.95)  # FID falls to the end: the copies have the lowest
    collapse = detect_collapse(checkpoints, COLLAPSE_NOISE)
    memorisation = detect_memorisation(checkpoints, LOO)
    assert choose_best(checkpoints, collapse).epoch == 40
    choice = choose_best(checkpoints, collapse, memorisation)
    assert choice.epoch == 20 and "skipping checkpoints that copy training images (epoch 30, 40)" in choice.reason
    both = rows(0.5, 0.3)
    only = choose_best(both, detect_collapse(both, COLLAPSE_NOISE), detect_memorisation(both, LOO))
    assert only.epoch == 20 and "copies the least (0.300)" in only.reason and "copy share > 0.021" in only.reason


# --- stopping -----------------------------------------------------------------------------------------


def evaluation_of(shares, noise=LOO):
    scored = [Scored(r["epoch"], f"ckpt-{r['epoch']}", {k: v for k, v in r.items() if k not in ("epoch", "num_samples")},
                     num_samples=1000) for r in rows(*shares)]
    return decide(scored, {**noise, **COLLAPSE_NOISE}, space="random", note="", num_samples=1000)


def test_stop_on_collapse_also_stops_on_copying_confirmed_by_two_checkpoints():
    rule = StopRule(on_collapse=True)
    assert rule.reason(evaluation_of([0.0, 0.0, 0.3])) is None  # one copying checkpoint: not yet
    kind, reason = rule.reason(evaluation_of([0.0, 0.0, 0.3, 0.4]))
    assert kind == "copying"
    assert reason.startswith("copying confirmed at epoch 40: epochs 30 and 40 both copy training images (ratio test")
    assert "0.300, 0.400 above 0.021" in reason and "best checkpoint epoch 20" in reason
    assert rule.reason(evaluation_of([0.0, 0.3, 0.0, 0.4])) is None  # not running
    assert StopRule(patience=None).reason(evaluation_of([0.0, 0.0, 0.3, 0.4])) is None  # not asked to
    # A run resumed after stopping at epoch 30 stops again only for two copying checkpoints after it.
    assert StopRule(on_collapse=True, after_epoch=30).reason(evaluation_of([0.0, 0.0, 0.3, 0.4])) is None
    assert StopRule(on_collapse=True, after_epoch=30).reason(evaluation_of([0.0, 0.0, 0.3, 0.4, 0.5]))[0] == "copying"


# --- images: copies flagged, novel but imperfect samples not -----------------------------------


@pytest.fixture(scope="module")
def faces():
    """Training faces, held-out faces, and fresh faces made blurry and noisy, in the random CNN's space."""
    extractor = get_extractor("random")
    train = synthetic_faces(1000, 32, seed=0).images
    held = synthetic_holdout(500, 32, 0)
    novel = synthetic_faces(2000, 32, seed=77).images
    return {"train": extractor.extract(train), "held": extractor.extract(held),
            "blurry": extractor.extract(noise(blur(novel, 1.5), 12, 0)),
            "copies": extractor.extract(noise(train[:200], 6, 1))}


@pytest.mark.parametrize("held_out", [True, False])
def test_novel_blurry_samples_are_not_copies_and_copies_are(faces, held_out):
    reference = RealReference.from_features(faces["train"])
    chance = ({"copy_share_heldout": copy_share(faces["held"], faces["train"]), "heldout_size": 500} if held_out
              else {"copy_share_loo": copy_share(faces["train"], faces["train"], exclude_self=True),
                    "copy_share_loo_size": 1000})
    for n in (100, 500, 2000):
        blurry = score(faces["blurry"][:n], reference)
        result = detect_memorisation([{"epoch": 1, "num_samples": n, **blurry}], {"sample_size": n, **chance})
        assert result.memorised == [False], (n, blurry["copy_share"], result.threshold)
    # Ten copies (with a little noise) among 100 samples, the rest novel and blurry: flagged.
    mixed = np.concatenate([faces["copies"][:10], faces["blurry"][:90]])
    got = score(mixed, reference)
    assert got["copy_share"] >= 0.10
    assert detect_memorisation([{"epoch": 1, "num_samples": 100, **got}], {"sample_size": 100, **chance}).memorised == [True]


def test_calibrated_chance_is_the_leave_one_out_copy_share(faces):
    reference = RealReference.from_features(faces["train"])
    noise_levels = calibrate_noise(reference, 200, repeats=2)
    _, first, second = brute_force_ratio(faces["train"], faces["train"], exclude_self=True)
    assert noise_levels["copy_share_loo"] == np.mean(first / second < COPY_RATIO)
    assert noise_levels["copy_share_loo_size"] == 1000


# --- end to end through the engine ------------------------------------------------------------------


@pytest.mark.parametrize("held_out", [True, False])
def test_a_generator_that_hands_back_its_training_faces_is_named_and_never_chosen(tmp_path, monkeypatch, held_out):
    """The user's case: late checkpoints are the training images with a little noise (FID near 0)."""
    monkeypatch.setenv("FACEGAN_CACHE_DIR", str(tmp_path / "cache"))
    real = synthetic_faces(400, 32, seed=0)
    images = RealImages(real.images, real.digest,
                        holdout=(lambda: synthetic_holdout(400, 32, 0)) if held_out else None,
                        holdout_id="test-holdout" if held_out else "")
    scorer = Scorer(get_extractor("random"), images, 200)
    history = {epoch: PoolGenerator(600, noise=0.3 / epoch, seed=100) for epoch in (1, 2, 3, 4)}
    history.update({epoch: PoolGenerator(400, noise=0.01, seed=0) for epoch in (5, 6)})  # the training faces
    result = evaluate([GeneratorCheckpoint(e, g) for e, g in history.items()], scorer)
    by_epoch = {c.epoch: c.scores for c in result.checkpoints}
    assert min(by_epoch, key=lambda e: by_epoch[e]["fid"]) in (5, 6)  # FID alone would pick a copy
    assert by_epoch[6]["copy_share"] > 0.9
    assert result.memorisation.memorised_epochs == [5, 6] and result.memorisation.onset_epoch == 5
    assert result.best_epoch in (1, 2, 3, 4)
    source = "held-out real images (400)" if held_out else "leave-one-out within the training images (400"
    assert result.memorisation.reference.startswith(source)
    assert ("copy_share_heldout" in result.noise) == held_out and "copy_share_loo" in result.noise
    table = result.render_table()
    assert "copying (ratio test, onset)" in table and "copying training images (ratio test): epochs 5, 6" in table
    assert f"by chance {result.memorisation.chance:.3f}, from {source}" in table
    summary = result.to_json()
    assert summary["memorisation_epoch"] == 5 and summary["memorised_epochs"] == [5, 6]
    assert [c["memorised"] for c in summary["checkpoints"]] == [False] * 4 + [True] * 2
    sixth = summary["checkpoints"][-1]["copy_tests"]
    assert sixth[RATIO_TEST]["flagged"] and sixth[RATIO_TEST]["copies"] == round(by_epoch[6]["copy_share"] * 200)
    assert sixth[DISTANCE_TEST]["share"] == by_epoch[6]["memorised_share"]
    tests = summary["memorisation"]["tests"]
    assert tests[RATIO_TEST]["chance_source"] == result.memorisation.reference and "checkpoints" not in tests[RATIO_TEST]
    assert math.isclose(tests[RATIO_TEST]["threshold"], result.memorisation.threshold)


def test_training_judge_stops_on_two_copying_checkpoints(tmp_path, monkeypatch):
    """While training: a generator that starts handing back its training faces stops the run (kind ``copying``)."""
    from evaluation.online import TrainingJudge

    monkeypatch.setenv("FACEGAN_CACHE_DIR", str(tmp_path / "cache"))
    real = synthetic_faces(400, 32, seed=0)
    scorer = Scorer(get_extractor("random"), RealImages(real.images, real.digest), 200)
    judge = TrainingJudge(scorer, rule=StopRule(on_collapse=True))
    healthy, copier = PoolGenerator(600, noise=0.1, seed=100), PoolGenerator(400, noise=0.01, seed=0)
    assert judge.checkpoint_written(1, healthy) is None
    assert judge.checkpoint_written(2, copier) is None  # one copying checkpoint: not confirmed
    kind, reason = judge.checkpoint_written(3, copier)
    assert kind == "copying" and reason.startswith("copying confirmed at epoch 3: epochs 2 and 3 both copy")
    assert "leave-one-out within the training images (400" in reason and judge.evaluation.best_epoch == 1
