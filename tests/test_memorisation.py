"""Copying training images: the rule, its chance level, and a choice that never falls on a copy."""

from __future__ import annotations

import pytest

from evaluation.collapse import choose_best, detect_collapse
from evaluation.engine import RealImages, Scorer, evaluate
from evaluation.features import get_extractor
from evaluation.memorisation import chance_level, detect_memorisation
from evaluation.sources import GeneratorCheckpoint
from facegan.synthetic import synthetic_faces, synthetic_holdout
from helpers import PoolGenerator

NOISE = {"sample_size": 1000, "memorised_share_mean": 0.012, "memorised_share_std": 0.003}


def rows(*shares):
    return [{"epoch": 10 * (i + 1), "memorised_share": s, "fid": 50.0 - i, "kid": 0.05 - i / 100, "kid_std": 1e-4,
             "coverage": 0.8, "diversity": 0.9, "duplicate_share": 0.01} for i, s in enumerate(shares)]


def test_threshold_is_chance_plus_the_larger_of_three_standard_errors_and_the_floor():
    result = detect_memorisation(rows(0.0, 0.02, 0.031, 0.033), NOISE)
    assert result.chance == 0.012 and result.threshold == pytest.approx(0.032)  # floor 0.02 > 3 x 0.0034
    assert result.memorised == [False, False, False, True] and result.onset_epoch == 40
    assert "split of the training images" in result.reference
    held = {**NOISE, "memorised_share_heldout": 0.02, "heldout_size": 500}
    p, error, reference = chance_level(held)
    assert p == 0.02 and error == pytest.approx((0.02 * 0.98 * (1 / 1000 + 1 / 500)) ** 0.5)
    assert reference == "held-out real images (500)"
    # The onset is the first of the copying checkpoints that last to the end.
    assert detect_memorisation(rows(0.5, 0.0, 0.5, 0.6), NOISE).onset_epoch == 30
    assert detect_memorisation(rows(0.5, 0.0), NOISE).onset_epoch is None


def test_choice_skips_copies_even_with_the_lowest_fid():
    checkpoints = rows(0.0, 0.0, 0.9, 0.95)  # FID falls to the end: the copies have the lowest
    collapse = detect_collapse(checkpoints, {"coverage_std": 0.01, "diversity_std": 0.01,
                                             "duplicate_share_mean": 0.01, "duplicate_share_std": 0.005})
    memorisation = detect_memorisation(checkpoints, NOISE)
    assert choose_best(checkpoints, collapse).epoch == 40
    choice = choose_best(checkpoints, collapse, memorisation)
    assert choice.epoch == 20 and "skipping checkpoints that copy training images (epoch 30, 40)" in choice.reason
    every = detect_memorisation(rows(0.5, 0.3), NOISE)
    only = choose_best(rows(0.5, 0.3), detect_collapse(rows(0.5, 0.3), {"coverage_std": 0.01, "diversity_std": 0.01,
                       "duplicate_share_mean": 0.01, "duplicate_share_std": 0.005}), every)
    assert only.epoch == 20 and "copies the least" in only.reason


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
    assert by_epoch[6]["memorised_share"] > 0.9
    assert result.memorisation.memorised_epochs == [5, 6] and result.memorisation.onset_epoch == 5
    assert result.best_epoch in (1, 2, 3, 4)
    assert ("held-out real images (400)" if held_out else "split of the training images") in result.memorisation.reference
    assert result.noise.get("memorised_share_heldout") is not None or not held_out
    table = result.render_table()
    assert "memorised (onset)" in table and "copying training images: epochs 5, 6" in table
    summary = result.to_json()
    assert summary["memorisation_epoch"] == 5 and summary["memorised_epochs"] == [5, 6]
    assert [c["memorised"] for c in summary["checkpoints"]] == [False] * 4 + [True] * 2
