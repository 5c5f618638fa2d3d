"""Ground truth of the collapse benchmark: classifiers on held-out data, mode counting."""

import numpy as np
import pytest

from experiments.collapse import ground_truth as gt


@pytest.fixture(scope="module")
def face_classifier():
    """The benchmark's classifier: its weights are kept in the repository (trained when missing)."""
    return gt.FaceClassifier.load_or_train()


@pytest.fixture(scope="module")
def digit_classifier():
    return gt.DigitClassifier.train()


def test_count_modes_all_half_one():
    num_modes = 10
    every = np.arange(200) % num_modes
    confident = np.ones(200, dtype=bool)
    full = gt.count_modes(every, confident, num_modes)
    assert (full.modes, full.confident_share) == (10, 1.0)
    assert full.kl == pytest.approx(0.0, abs=1e-12)
    half = gt.count_modes(every % 5, confident, num_modes)
    assert half.modes == 5
    assert half.kl == pytest.approx(np.log(2))  # uniform on half the modes: log(M / k)
    one = gt.count_modes(np.zeros(200, dtype=int), confident, num_modes)
    assert one.modes == 1
    assert one.kl == pytest.approx(np.log(10))


def test_count_modes_ignores_unconfident_samples_for_modes_not_for_kl():
    modes = np.array([0, 1, 2, 3])
    report = gt.count_modes(modes, np.array([True, True, False, False]), 4)
    assert report.modes == 2
    assert report.confident_share == 0.5
    assert report.kl == pytest.approx(0.0)


def test_count_modes_rejects_bad_input():
    with pytest.raises(ValueError):
        gt.count_modes(np.array([0, 5]), np.array([True, True]), 5)
    with pytest.raises(ValueError):
        gt.count_modes(np.array([], dtype=int), np.array([], dtype=bool), 5)


def test_face_modes_round_trip():
    modes = np.arange(gt.num_face_modes())
    assert gt.num_face_modes() == 96
    np.testing.assert_array_equal(gt.face_mode_ids(gt.face_attributes_of_modes(modes)), modes)


def test_face_classifier_on_held_out_renders(face_classifier):
    accuracy = face_classifier.held_out_accuracy(1000, seed=12345)  # not the seed it was measured on
    assert set(accuracy) == {"skin", "hair", "mouth", "glasses"}
    assert min(accuracy.values()) >= 0.98, accuracy


def test_face_classifier_on_80x80_renders(face_classifier):
    """The GPU benchmark's samples are 80 x 80: scaled down to the classifier's 32 x 32 it still reads them."""
    accuracy = face_classifier.held_out_accuracy(1000, seed=54321, size=80)
    assert min(accuracy.values()) >= 0.98, accuracy
    one = face_classifier.count_modes(gt.render_face_modes(np.full(200, 5), 4, size=80))
    half = face_classifier.count_modes(gt.render_face_modes(np.arange(0, 96, 2).repeat(6), 5, size=80))
    assert (one.modes, half.modes) == (1, 48)


def test_face_mode_counting_on_constructed_sets(face_classifier):
    rng = np.random.default_rng(0)
    all_modes = gt.count_modes(*face_classifier.classify(gt.render_face_modes(np.arange(96).repeat(4), 1)), 96)
    chosen = rng.choice(96, 48, replace=False)
    half = face_classifier.count_modes(gt.render_face_modes(np.tile(chosen, 8), 2))
    one = face_classifier.count_modes(gt.render_face_modes(np.full(300, 17), 3))
    assert all_modes.modes == 96
    assert half.modes == 48
    assert one.modes == 1
    assert all_modes.modes > half.modes > one.modes


def test_digit_classifier_on_held_out_digits(digit_classifier):
    assert digit_classifier.accuracy["digit"] >= 0.98


def test_stacked_digits_modes_all_half_one(digit_classifier):
    _, test_index = gt._digit_split(0)
    rng = np.random.default_rng(1)
    everything, modes = gt.stacked_digits(3000, seed=4, digit_pool=test_index)
    predicted, confident = digit_classifier.classify(everything)
    assert (predicted == modes).mean() >= 0.95
    assert confident.mean() >= 0.9
    all_modes = gt.count_modes(predicted, confident, 1000)
    half_set, _ = gt.stacked_digits(3000, seed=5, modes=np.tile(rng.choice(1000, 500, replace=False), 6),
                                    digit_pool=test_index)
    one_set, _ = gt.stacked_digits(200, seed=6, modes=np.full(200, 427), digit_pool=test_index)
    half = digit_classifier.count_modes(half_set)
    one = digit_classifier.count_modes(one_set)
    assert all_modes.modes >= 900  # 3000 uniform draws hit ~950 of 1000 modes
    assert 450 <= half.modes <= 580  # misclassified samples can add a few spurious modes
    assert one.modes <= 3
    assert half.kl > all_modes.kl


def test_stacked_digits_layout():
    images, modes = gt.stacked_digits(5, seed=0, modes=np.array([0, 999, 123, 450, 7]))
    assert images.shape == (5, 3, 32, 32) and images.dtype == np.uint8
    np.testing.assert_array_equal(modes, [0, 999, 123, 450, 7])
