"""Sample-quality metrics on feature arrays (rows = images), all in float64 numpy.

The pipeline is a chain of conversions, as in torch-fidelity::

    real features --RealReference.from_features--> reference (computed once, cacheable)
    fake features --score(fake, reference)-------> {"fid": ..., "coverage": ..., ...}

:func:`score` returns these keys (:data:`SCORE_KEYS`):

- ``fid``: Fréchet distance between Gaussians fitted to fake and real features.
- ``kid``, ``kid_std``: kernel inception distance, the unbiased MMD² with the kernel
  ``k(x, y) = (x·y / d + 1)³``, mean and standard deviation over random subsets.
- ``precision``, ``recall``: Kynkäänniemi et al. 2019, k = 3: share of fakes inside the real
  manifold (union of balls reaching each real sample's k-th neighbour) and of reals inside the
  fake manifold.
- ``density``, ``coverage``: Naeem et al. 2020, k = 5 on the real samples: expected number of real
  balls a fake falls in, divided by k; share of real balls that hold at least one fake.
- ``vendi``: Vendi score (an "effective number of distinct samples") of the fake features with
  a Gaussian kernel whose width is half the real features' median distance (:func:`vendi_score`):
  1 for identical samples, about k for k clusters much further apart than that width.
- ``diversity``: ``vendi(fake) / vendi(real)`` on equal sample counts, the larger set subsampled
  with a fixed seed; 1 is as diverse as the real data.
- ``duplicate_share``: share of fakes whose nearest other fake is closer than the duplicate
  threshold; ``memorised_share``: share of fakes whose nearest real sample is closer than it.
  The threshold is the real data's own nearest-neighbour scale: the 1st percentile of the
  distances from each real sample to its nearest other real sample, at the fake sample count
  (real subsampled), times 1.0 — closer than all but 1% of real neighbours are to each other.
  (The memorised share is reported; it no longer decides copying, see :mod:`evaluation.memorisation`.)
- ``copy_share``: share of fakes whose nearest real sample is much closer than their second
  nearest (distance ratio below :data:`COPY_RATIO`, :func:`nearest_training`): close to *one*
  training image rather than close to the data in general. It decides copying.

:func:`calibrate_noise` measures how much coverage, diversity and the duplicate shares move by
chance at a sample size, by scoring random halves of the real data against each other; the
collapse rule in :mod:`evaluation.collapse` uses it.

Pairwise distances are computed block by block (a few million entries at a time), so 3000 x 3000
sets need tens of MB, not the full matrix at once.

Example:
    >>> rng = np.random.default_rng(0)
    >>> reference = RealReference.from_features(rng.normal(size=(500, 16)))
    >>> scores = score(rng.normal(size=(400, 16)), reference)
    >>> round(scores["coverage"], 1)
    0.9
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field, fields

import numpy as np

from facegan.errors import FaceganError

__all__ = [
    "COPY_RATIO",
    "HIGHER_IS_BETTER",
    "SCORE_KEYS",
    "RealReference",
    "calibrate_noise",
    "copy_share",
    "features_to_kid",
    "features_to_statistics",
    "kid_subsets",
    "memorised_share",
    "NearestTraining",
    "nearest_training",
    "score",
    "score_features",
    "statistics_to_fid",
    "vendi_score",
]

SCORE_KEYS = (
    "fid", "kid", "kid_std", "precision", "recall", "density", "coverage",
    "vendi", "diversity", "duplicate_share", "memorised_share", "copy_share",
)
"""Keys of the dict :func:`score` returns, in display order."""

HIGHER_IS_BETTER = {
    "fid": False,
    "kid": False,
    "precision": True,
    "recall": True,
    "density": True,
    "coverage": True,
    "vendi": True,
    "diversity": True,  # up to 1; above 1 the samples are more spread than real data, not better
    "duplicate_share": False,
    "memorised_share": False,
    "copy_share": False,
}
"""Direction of every score key; ``kid_std`` is absent: it is an uncertainty, not a score."""

# Entries of one distance block: 2**21 float64 = 16 MB per temporary array.
_BLOCK_ENTRIES = 1 << 21
# Inner-product matrices up to this size are kept whole while one set is scored: 2**23 float64 =
# 64 MB, e.g. 2000 generated x 4000 real features.
_GRAM_ENTRIES = 1 << 23
# Independent random streams derived from one seed, so changing one use never shifts another.
_STREAM_REAL_SUBSAMPLE, _STREAM_FAKE_SUBSAMPLE, _STREAM_KID_REAL, _STREAM_KID_FAKE, _STREAM_SPLIT = range(5)


def _rng(seed: int, stream: int) -> np.random.RandomState:
    # The legacy RandomState stream is frozen across numpy versions, so subsets are reproducible.
    return np.random.RandomState([seed, stream])


def _subsample(n: int, size: int, seed: int, stream: int) -> np.ndarray:
    if size >= n:
        return np.arange(n)
    return np.sort(_rng(seed, stream).choice(n, size, replace=False))


class _Gram:
    """Inner products ``a @ b.T`` between feature sets, computed once while one set is scored.

    Scoring a checkpoint needs fake x fake products three times (KID, nearest neighbours, Vendi)
    and fake x real twice (KID, the real neighbourhoods): the matrix products are most of its
    arithmetic. Products of at most ``keep_entries`` entries are kept whole and sliced; larger ones
    are recomputed block by block, so memory stays bounded. ``_Gram()`` keeps nothing.
    """

    def __init__(self, keep_entries: int = 0):
        self.keep_entries = keep_entries
        # (id(a), id(b)) -> (a, b, a @ b.T); a and b are held so their ids cannot be reused
        self._whole: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def rows(self, a: np.ndarray, b: np.ndarray, rows: slice) -> np.ndarray:
        """``a[rows] @ b.T`` (read-only when it is a slice of a kept product)."""
        if len(a) * len(b) > self.keep_entries:
            return a[rows] @ b.T
        key = (id(a), id(b))
        if key not in self._whole:
            self._whole[key] = (a, b, a @ b.T)
        return self._whole[key][2][rows]


def _check_features(features: np.ndarray, what: str, *, min_rows: int, dim: int | None = None) -> np.ndarray:
    array = np.ascontiguousarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{what} features must be a 2-D array (samples x dims), got shape {array.shape}")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"{what} features have {array.shape[1]} dims, the reference has {dim}")
    if array.shape[0] < min_rows:
        raise FaceganError(f"need at least {min_rows} {what} samples to score, got {array.shape[0]}")
    if not np.isfinite(array).all():
        raise FaceganError(f"{what} features contain NaN or infinity; the images or the network are broken")
    return array


# --- FID ----------------------------------------------------------------------------------------


def features_to_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, ddof=1) of a feature array.

    Args:
        features: N x D array, N >= 2.

    Returns:
        ``(mu, sigma)``: D vector and D x D matrix, float64.
    """
    array = _check_features(features, "input", min_rows=2)
    return array.mean(axis=0), np.cov(array, rowvar=False).reshape(array.shape[1], array.shape[1])


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance; rounding's tiny negative eigenvalues become 0."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def _fid_with_root(
    mu1: np.ndarray, sigma1: np.ndarray, root1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    # tr sqrt(S1 S2) = sum of sqrt(eigenvalues of S1^½ S2 S1^½): a symmetric PSD matrix, so eigvalsh
    # is stable even when N < D leaves the covariances singular, unlike sqrtm of S1 S2.
    inner = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    diff = mu1 - mu2
    fid = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
    return float(max(fid, 0.0))  # rounding can leave -1e-12 for identical statistics


def statistics_to_fid(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance ``|mu1 - mu2|² + tr(S1 + S2 - 2 (S1 S2)^½)`` between two Gaussians.

    Args:
        mu1, sigma1: mean and covariance of one set (e.g. real features).
        mu2, sigma2: mean and covariance of the other.

    Returns:
        The FID, >= 0.
    """
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    sigma1, sigma2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    dim = mu1.shape[0]
    if mu1.shape != (dim,) or mu2.shape != (dim,) or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(
            f"statistics do not match: mu {mu1.shape}/{mu2.shape}, sigma {sigma1.shape}/{sigma2.shape}"
        )
    return _fid_with_root(mu1, sigma1, _psd_sqrt(sigma1), mu2, sigma2)


# --- KID ----------------------------------------------------------------------------------------


def kid_subsets(
    n_fake: int, n_real: int, *, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The random subsets KID averages over.

    The subset size is ``min(subset_size, n_fake, n_real)``, so small sets work. Real and fake
    subsets come from separate streams of ``seed``: the real ones do not depend on ``n_fake``.

    Returns:
        ``(fake_index, real_index)``: two ``num_subsets`` x size integer arrays; each row holds
        distinct indices.
    """
    size = min(subset_size, n_fake, n_real)
    if size < 2:
        raise FaceganError(f"KID needs at least 2 samples on each side, got {n_fake} generated and {n_real} real")
    fake_rng, real_rng = _rng(seed, _STREAM_KID_FAKE), _rng(seed, _STREAM_KID_REAL)
    fake_index = np.stack([fake_rng.choice(n_fake, size, replace=False) for _ in range(num_subsets)])
    real_index = np.stack([real_rng.choice(n_real, size, replace=False) for _ in range(num_subsets)])
    return fake_index, real_index


def _indicator(index: np.ndarray, n: int) -> np.ndarray:
    matrix = np.zeros((index.shape[0], n))
    np.put_along_axis(matrix, index, 1.0, axis=1)
    return matrix


def _row_blocks(n_rows: int, n_cols: int) -> Iterator[slice]:
    step = max(1, _BLOCK_ENTRIES // max(n_cols, 1))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def _kernel_subset_sums(x: np.ndarray, y: np.ndarray, x_member: np.ndarray, y_member: np.ndarray,
                        gram: _Gram | None = None) -> np.ndarray:
    """For each subset s: sum of k(x_i, y_j) over i in x-subset s and j in y-subset s.

    ``x_member``/``y_member`` are subsets x samples 0/1 matrices. Computing each kernel block once
    and summing it through these matrices costs one pass over x·y instead of one per subset.
    """
    dim = x.shape[1]
    gram = gram or _Gram()
    # When every x-subset is the whole of x (as many samples as the subset size, the usual case
    # while training), each subset's sum is its y-members' share of the kernel's column sums.
    whole_x = bool(x_member.all())
    sums = np.zeros(x_member.shape[0])
    column_sums = np.zeros(len(y))
    for rows in _row_blocks(len(x), len(y)):
        kernel = (gram.rows(x, y, rows) / dim + 1.0) ** 3
        if whole_x:
            column_sums += kernel.sum(axis=0)
        else:
            sums += np.einsum("sj,sj->s", x_member[:, rows] @ kernel, y_member)
    return y_member @ column_sums if whole_x else sums


def _kernel_offdiagonal_sums(x: np.ndarray, index: np.ndarray, gram: _Gram | None = None) -> np.ndarray:
    """Per subset: sum of k(x_i, x_j) over distinct i, j of the subset."""
    member = _indicator(index, len(x))
    diagonal = (np.einsum("ij,ij->i", x, x) / x.shape[1] + 1.0) ** 3
    return _kernel_subset_sums(x, x, member, member, gram) - member @ diagonal


def _kid_from_sums(fake_pairs: np.ndarray, real_pairs: np.ndarray, cross: np.ndarray, size: int) -> tuple[float, float]:
    mmd = (fake_pairs + real_pairs) / (size * (size - 1)) - 2.0 * cross / (size * size)
    return float(mmd.mean()), float(mmd.std())


def features_to_kid(
    fake: np.ndarray, real: np.ndarray, *, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel inception distance: unbiased MMD² with the cubic polynomial kernel, over subsets.

    Args:
        fake, real: feature arrays with the same number of columns.
        num_subsets: subsets to average over (torch-fidelity's default, 100).
        subset_size: samples per subset, capped at the smaller set (see :func:`kid_subsets`).
        seed: seed for the subsets.

    Returns:
        ``(mean, std)`` over subsets; the std (ddof=0, as torchmetrics) measures subset noise.
    """
    fake = _check_features(fake, "generated", min_rows=2)
    real = _check_features(real, "real", min_rows=2, dim=fake.shape[1])
    fake_index, real_index = kid_subsets(
        len(fake), len(real), num_subsets=num_subsets, subset_size=subset_size, seed=seed
    )
    cross = _kernel_subset_sums(fake, real, _indicator(fake_index, len(fake)), _indicator(real_index, len(real)))
    return _kid_from_sums(
        _kernel_offdiagonal_sums(fake, fake_index), _kernel_offdiagonal_sums(real, real_index), cross,
        fake_index.shape[1],
    )


# --- diversity ----------------------------------------------------------------------------------


# The Vendi kernel width as a share of the real features' median distance. Measured with random
# features on synthetic faces drawn from k of the 96 attribute combinations (600 each): at 0.5
# relative diversity falls steadily with k (0.96, 0.92, 0.68, 0.47, 0.26 for k = 96, 24, 6, 2, 1;
# one face with tiny noise: 0.01); at 1.0 the range shrinks (k = 1 still 0.46).
VENDI_WIDTH = 0.5


def median_distance(features: np.ndarray, *, max_rows: int = 2000, seed: int = 0, _gram: _Gram | None = None) -> float:
    """Median Euclidean distance between distinct rows (on at most ``max_rows`` rows)."""
    array = _check_features(features, "input", min_rows=2)
    if len(array) > max_rows:
        array = array[_subsample(len(array), max_rows, seed, _STREAM_REAL_SUBSAMPLE)]
    squared = np.sum(array**2, axis=1)
    products = (_gram or _Gram()).rows(array, array, slice(None))
    distances = np.sqrt(np.clip(squared[:, None] + squared[None, :] - 2 * products, 0.0, None))
    return float(np.median(distances[np.triu_indices(len(array), k=1)]))


def vendi_score(features: np.ndarray, bandwidth: float | None = None, *, _gram: _Gram | None = None) -> float:
    """Vendi score (Friedman & Dieng 2023) with a Gaussian kernel of a fixed width.

    ``k(x, y) = exp(-|x - y|^2 / (2 h^2))``; the score is the exponential of the entropy of the
    eigenvalues of the kernel matrix / N: 1 for identical samples, N for samples much further
    apart than ``h``. The width must be fixed by the real data (``h`` = the real features' median
    distance), not by the set being scored: a scale-free kernel (cosine on centred features)
    blows up the tiny differences between near-identical samples of a collapsed generator into
    full diversity.

    Args:
        features: N x D array.
        bandwidth: the kernel width ``h``; default: the median distance within ``features``.

    Returns:
        The effective number of distinct samples, between 1 and N.
    """
    array = _check_features(features, "input", min_rows=1)
    if len(array) == 1:
        return 1.0
    h = median_distance(array) if bandwidth is None else float(bandwidth)
    if not h > 0:
        return 1.0  # every row identical
    squared = np.sum(array**2, axis=1)
    products = (_gram or _Gram()).rows(array, array, slice(None))
    distances_sq = np.clip(squared[:, None] + squared[None, :] - 2 * products, 0.0, None)
    kernel = np.exp(-distances_sq / (2 * h * h))
    eigenvalues = np.clip(np.linalg.eigvalsh(kernel), 0.0, None)
    eigenvalues = eigenvalues[eigenvalues > 0] / eigenvalues.sum()
    return float(np.exp(-(eigenvalues * np.log(eigenvalues)).sum()))


# --- neighbours ---------------------------------------------------------------------------------


def _squared_distance_blocks(a: np.ndarray, b: np.ndarray, *, same: bool,
                             gram: _Gram | None = None) -> Iterator[tuple[slice, np.ndarray]]:
    """Blocks of squared distances a[rows] x b; with ``same``, a point's distance to itself is inf."""
    a_sq, b_sq = np.einsum("ij,ij->i", a, a), np.einsum("ij,ij->i", b, b)
    gram = gram or _Gram()
    for rows in _row_blocks(len(a), len(b)):
        block = a_sq[rows, None] + b_sq[None, :] - 2.0 * gram.rows(a, b, rows)
        np.maximum(block, 0.0, out=block)
        if same:
            block[np.arange(rows.stop - rows.start), np.arange(rows.start, rows.stop)] = np.inf
        yield rows, block


def _neighbour_distances(x: np.ndarray, ks: tuple[int, ...], gram: _Gram | None = None) -> dict[int, np.ndarray]:
    """Distance from each row of x to its k-th nearest other row, for each k in ks."""
    result = {k: np.empty(len(x)) for k in ks}
    for rows, block in _squared_distance_blocks(x, x, same=True, gram=gram):
        part = np.partition(block, [k - 1 for k in ks], axis=1)
        for k in ks:
            result[k][rows] = np.sqrt(part[:, k - 1])
    return result


@dataclass(frozen=True)
class _SizeStats:
    """Real-side quantities that depend on the fake sample count."""

    vendi: float
    duplicate_threshold: float
    bandwidth: float  # the Vendi kernel width: the real features' median distance


def _size_stats(real: np.ndarray, size: int, *, quantile: float, factor: float, seed: int,
                gram: _Gram | None = None) -> _SizeStats:
    subset = real if size >= len(real) else real[_subsample(len(real), size, seed, _STREAM_REAL_SUBSAMPLE)]
    gram = gram or _Gram(_GRAM_ENTRIES)
    nearest = _neighbour_distances(subset, (1,), gram)[1]
    positive = nearest[nearest > 0]  # exact duplicates in the real data must not zero the scale
    if positive.size == 0:
        raise FaceganError("all real features are identical; the real data cannot serve as a reference")
    bandwidth = VENDI_WIDTH * median_distance(subset, seed=seed, _gram=gram)
    return _SizeStats(vendi=vendi_score(subset, bandwidth, _gram=gram),
                      duplicate_threshold=float(np.quantile(positive, quantile) * factor), bandwidth=bandwidth)


def _neighbour_scores(
    fake: np.ndarray,
    real: np.ndarray,
    *,
    radius_precision: np.ndarray,
    radius_density: np.ndarray,
    k_precision: int,
    k_density: int,
    size_stats: _SizeStats,
    seed: int,
    gram: _Gram | None = None,
) -> dict[str, float]:
    """precision, recall, density, coverage, vendi, diversity and the duplicate shares."""
    gram = gram or _Gram()
    fake_neighbours = _neighbour_distances(fake, (1, k_precision), gram)
    fake_radius_sq = fake_neighbours[k_precision] ** 2
    real_radius_p_sq, real_radius_d_sq = radius_precision**2, radius_density**2
    in_real_manifold = np.zeros(len(fake), dtype=bool)
    density_count = np.zeros(len(fake))
    nearest_real_sq, second_real_sq = np.empty(len(fake)), np.empty(len(fake))
    covered = np.zeros(len(real), dtype=bool)
    in_fake_manifold = np.zeros(len(real), dtype=bool)
    for rows, block in _squared_distance_blocks(fake, real, same=False, gram=gram):
        in_real_manifold[rows] = (block <= real_radius_p_sq).any(axis=1)
        in_density_balls = block <= real_radius_d_sq
        density_count[rows] = in_density_balls.sum(axis=1)
        covered |= in_density_balls.any(axis=0)
        in_fake_manifold |= (block <= fake_radius_sq[rows, None]).any(axis=0)
        nearest_real_sq[rows], second_real_sq[rows] = _two_smallest(block)

    size = min(len(fake), len(real))
    if size < len(fake):  # compare duplicates and diversity at the real side's sample count
        subset = fake[_subsample(len(fake), size, seed, _STREAM_FAKE_SUBSAMPLE)]
        nearest_fake = _neighbour_distances(subset, (1,))[1]
    else:
        subset, nearest_fake = fake, fake_neighbours[1]
    vendi = vendi_score(subset, size_stats.bandwidth, _gram=gram)
    threshold = size_stats.duplicate_threshold
    return {
        "precision": float(in_real_manifold.mean()),
        "recall": float(in_fake_manifold.mean()),
        "density": float(density_count.sum() / (k_density * len(fake))),
        "coverage": float(covered.mean()),
        "vendi": vendi,
        "diversity": vendi / size_stats.vendi,
        "duplicate_share": float((nearest_fake < threshold).mean()),
        "memorised_share": float((np.sqrt(nearest_real_sq) < threshold).mean()),
        "copy_share": float((_ratio(np.sqrt(nearest_real_sq), np.sqrt(second_real_sq)) < COPY_RATIO).mean()),
    }


# --- reference and scoring ----------------------------------------------------------------------


@dataclass(eq=False)
class RealReference:
    """Everything about the real data that scoring needs, computed once and reused per checkpoint.

    Build it with :meth:`from_features`; cache it on disk with :meth:`save` / :meth:`load`.
    Quantities that depend on the fake sample count (real Vendi score and duplicate threshold at
    that count, KID's real-pair sums) are computed by the first :func:`score` call and kept in
    memory, so reuse one instance for all checkpoints of a run.

    Attributes:
        features: N x D real features.
        mu, sigma: their mean and covariance (FID statistics).
        sigma_sqrt: symmetric square root of ``sigma``, so each FID needs one eigendecomposition.
        radius_precision: distance of each real sample to its ``k_precision``-th real neighbour.
        radius_density: the same for ``k_density``.
        k_precision, k_density, kid_num_subsets, kid_subset_size, duplicate_quantile,
            duplicate_factor, seed: the parameters, see :meth:`from_features`.
    """

    features: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    sigma_sqrt: np.ndarray
    radius_precision: np.ndarray
    radius_density: np.ndarray
    k_precision: int
    k_density: int
    kid_num_subsets: int
    kid_subset_size: int
    duplicate_quantile: float
    duplicate_factor: float
    seed: int
    _size_cache: dict[int, _SizeStats] = field(default_factory=dict, init=False, repr=False)
    _kid_cache: dict[int, tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict, init=False, repr=False
    )

    _FORMAT_VERSION = 1

    @classmethod
    def from_features(
        cls,
        real_features: np.ndarray,
        *,
        k_precision: int = 3,
        k_density: int = 5,
        kid_num_subsets: int = 100,
        kid_subset_size: int = 1000,
        duplicate_quantile: float = 0.01,
        duplicate_factor: float = 1.0,
        seed: int = 0,
    ) -> RealReference:
        """Compute the reference from real features.

        Args:
            real_features: N x D array, N > max(k_precision, k_density).
            k_precision: neighbour count for precision and recall (Kynkäänniemi et al.: 3).
            k_density: neighbour count for density and coverage (Naeem et al.: 5).
            kid_num_subsets: KID subsets.
            kid_subset_size: KID subset size before capping at the smaller set.
            duplicate_quantile: quantile of real nearest-neighbour distances that sets the
                duplicate threshold.
            duplicate_factor: multiplier on that quantile.
            seed: seed for every subsample and subset.

        Raises:
            FaceganError: too few real samples, or non-finite features.
        """
        if not (1 <= k_precision and 1 <= k_density and kid_num_subsets >= 1 and kid_subset_size >= 2):
            raise ValueError("neighbour counts and KID subsets must be positive, KID subset size >= 2")
        if not (0.0 <= duplicate_quantile <= 1.0 and duplicate_factor > 0):
            raise ValueError("duplicate_quantile must lie in [0, 1] and duplicate_factor be positive")
        features = _check_features(real_features, "real", min_rows=max(k_precision, k_density) + 1)
        mu, sigma = features_to_statistics(features)
        radii = _neighbour_distances(features, tuple(sorted({k_precision, k_density})))
        return cls(
            features=features, mu=mu, sigma=sigma, sigma_sqrt=_psd_sqrt(sigma),
            radius_precision=radii[k_precision], radius_density=radii[k_density],
            k_precision=k_precision, k_density=k_density, kid_num_subsets=kid_num_subsets,
            kid_subset_size=kid_subset_size, duplicate_quantile=duplicate_quantile,
            duplicate_factor=duplicate_factor, seed=seed,
        )

    @property
    def num_samples(self) -> int:
        """Number of real samples."""
        return self.features.shape[0]

    @property
    def dim(self) -> int:
        """Feature dimension."""
        return self.features.shape[1]

    @property
    def min_samples(self) -> int:
        """Fewest generated samples :func:`score` accepts: each needs k neighbours."""
        return max(self.k_precision, self.k_density) + 1

    def _stats_at(self, size: int) -> _SizeStats:
        """Real Vendi score and duplicate threshold at ``size`` samples (memoised)."""
        size = min(size, self.num_samples)
        if size not in self._size_cache:
            self._size_cache[size] = _size_stats(
                self.features, size, quantile=self.duplicate_quantile, factor=self.duplicate_factor, seed=self.seed
            )
        return self._size_cache[size]

    def duplicate_threshold(self, size: int) -> float:
        """The distance under which two of ``size`` samples count as duplicates (and a sample as a
        copy of its nearest real one for ``memorised_share``): the real data's own nearest-neighbour
        scale at that sample count (module docstring)."""
        return self._stats_at(size).duplicate_threshold

    def _kid_real_terms(self, n_fake: int) -> tuple[np.ndarray, np.ndarray]:
        """KID's real subsets and their off-diagonal kernel sums for ``n_fake`` fakes (memoised)."""
        # The real subsets depend only on the subset size (a stream of their own), so cache by it.
        key = min(self.kid_subset_size, n_fake, self.num_samples)
        if key not in self._kid_cache:
            _, real_index = kid_subsets(
                n_fake, self.num_samples, num_subsets=self.kid_num_subsets,
                subset_size=self.kid_subset_size, seed=self.seed,
            )
            self._kid_cache[key] = real_index, _kernel_offdiagonal_sums(self.features, real_index)
        return self._kid_cache[key]

    def save(self, path: str | os.PathLike) -> None:
        """Write the reference to ``path`` in npz format (no pickles; :meth:`load` reads it back).

        The file appears whole or not at all (written beside it, then renamed), so an interrupted
        run never leaves a damaged cache.
        """
        from facegan.common import atomic_write  # here: this module stays importable without torch

        arrays = {f.name: np.asarray(getattr(self, f.name)) for f in fields(self) if f.init}
        # A file handle: np.savez would append ".npz" to a name.
        atomic_write(path, lambda handle: np.savez(handle, format_version=np.asarray(self._FORMAT_VERSION), **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike) -> RealReference:
        """Read a reference written by :meth:`save`.

        Raises:
            FaceganError: the file is missing, damaged or from another format version.
        """
        try:
            with np.load(path, allow_pickle=False) as data:
                if int(data["format_version"]) != cls._FORMAT_VERSION:
                    raise FaceganError(f"{path}: real-feature cache has an old format; delete it to rebuild")
                values = {f.name: data[f.name] for f in fields(cls) if f.init}
        except FaceganError:
            raise
        except Exception as error:  # zip, key and value errors all mean a damaged file
            raise FaceganError(f"cannot read real-feature cache {path}: {type(error).__name__}: {error}") from None
        for name in ("k_precision", "k_density", "kid_num_subsets", "kid_subset_size", "seed"):
            values[name] = int(values[name])
        for name in ("duplicate_quantile", "duplicate_factor"):
            values[name] = float(values[name])
        return cls(**values)


def score(fake_features: np.ndarray, reference: RealReference) -> dict[str, float]:
    """Score generated samples' features against a real reference.

    Args:
        fake_features: N x D features of the generated samples (same extractor as the reference),
            N >= ``reference.min_samples``.
        reference: the real side, see :class:`RealReference`.

    Returns:
        A dict with the keys of :data:`SCORE_KEYS` (described in the module docstring), floats.

    Raises:
        FaceganError: too few samples or non-finite features.
    """
    fake = _check_features(fake_features, "generated", min_rows=reference.min_samples, dim=reference.dim)
    gram = _Gram(_GRAM_ENTRIES)
    mu, sigma = features_to_statistics(fake)
    fid = _fid_with_root(reference.mu, reference.sigma, reference.sigma_sqrt, mu, sigma)

    real_index, real_pairs = reference._kid_real_terms(len(fake))
    fake_index, _ = kid_subsets(
        len(fake), reference.num_samples, num_subsets=reference.kid_num_subsets,
        subset_size=reference.kid_subset_size, seed=reference.seed,
    )
    cross = _kernel_subset_sums(
        fake, reference.features, _indicator(fake_index, len(fake)), _indicator(real_index, reference.num_samples),
        gram,
    )
    kid, kid_std = _kid_from_sums(_kernel_offdiagonal_sums(fake, fake_index, gram), real_pairs, cross,
                                  fake_index.shape[1])

    neighbours = _neighbour_scores(
        fake, reference.features, radius_precision=reference.radius_precision,
        radius_density=reference.radius_density, k_precision=reference.k_precision,
        k_density=reference.k_density, size_stats=reference._stats_at(len(fake)), seed=reference.seed, gram=gram,
    )
    result = {"fid": fid, "kid": kid, "kid_std": kid_std, **neighbours}
    return {key: result[key] for key in SCORE_KEYS}


def memorised_share(features: np.ndarray, reference: RealReference, sample_size: int) -> float:
    """Share of rows lying closer to a reference sample than :func:`score`'s memorisation threshold at
    ``sample_size`` samples: what :func:`score` reports as ``memorised_share`` for generated samples,
    here for any set (held-out real images: the chance level of novel images of the same data).
    """
    rows = _check_features(features, "held-out", min_rows=1, dim=reference.dim)
    threshold = reference._stats_at(sample_size).duplicate_threshold
    nearest_sq = np.empty(len(rows))
    for block_rows, block in _squared_distance_blocks(rows, reference.features, same=False):
        nearest_sq[block_rows] = block.min(axis=1)
    return float((np.sqrt(nearest_sq) < threshold).mean())


# Gu et al.'s memorisation ratio threshold in our feature spaces: a sample is a copy when its
# nearest training image is less than half as far as its second nearest. On the built-in faces
# (2000 training, 1000 fresh images; pixels, the random CNN and a SimCLR encoder) no fresh image,
# blurred or noisy or not, comes below 0.5 (0.1% quantiles 0.57 or more), while exact copies sit at 0 and copies with 16 grey
# levels of noise or a 1-pixel blur mostly below 0.5 (Gu et al.'s 1/3 misses most of those).
# Figures and the sets measured: experiments/RESULTS.md, "Copying without false alarms".
COPY_RATIO = 0.5


def _two_smallest(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of a squared-distance block: the smallest and second smallest entries."""
    two = np.partition(block, 1, axis=1)[:, :2] if block.shape[1] > 1 else np.full((len(block), 2), np.inf)
    return two[:, 0], two[:, 1]


def _ratio(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    # 0/0 (a copy of an image the training set holds twice) is a copy: ratio 0.
    return first / np.maximum(second, np.finfo(float).tiny)


@dataclass(frozen=True)
class NearestTraining:
    """Each row's two nearest training images: ``index`` of the nearest, distances ``first`` and
    ``second`` (feature space). ``ratio = first / second`` is Gu et al. 2023's memorisation ratio:
    a copy of one training image is far closer to it than to any other (ratio near 0); a novel
    sample, sharp or blurry, is about as close to its nearest as to its second nearest."""

    index: np.ndarray
    first: np.ndarray
    second: np.ndarray

    @property
    def ratio(self) -> np.ndarray:
        return _ratio(self.first, self.second)

    @property
    def copies(self) -> np.ndarray:
        """Whether each row counts as a copy: ``ratio < COPY_RATIO``."""
        return self.ratio < COPY_RATIO


def nearest_training(features: np.ndarray, training: np.ndarray, *, exclude_self: bool = False) -> NearestTraining:
    """The two nearest rows of ``training`` to each row of ``features`` (block by block).

    ``exclude_self``: ``features`` is ``training`` itself (leave-one-out: a row's distance to
    itself does not count).
    """
    rows = _check_features(features, "generated", min_rows=1)
    reference = _check_features(training, "training", min_rows=2 + int(exclude_self), dim=rows.shape[1])
    index = np.empty(len(rows), dtype=np.int64)
    first, second = np.empty(len(rows)), np.empty(len(rows))
    for block_rows, block in _squared_distance_blocks(rows, reference, same=exclude_self):
        index[block_rows] = np.argmin(block, axis=1)
        nearest, next_nearest = _two_smallest(block)
        first[block_rows], second[block_rows] = np.sqrt(nearest), np.sqrt(next_nearest)
    return NearestTraining(index, first, second)


def copy_share(features: np.ndarray, training: np.ndarray, *, exclude_self: bool = False) -> float:
    """Share of rows whose nearest/second-nearest training distance ratio is below :data:`COPY_RATIO`:
    what :func:`score` reports as ``copy_share`` for generated samples, here for any set (held-out
    real images, or the training set itself with ``exclude_self``: the chance level of novel images).
    """
    return float(nearest_training(features, training, exclude_self=exclude_self).copies.mean())


def score_features(fake_features: np.ndarray, real_features: np.ndarray, **reference_options) -> dict[str, float]:
    """One-off :func:`score`: builds the :class:`RealReference` and scores against it.

    Args:
        fake_features, real_features: feature arrays with the same number of columns.
        **reference_options: keyword arguments of :meth:`RealReference.from_features`.
    """
    return score(fake_features, RealReference.from_features(real_features, **reference_options))


# --- chance level -------------------------------------------------------------------------------


def calibrate_noise(reference: RealReference, sample_size: int, *, repeats: int = 5, seed: int = 0) -> dict[str, float]:
    """How much coverage, diversity and the duplicate shares move by chance at a sample size.

    Each repeat splits the real features at random into a pseudo-fake set of ``sample_size``
    (at most half the data) and a pseudo-real rest, and scores the first against the second with
    the reference's parameters. Real data against real data is the best a generator can do, so the
    spread of these scores is the noise a checkpoint's scores carry from sampling alone, and the
    duplicate shares are their chance level.

    Args:
        reference: the real reference (its features and parameters are used).
        sample_size: the number of generated samples per checkpoint.
        repeats: random splits; the spreads are rough with few, so the collapse rule also has
            fixed floors.
        seed: seed for the splits.

    Returns:
        ``sample_size`` (the size used, capped at half the real data) and ``repeats``, then for
        ``coverage`` and ``diversity``: ``_mean``, ``_std`` (ddof=1) and ``_min``; for
        ``duplicate_share`` and ``memorised_share``: ``_mean``, ``_std`` and ``_max``; and the
        copy test's leave-one-out chance level, ``copy_share_loo`` (:func:`copy_share` of the real
        features against the others) with ``copy_share_loo_size`` (the images it counted).

    Raises:
        FaceganError: too few real samples to split.
    """
    if repeats < 2:
        raise ValueError(f"repeats must be at least 2 to measure a spread, got {repeats}")
    size = min(sample_size, reference.num_samples // 2)
    if size < reference.min_samples:
        raise FaceganError(
            f"need at least {2 * reference.min_samples} real samples to calibrate, got {reference.num_samples}"
        )
    runs: dict[str, list[float]] = {"coverage": [], "diversity": [], "duplicate_share": [], "memorised_share": []}
    for repeat in range(repeats):
        order = _rng(seed + repeat, _STREAM_SPLIT).permutation(reference.num_samples)
        pseudo_fake, pseudo_real = reference.features[order[:size]], reference.features[order[size:]]
        gram = _Gram(_GRAM_ENTRIES)  # one repeat's products, shared by its radii, size terms and scores
        radii = _neighbour_distances(pseudo_real, tuple(sorted({reference.k_precision, reference.k_density})), gram)
        scores = _neighbour_scores(
            pseudo_fake, pseudo_real, radius_precision=radii[reference.k_precision],
            radius_density=radii[reference.k_density], k_precision=reference.k_precision,
            k_density=reference.k_density,
            size_stats=_size_stats(
                pseudo_real, size, quantile=reference.duplicate_quantile, factor=reference.duplicate_factor,
                seed=reference.seed, gram=gram,
            ),
            seed=reference.seed, gram=gram,
        )
        for key, values in runs.items():
            values.append(scores[key])
    result: dict[str, float] = {"sample_size": size, "repeats": repeats}
    for key, values in runs.items():
        array = np.asarray(values)
        result[f"{key}_mean"] = float(array.mean())
        result[f"{key}_std"] = float(array.std(ddof=1))
        extreme = "min" if HIGHER_IS_BETTER[key] else "max"
        result[f"{key}_{extreme}"] = float(array.min() if HIGHER_IS_BETTER[key] else array.max())
    # Each real image against all the others: the whole set, not one split, sets the copy test's
    # chance level when there are no held-out images (it does not depend on the sample size).
    result["copy_share_loo"] = copy_share(reference.features, reference.features, exclude_self=True)
    result["copy_share_loo_size"] = reference.num_samples
    return result
