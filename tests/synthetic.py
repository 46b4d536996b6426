"""Synthetic features with known label structure, for tests and timing without any encoder.

Labels come from linear functions of a low-dimensional latent factor seen through a random
projection plus noise, so a linear head can learn them, a non-linear head is not handicapped,
and genre prevalences follow a given (e.g. real, skewed) distribution.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from genrekit.store import FeatureSet

# Shares of the 20 most common genres of ../shared/data/movie_posters (SOURCE.md).
POSTER_PREVALENCE: dict[str, float] = {
    "Drama": 0.572, "Comedy": 0.382, "Romance": 0.192, "Action": 0.113, "Thriller": 0.107,
    "Horror": 0.103, "Adventure": 0.101, "Crime": 0.086, "Family": 0.086, "Fantasy": 0.084,
    "Mystery": 0.083, "Sci-Fi": 0.083, "Animation": 0.064, "War": 0.060, "Music": 0.053,
    "Musical": 0.050, "History": 0.047, "Biography": 0.047, "Sport": 0.041, "Western": 0.024,
}  # fmt: skip


def synthetic_features(
    n: int = 600,
    dim: int = 32,
    prevalence: dict[str, float] | Sequence[float] | None = None,
    latent: int = 8,
    noise: float = 1.0,
    signal: float = 3.0,
    seed: int = 0,
) -> FeatureSet:
    """A :class:`FeatureSet` of ``n`` Gaussian items whose genres depend linearly on a latent factor.

    Args:
        n: items.
        dim: feature dimension.
        prevalence: genre name -> share of positives (default: the poster set's 20 genres), or a
            list of shares (genres named ``g0``, ``g1``...).
        latent: dimension of the factor that drives the labels.
        noise: standard deviation of the feature noise added after the projection.
        signal: scale of the label logits; larger makes the task easier.
        seed: everything is drawn from ``numpy.random.default_rng(seed)``.
    """
    rng = np.random.default_rng(seed)
    if prevalence is None:
        prevalence = POSTER_PREVALENCE
    if isinstance(prevalence, dict):
        genres, shares = list(prevalence), np.array(list(prevalence.values()), dtype=np.float64)
    else:
        shares = np.asarray(prevalence, dtype=np.float64)
        genres = [f"g{j}" for j in range(len(shares))]
    Z = rng.standard_normal((n, latent))
    X = Z @ rng.standard_normal((latent, dim)) / np.sqrt(latent) + noise * rng.standard_normal((n, dim))
    logits = signal * Z @ rng.standard_normal((latent, len(genres))) / np.sqrt(latent)
    logits += rng.logistic(size=logits.shape)
    # Each genre's cut is its logit quantile, so the prevalence is exact whatever the signal.
    cuts = np.array([np.quantile(logits[:, j], 1.0 - s) for j, s in enumerate(shares)])
    Y = (logits > cuts[None, :]).astype(np.uint8)
    return FeatureSet(
        ids=np.array([f"s{i:06d}" for i in range(n)], dtype=object),
        X=X.astype(np.float32),
        Y=Y,
        genres=genres,
        titles=np.array([""] * n, dtype=object),
        years=np.full(n, -1, np.int32),
        split=None,
    )
