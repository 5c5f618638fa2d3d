"""The collapse rule and the choice on constructed metric sequences."""

import doctest

import numpy as np
import pytest

from evaluation import collapse
from evaluation.collapse import choose_best, detect_collapse

# Tolerances these give: coverage max(3 * 0.01, 0.05) = 0.05, diversity max(3 * 0.02, 0.10) = 0.10,
# duplicate limit 0.01 + max(3 * 0.005, 0.10) = 0.11.
NOISE = {
    "coverage_std": 0.01,
    "diversity_std": 0.02,
    "duplicate_share_mean": 0.01,
    "duplicate_share_std": 0.005,
}


def run(coverage, diversity=None, duplicates=None, fid=None, kid=None, kid_std=0.001):
    """Checkpoints at epochs 100, 200, ... from per-checkpoint score lists."""
    n = len(coverage)
    diversity = diversity or [0.9] * n
    duplicates = duplicates or [0.01] * n
    # Losing modes costs FID: every score's fall raises it (the rule wants FID to confirm a drop).
    fid = fid or [100.0 * (1.0 - c) + 50.0 * (1.0 - min(d, 1.0)) + 50.0 * u + 10.0
                  for c, d, u in zip(coverage, diversity, duplicates)]
    kid = kid or [f / 1000.0 for f in fid]
    return [
        {
            "epoch": 100 * (i + 1), "coverage": coverage[i], "diversity": diversity[i],
            "duplicate_share": duplicates[i], "fid": fid[i], "kid": kid[i], "kid_std": kid_std,
        }
        for i in range(n)
    ]


def test_rise_then_plateau_is_not_collapse():
    coverage = [0.05, 0.2, 0.45, 0.7, 0.8, 0.82, 0.81, 0.8, 0.82]
    checkpoints = run(coverage, [0.2, 0.4, 0.6, 0.8, 0.9, 0.9, 0.88, 0.9, 0.89])
    result = detect_collapse(checkpoints, NOISE)
    assert result.onset_epoch is None
    assert not any(result.collapsed) and not any(result.drops)
    assert choose_best(checkpoints, result).epoch == 600  # highest coverage = lowest FID here


def test_rise_then_collapse_has_onset_at_the_first_drop():
    checkpoints = run([0.3, 0.6, 0.8, 0.82, 0.6, 0.4, 0.3], [0.5, 0.8, 0.9, 0.9, 0.6, 0.4, 0.3])
    result = detect_collapse(checkpoints, NOISE)
    assert result.onset_epoch == 500
    assert result.collapsed == [False] * 4 + [True] * 3
    # 0.8 held at 300 and 400, whose mean FID (34.5) the collapse's FID exceeds
    assert "coverage 0.600 < best 0.800 - 0.050, FID 70.5 > 34.5 at that best" in result.drops[4]
    assert choose_best(checkpoints, result).epoch == 400


def test_partial_recovery_keeps_the_onset_and_chooses_before_it():
    coverage = [0.3, 0.7, 0.8, 0.8, 0.55, 0.5, 0.7, 0.72]
    fid = [80, 40, 31, 30, 50, 55, 36, 35]  # the tail recovers part of the coverage, not the FID
    checkpoints = run(coverage, fid=fid)
    result = detect_collapse(checkpoints, NOISE)
    assert result.onset_epoch == 500
    assert result.collapsed == [False, False, False, False, True, True, True, True]
    assert choose_best(checkpoints, result).epoch == 400


def test_lower_coverage_with_a_better_fid_than_at_the_best_is_not_a_drop():
    # A generator whose samples change look (blurred, then sharp) can lose coverage in a feature
    # space that favours the blurred ones while its FID gets better: no mode was lost.
    coverage = [0.3, 0.7, 0.8, 0.8, 0.55, 0.5, 0.7, 0.72]
    fid = [80, 40, 31, 30, 50, 55, 29, 28]  # the tail: less coverage than at the best, lower FID
    checkpoints = run(coverage, fid=fid)
    result = detect_collapse(checkpoints, NOISE)
    assert result.drops[6] == [] and result.drops[7] == []
    assert result.onset_epoch is None and result.passing_epochs == [500]
    assert choose_best(checkpoints, result).epoch == 800
    # FID equal to the best stretch's mean does not confirm either; one above it does.
    for tail_fid, dropped in ((30.5, False), (30.6, True)):
        tail = run([0.3, 0.7, 0.8, 0.8, 0.6], fid=[80, 40, 31, 30, tail_fid])
        assert bool(detect_collapse(tail, NOISE).drops[4]) == dropped


def test_noise_within_tolerance_is_not_collapse():
    coverage = [0.80, 0.83, 0.79, 0.81, 0.785, 0.82, 0.79]  # never more than 0.05 below the best
    diversity = [0.95, 0.90, 0.97, 0.91, 0.88, 0.94, 0.89]  # never more than 0.10 below the best
    result = detect_collapse(run(coverage, diversity), NOISE)
    assert result.onset_epoch is None and not any(result.drops)


def test_a_single_dip_that_recovers_is_not_collapse():
    checkpoints = run([0.5, 0.8, 0.82, 0.6, 0.81, 0.82])
    checkpoints[3]["fid"] = 35.0  # above the mean FID of 200 and 300 (34.5), below the checkpoints after it
    checkpoints[4]["fid"] = checkpoints[5]["fid"] = 40.0
    result = detect_collapse(checkpoints, NOISE, patience=2)
    assert result.onset_epoch is None
    assert result.drops[3] and not result.collapsed[3]
    # The dipped checkpoint is never chosen, even with a lower FID than the checkpoints after it.
    choice = choose_best(checkpoints, result)
    assert choice.epoch != 400
    assert "skipping checkpoints with a drop (a dip at epoch 400)" in choice.reason
    strict = detect_collapse(checkpoints, NOISE, patience=1)  # one checkpoint is enough to count...
    assert strict.collapsed[3] and strict.passing_epochs == [400]
    assert strict.onset_epoch is None  # ...but the run came back: a passing collapse, not the onset


def test_a_lasting_collapse_the_run_recovers_from_is_passing():
    coverage = [0.3, 0.7, 0.8, 0.5, 0.45, 0.5, 0.79, 0.84, 0.85]
    fid = [80, 40, 30, 60, 65, 60, 29, 25, 27]
    checkpoints = run(coverage, fid=fid)
    result = detect_collapse(checkpoints, NOISE)
    assert result.onset_epoch is None
    assert result.passing_epochs == [400]
    assert result.collapsed == [False] * 3 + [True] * 3 + [False] * 3
    choice = choose_best(checkpoints, result)
    assert choice.epoch == 800  # after the passing collapse: the run got better than before it
    assert "passing collapse at epoch 400" in choice.reason


def test_after_a_passing_collapse_a_final_one_is_the_onset():
    coverage = [0.3, 0.7, 0.8, 0.5, 0.45, 0.81, 0.84, 0.5, 0.4]
    checkpoints = run(coverage)
    result = detect_collapse(checkpoints, NOISE)
    assert result.passing_epochs == [400]
    assert result.onset_epoch == 800
    assert choose_best(checkpoints, result).epoch == 700


def test_a_drop_at_the_last_checkpoint_is_unconfirmed_not_an_onset():
    checkpoints = run([0.5, 0.8, 0.82, 0.6])
    result = detect_collapse(checkpoints, NOISE)
    assert result.onset_epoch is None
    assert result.unconfirmed_epoch == 400
    assert result.collapsed == [False] * 4
    choice = choose_best(checkpoints, result)
    assert choice.epoch == 300  # the dropped checkpoint is never chosen, even unconfirmed
    assert "unconfirmed drop from epoch 400 to the end" in choice.reason


def test_a_trailing_drop_as_long_as_patience_is_the_onset():
    coverage = [0.5, 0.8, 0.82, 0.81, 0.8, 0.6, 0.5, 0.4]  # 0.8 held for 4 checkpoints, 3 drops
    for patience, onset, unconfirmed in [(2, 600, None), (3, 600, None), (4, None, 600), (1, 600, None)]:
        result = detect_collapse(run(coverage), NOISE, patience=patience)
        assert (result.onset_epoch, result.unconfirmed_epoch) == (onset, unconfirmed), patience


def test_a_dip_that_recovers_leaves_nothing_unconfirmed():
    result = detect_collapse(run([0.5, 0.8, 0.82, 0.6, 0.81]), NOISE)
    assert result.onset_epoch is None and result.unconfirmed_epoch is None


def test_duplicate_spike_is_collapse_even_with_coverage_kept():
    checkpoints = run([0.5, 0.8, 0.82, 0.81, 0.82], duplicates=[0.01, 0.02, 0.01, 0.4, 0.6])
    result = detect_collapse(checkpoints, NOISE)
    assert result.onset_epoch == 400
    assert "duplicate share 0.400 > 0.120, FID 54 > 34.75 at that best" in result.drops[3]  # 0.02 + 0.10: the fewest held for 2


def test_diversity_fall_alone_is_collapse():
    result = detect_collapse(run([0.6, 0.8, 0.8, 0.79, 0.8], [0.7, 0.9, 0.92, 0.6, 0.5]), NOISE)
    assert result.onset_epoch == 400


def test_untrained_noise_that_looks_diverse_does_not_set_the_bar():
    # Epoch 100 is noise: "diversity" far above the real data's, coverage zero. Learned faces
    # afterwards are less spread, but that is learning, not collapse.
    result = detect_collapse(run([0.0, 0.5, 0.7, 0.8], [1.8, 0.7, 0.75, 0.8]), NOISE)
    assert result.onset_epoch is None and not any(result.drops)


def test_chance_noise_widens_the_tolerance():
    noisy = dict(NOISE, coverage_std=0.05)  # tolerance 0.15 instead of 0.05
    checkpoints = run([0.5, 0.8, 0.82, 0.7, 0.7])
    assert detect_collapse(checkpoints, NOISE).onset_epoch == 400
    result = detect_collapse(checkpoints, noisy)
    assert result.onset_epoch is None
    assert result.thresholds["coverage_tolerance"] == pytest.approx(0.15)


def test_thresholds_are_recorded():
    thresholds = detect_collapse(run([0.5, 0.8]), NOISE).thresholds
    assert thresholds["coverage_tolerance"] == pytest.approx(0.05)
    assert thresholds["diversity_tolerance"] == pytest.approx(0.10)
    assert thresholds["duplicate_share_limit"] == pytest.approx(0.11)
    assert thresholds["patience"] == 2 and thresholds["noise_coverage_std"] == 0.01


def test_ties_within_kid_noise_are_named_but_the_lowest_fid_is_chosen():
    coverage = [0.5, 0.75, 0.8, 0.78, 0.5, 0.4]
    fid = [60.0, 31.0, 32.0, 30.0, 50.0, 60.0]
    kid = [0.060, 0.0301, 0.0305, 0.0300, 0.05, 0.06]  # 200-400 within sqrt(2) * 0.001
    checkpoints = run(coverage, fid=fid, kid=kid, kid_std=0.001)
    result = detect_collapse(checkpoints, NOISE)
    assert result.onset_epoch == 500
    choice = choose_best(checkpoints, result)
    assert choice.epoch == 400  # lowest FID, although 300 has the higher coverage
    assert sorted(choice.tied_epochs) == [200, 300, 400]
    assert "epoch 200, 300 are tied with it within KID noise" in choice.reason
    assert "before the collapse onset at epoch 500" in choice.reason


def test_diversity_wandering_like_a_trained_feature_space_is_not_collapse():
    # Diversity of good checkpoints in the collapse benchmark's encoder space: it wanders by
    # about 0.07 either way; 0.673 is 0.123 below the held best 0.796, past the 0.10 floor.
    diversity = [0.56, 0.76, 0.60, 0.72, 0.73, 0.80, 0.80, 0.72, 0.673]
    checkpoints = run([0.8] * 9, diversity)
    result = detect_collapse(checkpoints, NOISE)
    assert not any(result.drops) and result.onset_epoch is None
    # The floor alone, without the run's wobble, would have flagged the last checkpoint.
    flat = run([0.8] * 4, [0.80, 0.80, 0.80, 0.673])
    assert detect_collapse(flat, NOISE).drops[3] == ["diversity 0.673 < best 0.800 - 0.100, FID 46.85 > 40.5 at that best"]
    # A collapse still falls far beyond the wobble: diversity halves.
    falling = run([0.8] * 11, diversity + [0.26, 0.24])
    result = detect_collapse(falling, NOISE)
    assert result.onset_epoch == 1000
    # median neighbour change of the last six steady values, 0.72 0.73 0.80 0.80 0.72 0.673
    tolerance = 3 * 0.047 / 0.954
    assert result.drops[9][0].startswith(f"diversity 0.260 < best 0.800 - {tolerance:.3f}, FID ")


def test_wobble_comes_from_recent_checkpoints_not_early_learning():
    # Early learning swings hard; then the run settles (changes of 0.01) and diversity falls 0.25.
    early, settled = [0.3, 0.9, 0.4, 0.95, 0.5], [0.80, 0.81, 0.80, 0.81, 0.80, 0.81]
    checkpoints = run([0.8] * 13, early + settled + [0.55, 0.54])
    result = detect_collapse(checkpoints, NOISE)
    assert result.onset_epoch == 1200
    assert result.drops[11][0].startswith("diversity 0.550 < best 0.800 - 0.100,")  # the floor: the wobble is 0.01
    # Counting the early swings as wobble would have hidden it.
    assert 3 * collapse._wobble(early + settled) > 0.80 - 0.55


def test_wobble_is_a_robust_spread_of_neighbour_changes():
    assert collapse._wobble([0.5, 0.9]) == 0.0  # too few to tell
    assert collapse._wobble([0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(0.1 / 0.954)  # a trend: steps of 0.1
    assert collapse._wobble([0.5, 0.6, 0.5, 0.6, 0.5, 5.0]) == pytest.approx(0.1 / 0.954)  # one outlier ignored
    # Independent normal values: the estimate is close to their standard deviation.
    values = list(0.7 + 0.05 * np.random.default_rng(0).standard_normal(4000))
    assert collapse._wobble(values) == pytest.approx(0.05, rel=0.05)


def test_choice_without_ties_is_the_lowest_fid():
    checkpoints = run([0.5, 0.75, 0.8, 0.78], fid=[60.0, 31.0, 32.0, 30.0], kid_std=0.0001)
    assert choose_best(checkpoints, detect_collapse(checkpoints, NOISE)).epoch == 400


def test_duplicates_from_the_start_are_not_learned_yet_not_collapse():
    """An untrained generator draws near-identical blobs: high duplicates that then fall."""
    checkpoints = run([0.1, 0.5, 0.8], duplicates=[0.9, 0.4, 0.02], fid=[90.0, 50.0, 30.0])
    result = detect_collapse(checkpoints, NOISE)
    assert result.onset_epoch is None
    assert choose_best(checkpoints, result).epoch == 300


def test_a_duplicate_share_that_rises_again_is_collapse():
    checkpoints = run([0.8] * 5, duplicates=[0.5, 0.02, 0.02, 0.6, 0.7], fid=[40.0, 30.0, 31.0, 35.0, 36.0])
    assert detect_collapse(checkpoints, NOISE).onset_epoch == 400


def test_duplicates_that_rise_while_coverage_rises_are_learning_not_collapse():
    """As at 80 x 80: a generator still learning draws more alike samples while it covers more."""
    coverage = [0.02, 0.06, 0.10, 0.16, 0.22, 0.30, 0.31]
    duplicates = [0.05, 0.12, 0.25, 0.35, 0.45, 0.60, 0.62]
    result = detect_collapse(run(coverage, duplicates=duplicates), NOISE)
    assert not any(result.drops)
    # The old comparison with the run's fewest duplicates anywhere would have called it collapse
    # from epoch 300 (0.25 > 0.05 + 0.10); only checkpoints that covered about as much count now.
    later = detect_collapse(run(coverage + [0.30, 0.31], duplicates=duplicates + [0.90, 0.95]), NOISE)
    assert later.onset_epoch == 800  # a rise above checkpoints that covered as much still counts
    assert "duplicate share 0.900 > 0.720, FID 130 > 115 at that best" in later.drops[7]  # 0.62, the fewest held at 0.30+, + 0.10


def test_checkpoints_that_cover_nothing_set_no_best():
    """Below 1% coverage a checkpoint has learned nothing here: its spread is noise, not a best."""
    coverage = [0.0, 0.002, 0.004, 0.03, 0.04, 0.035]
    diversity = [0.2, 0.6, 0.62, 0.25, 0.3, 0.28]
    duplicates = [0.01, 0.01, 0.01, 0.5, 0.6, 0.55]
    result = detect_collapse(run(coverage, diversity, duplicates), NOISE)
    assert not any(result.drops)
    assert result.thresholds["min_coverage"] == 0.01
    # With the minimum at 0, the noise sets the bar and learning looks like a collapse.
    assert detect_collapse(run(coverage, diversity, duplicates), NOISE, min_coverage=0.0).onset_epoch == 400


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="increasing epoch"):
        detect_collapse(run([0.5, 0.6])[::-1], NOISE)
    with pytest.raises(ValueError, match="lacks"):
        detect_collapse([{"epoch": 1, "coverage": 0.5}], NOISE)
    with pytest.raises(ValueError, match="noise calibration lacks"):
        detect_collapse(run([0.5]), {"coverage_std": 0.1})
    with pytest.raises(ValueError, match="do not match"):
        choose_best(run([0.5, 0.6]), detect_collapse(run([0.5, 0.6, 0.7]), NOISE))


def test_result_serialises_to_plain_data():
    result = detect_collapse(run([0.5, 0.8, 0.4, 0.3]), NOISE)
    data = result.to_dict()
    assert data["onset_epoch"] == 300 and data["collapsed"] == [False, False, True, True]
    assert choose_best(run([0.5, 0.8, 0.4, 0.3]), result).to_dict()["epoch"] == 200


def test_docstring_example_runs():
    assert doctest.testmod(collapse).failed == 0


def test_one_lucky_checkpoint_does_not_set_the_bar():
    lucky = run([0.3, 0.6, 0.9, 0.6, 0.62, 0.6])
    result = detect_collapse(lucky, NOISE)
    assert result.onset_epoch is None and not any(result.drops)
    held = run([0.3, 0.6, 0.9, 0.9, 0.6, 0.62])
    assert detect_collapse(held, NOISE).onset_epoch == 500
    # patience 1 is the plain best so far: the single peak counts
    assert detect_collapse(lucky, NOISE, patience=1).onset_epoch == 400


def test_held_best_is_the_highest_level_held_in_a_row():
    assert collapse._held_best([0.3, 0.9, 0.5, 0.6, 0.7], 2) == (0.6, 3)
    assert collapse._held_best([0.3, 0.9, 0.5, 0.6, 0.7], 1) == (0.9, 1)
    assert collapse._held_best([0.8, None, 0.8, 0.7], 2) == (0.7, 2)  # None breaks a run
    assert collapse._held_best([0.8], 2) == (None, None)
