"""Metrics against independent references (FID, KID: 1e-3 relative) and toy data with known answers."""

import doctest

import numpy as np
import pytest
import scipy.linalg

from evaluation import metrics
from evaluation.metrics import (
    HIGHER_IS_BETTER,
    SCORE_KEYS,
    RealReference,
    calibrate_noise,
    features_to_kid,
    features_to_statistics,
    kid_subsets,
    score,
    score_features,
    statistics_to_fid,
    vendi_score,
)
from facegan.errors import FaceganError

MODES, DIM = 10, 16
CENTRES = np.random.RandomState(123).normal(size=(MODES, DIM)) * 4.0


def mixture(n, seed, modes=range(MODES)):
    """n samples of a 10-mode Gaussian mixture (fixed centres), drawing only from ``modes``."""
    rng = np.random.RandomState(seed)
    labels = rng.choice(list(modes), size=n)
    return CENTRES[labels] + rng.normal(size=(n, DIM))


@pytest.fixture(scope="module")
def halves():
    sample = mixture(2000, seed=0)
    return sample[:1000], sample[1000:]


@pytest.fixture(scope="module")
def reference(halves):
    return RealReference.from_features(halves[0])


# --- FID ---------------------------------------------------------------------------------------


def reference_fid(mu1, sigma1, mu2, sigma2):
    """pytorch-fid's formulation: trace of scipy's sqrtm of the product, offset if singular."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(sigma1)) * 1e-6
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    diff = mu1 - mu2
    return diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean.real)


@pytest.mark.parametrize(
    "n1, n2, dim, shift",
    [
        (400, 300, 8, 0.5),
        (500, 500, 32, 0.1),
        (12, 15, 24, 1.0),  # both covariances rank-deficient (N < D)
        (300, 10, 20, 0.3),  # one full rank, one rank 9
    ],
)
def test_fid_matches_scipy_sqrtm_reference(n1, n2, dim, shift):
    rng = np.random.RandomState(n1 + dim)
    mixing = rng.normal(size=(dim, dim))
    a = rng.normal(size=(n1, dim)) @ mixing
    b = rng.normal(size=(n2, dim)) @ (mixing + 0.3 * rng.normal(size=(dim, dim))) + shift
    mu1, sigma1 = features_to_statistics(a)
    mu2, sigma2 = features_to_statistics(b)
    expected = reference_fid(mu1, sigma1, mu2, sigma2)
    assert statistics_to_fid(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-3)
    assert statistics_to_fid(mu2, sigma2, mu1, sigma1) == pytest.approx(expected, rel=1e-3)


def test_fid_of_identical_statistics_is_zero():
    mu, sigma = features_to_statistics(mixture(50, seed=1))
    assert statistics_to_fid(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)


def test_fid_rejects_mismatched_statistics():
    mu, sigma = features_to_statistics(mixture(50, seed=1))
    with pytest.raises(ValueError, match="do not match"):
        statistics_to_fid(mu, sigma, mu[:3], sigma[:3, :3])


def test_score_fid_uses_cached_real_statistics(reference, halves):
    mu1, sigma1 = features_to_statistics(halves[0])
    mu2, sigma2 = features_to_statistics(halves[1] + 0.5)
    assert score(halves[1] + 0.5, reference)["fid"] == pytest.approx(
        reference_fid(mu1, sigma1, mu2, sigma2), rel=1e-3
    )


# --- KID ---------------------------------------------------------------------------------------


def reference_kid(fake, real, fake_index, real_index):
    """Straightforward loop: explicit kernel matrices per subset."""
    dim, values = fake.shape[1], []
    for f_idx, r_idx in zip(fake_index, real_index):
        x, y, m = fake[f_idx], real[r_idx], len(f_idx)
        k_xx, k_yy, k_xy = ((x @ x.T) / dim + 1) ** 3, ((y @ y.T) / dim + 1) ** 3, ((x @ y.T) / dim + 1) ** 3
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        values.append(within - 2 * k_xy.sum() / (m * m))
    return np.mean(values), np.std(values)


# (50, 80, 1000): every fake subset is the whole fake set (the shortcut scoring takes while training)
@pytest.mark.parametrize("n_fake, n_real, subset_size", [(300, 400, 100), (60, 45, 1000), (50, 80, 1000)])
def test_kid_matches_loop_reference(n_fake, n_real, subset_size):
    fake, real = mixture(n_fake, seed=2, modes=range(6)), mixture(n_real, seed=3)
    fake_index, real_index = kid_subsets(n_fake, n_real, num_subsets=20, subset_size=subset_size, seed=4)
    expected = reference_kid(fake, real, fake_index, real_index)
    got = features_to_kid(fake, real, num_subsets=20, subset_size=subset_size, seed=4)
    np.testing.assert_allclose(got, expected, rtol=1e-3)
    assert got[0] > 0.05  # different distributions: a clearly positive distance


def test_kid_subset_size_adapts_to_small_sets():
    fake_index, real_index = kid_subsets(30, 45, num_subsets=7, subset_size=1000, seed=0)
    assert fake_index.shape == real_index.shape == (7, 30)
    assert all(len(set(row)) == 30 for row in fake_index)
    assert real_index.max() < 45 and fake_index.max() < 30


def test_score_kid_equals_standalone_kid(reference, halves):
    fake = mixture(700, seed=5, modes=range(3))
    got = score(fake, reference)
    expected = features_to_kid(fake, halves[0], num_subsets=100, subset_size=1000, seed=0)
    assert (got["kid"], got["kid_std"]) == pytest.approx(expected, rel=1e-9)


# --- neighbour metrics on toy data ---------------------------------------------------------------


def test_same_distribution_scores_like_real_data(reference, halves):
    got = score(halves[1], reference)
    assert got["coverage"] == pytest.approx(0.97, abs=0.05)
    assert got["precision"] > 0.7 and got["recall"] > 0.7
    assert got["density"] == pytest.approx(1.0, abs=0.2)
    assert got["diversity"] == pytest.approx(1.0, abs=0.1)
    assert got["duplicate_share"] < 0.05 and got["memorised_share"] < 0.05


def test_dropped_modes_lower_coverage_and_recall_not_precision(reference, halves):
    same = score(halves[1], reference)
    dropped = score(mixture(1000, seed=6, modes=[0, 1]), reference)
    assert dropped["coverage"] < 0.35 and dropped["recall"] < 0.35
    assert dropped["precision"] > 0.7
    assert dropped["diversity"] < same["diversity"] - 0.2
    assert dropped["fid"] > 100 * same["fid"]
    assert dropped["kid"] > 100 * abs(same["kid"])


def test_repeated_few_points_are_duplicates_with_low_diversity(reference):
    distinct = mixture(3, seed=7)
    got = score(np.repeat(distinct, 300, axis=0), reference)
    assert got["duplicate_share"] == 1.0
    assert got["diversity"] < 0.3
    assert got["vendi"] < 3
    assert got["coverage"] < 0.05 and got["recall"] < 0.05


def test_copies_of_training_samples_count_as_memorised(reference, halves):
    copies = halves[0][:400] + 1e-6 * np.random.RandomState(8).normal(size=(400, DIM))
    got = score(copies, reference)
    assert got["memorised_share"] == 1.0
    assert got["duplicate_share"] < 0.05


def test_duplicate_threshold_survives_exact_duplicates_in_real_data(halves):
    real = np.concatenate([halves[0], halves[0][:50]])  # 50 exact duplicate pairs (10%)
    got = score(halves[1], RealReference.from_features(real))
    assert got["duplicate_share"] < 0.1


def test_small_sets_score(halves):
    got = score_features(halves[1][:20], halves[0][:30])
    assert set(got) == set(SCORE_KEYS)
    assert all(np.isfinite(value) for value in got.values())


# --- Vendi -------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 5, 8])
def test_vendi_of_equal_orthogonal_clusters(k):
    rng = np.random.RandomState(k)
    centres = 10.0 * np.eye(32)[:k]
    points = np.repeat(centres, 40, axis=0) + 0.001 * rng.normal(size=(40 * k, 32))
    # Clusters 14 apart with a kernel width of 1 are distinct; points within one are the same.
    assert vendi_score(points, bandwidth=1.0) == pytest.approx(k, abs=0.05)


def test_vendi_matches_a_direct_computation():
    points = mixture(60, seed=3)
    h = 2.5
    kernel = np.array([[np.exp(-np.sum((a - b) ** 2) / (2 * h * h)) for b in points] for a in points])
    eig = np.linalg.eigvalsh(kernel / len(points))
    eig = eig[eig > 1e-15]
    assert vendi_score(points, bandwidth=h) == pytest.approx(np.exp(-(eig * np.log(eig)).sum()), rel=1e-6)


def test_vendi_ignores_a_common_offset_and_scales_with_the_width():
    points = mixture(300, seed=9)
    assert vendi_score(points + 1000.0, bandwidth=2.0) == pytest.approx(vendi_score(points, bandwidth=2.0), rel=1e-6)
    # Without a given width, the set's own median distance sets it: scale-free.
    assert vendi_score(3.0 * points) == pytest.approx(vendi_score(points), rel=1e-6)


def test_near_identical_samples_are_not_diverse(reference):
    """A collapsed generator's samples differ only by tiny noise: that is one sample, not many."""
    one = mixture(1, seed=11)
    nearly_same = np.repeat(one, 500, axis=0) + 1e-3 * np.random.RandomState(12).normal(size=(500, DIM))
    got = score(nearly_same, reference)
    assert got["vendi"] < 1.1 and got["diversity"] < 0.2


def test_vendi_of_identical_rows_is_one():
    assert vendi_score(np.ones((10, 4))) == 1.0


# --- reference, calibration, API ---------------------------------------------------------------


def test_reference_round_trips_through_npz(tmp_path, reference, halves):
    path = tmp_path / "real-features.cache"  # any name: save must not append ".npz"
    reference.save(path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    loaded = RealReference.load(path)
    fake = mixture(300, seed=10, modes=range(4))
    assert score(fake, loaded) == score(fake, reference)
    assert loaded.k_density == 5 and isinstance(loaded.seed, int)


def test_damaged_reference_file_is_a_clear_error(tmp_path):
    path = tmp_path / "real.npz"
    path.write_bytes(b"not a zip file")
    with pytest.raises(FaceganError, match="cannot read real-feature cache"):
        RealReference.load(path)


def test_score_features_equals_score_with_reference(reference, halves):
    assert score_features(halves[1], halves[0]) == score(halves[1], reference)


def test_too_few_or_broken_samples_are_clear_errors(reference, halves):
    with pytest.raises(FaceganError, match="at least 6 generated samples"):
        score(halves[1][:5], reference)
    broken = halves[1].copy()
    broken[3, 2] = np.nan
    with pytest.raises(FaceganError, match="NaN"):
        score(broken, reference)
    with pytest.raises(FaceganError, match="at least 6 real samples"):
        RealReference.from_features(halves[0][:4])
    with pytest.raises(ValueError, match="dims"):
        score(halves[1][:, :3], reference)


def test_calibrate_noise_measures_chance_at_the_sample_size(reference):
    noise = calibrate_noise(reference, 400, repeats=4)
    assert noise["sample_size"] == 400 and noise["repeats"] == 4
    assert noise["coverage_mean"] == pytest.approx(0.9, abs=0.08)  # 400 against the other 600
    assert 0 < noise["coverage_std"] < 0.05 and noise["coverage_min"] <= noise["coverage_mean"]
    assert noise["diversity_mean"] == pytest.approx(1.0, abs=0.1)
    assert noise["duplicate_share_mean"] < 0.05 and noise["duplicate_share_max"] >= noise["duplicate_share_mean"]
    assert calibrate_noise(reference, 5000, repeats=2)["sample_size"] == 500  # half the real data


def test_calibrate_noise_needs_enough_real_samples():
    with pytest.raises(FaceganError, match="to calibrate"):
        calibrate_noise(RealReference.from_features(mixture(10, seed=11)), 100)


def test_every_score_has_a_direction_except_the_uncertainty():
    assert set(HIGHER_IS_BETTER) == set(SCORE_KEYS) - {"kid_std"}


def test_docstring_example_runs():
    assert doctest.testmod(metrics).failed == 0


# --- against well-kept peer implementations, on the same features -------------------------------


@pytest.fixture(scope="module")
def peer_sets():
    rng = np.random.default_rng(7)
    real = rng.normal(size=(300, 16))
    fake = rng.normal(size=(250, 16)) * 1.1 + 0.2  # a slightly wrong generator
    return real, fake


def test_precision_recall_density_coverage_match_prdc(peer_sets):
    """prdc (Naeem et al.'s own code): k = 3 for precision and recall, k = 5 for density and coverage.

    prdc counts a point inside a ball when its distance is below the radius, facegan at or below:
    on continuous features no distance equals a radius, so the counts agree exactly; the stated
    tolerance is one sample.
    """
    from prdc import compute_prdc

    real, fake = peer_sets
    ours = score_features(fake, real)
    at_3 = compute_prdc(real_features=real, fake_features=fake, nearest_k=3)
    at_5 = compute_prdc(real_features=real, fake_features=fake, nearest_k=5)
    assert ours["precision"] == pytest.approx(at_3["precision"], abs=1 / len(fake))
    assert ours["recall"] == pytest.approx(at_3["recall"], abs=1 / len(real))
    assert ours["density"] == pytest.approx(at_5["density"], abs=1 / (5 * len(fake)))
    assert ours["coverage"] == pytest.approx(at_5["coverage"], abs=1 / len(real))
    assert 0.1 < ours["precision"] < 0.99 and 0.1 < ours["coverage"] < 0.99  # not a trivial agreement


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save all extracted features")
def test_kid_matches_torchmetrics(peer_sets):
    """torchmetrics' KernelInceptionDistance on the same features (cubic kernel, unbiased MMD²).

    Equal set sizes and subsets as large as the sets make both sides use every sample, so their
    random subsets cannot differ: the values agree to float64 rounding (relative 1e-9).
    """
    import torch
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = peer_sets
    real = real[: len(fake)]
    kid = KernelInceptionDistance(feature=torch.nn.Identity(), subsets=1, subset_size=len(fake))
    kid.update(torch.from_numpy(real), real=True)
    kid.update(torch.from_numpy(fake), real=False)
    expected, _ = kid.compute()
    ours, _ = features_to_kid(fake, real, num_subsets=3, subset_size=len(fake))
    assert ours == pytest.approx(float(expected), rel=1e-9)


def test_precision_recall_match_torch_fidelity(peer_sets):
    """torch-fidelity 0.4's PRC (features_1 = generated; its 0.4.0-beta had the two swapped), k = 3."""
    import torch
    from torch_fidelity.metric_prc import prc_features_to_metric

    real, fake = peer_sets
    theirs = prc_features_to_metric(torch.from_numpy(fake), torch.from_numpy(real), prc_neighborhood=3,
                                    prc_batch_size=1000, save_cpu_ram=False, verbose=False)
    ours = score_features(fake, real)
    assert ours["precision"] == pytest.approx(theirs["precision"], abs=1 / len(fake))
    assert ours["recall"] == pytest.approx(theirs["recall"], abs=1 / len(real))
