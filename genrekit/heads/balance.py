"""Counter-measures for rare genres on cached features (the ``--balance`` flag).

- ``none``: train as is.
- ``weights``: heads that take class weights reweigh each genre's positives (``class_weight =
  "balanced"``; the registry says which heads take them).
- ``oversample``: multi-label random oversampling (ML-ROS, Charte et al. 2015) of the training
  rows: items carrying a minority genre are cloned until every genre's imbalance ratio is at most
  the mean ratio, or until a budget of added rows is spent. Cloning whole items, not single labels,
  keeps the co-occurrence of genres honest; on cached features a clone costs nothing to encode.
"""

from __future__ import annotations

import logging

import numpy as np

from genrekit.errors import UnknownNameError

log = logging.getLogger(__name__)

BALANCE_MODES: tuple[str, ...] = ("none", "weights", "oversample")


def check_balance(mode: str) -> str:
    """``mode`` if it is one of :data:`BALANCE_MODES`, else :class:`UnknownNameError`."""
    if mode not in BALANCE_MODES:
        raise UnknownNameError("balance mode", mode, BALANCE_MODES)
    return mode


def imbalance_ratios(Y: np.ndarray) -> np.ndarray:
    """IRLbl per genre: positives of the most frequent genre / positives of this genre (inf if none)."""
    counts = np.asarray(Y).sum(axis=0).astype(np.float64)
    with np.errstate(divide="ignore"):
        return counts.max() / counts


def oversample_indices(Y: np.ndarray, max_added: float = 0.5, seed: int = 0) -> np.ndarray:
    """Row indices of the oversampled training set: every original row, then the clones.

    Args:
        Y: (n, G) multi-hot training labels.
        max_added: the most rows added, as a fraction of n.
        seed: which items are cloned.

    Returns:
        int64 indices into ``Y`` (length n + number of clones).

    Example:
        >>> idx = oversample_indices(Y_train)  # doctest: +SKIP
        >>> X_bal, Y_bal = X_train[idx], Y_train[idx]
    """
    Y = np.asarray(Y) > 0
    rng = np.random.default_rng(seed)
    counts = Y.sum(axis=0).astype(np.int64)
    present = counts > 0
    if present.sum() < 2:
        return np.arange(len(Y))
    mean_ir = float(np.mean(counts.max() / counts[present]))
    holders = [np.flatnonzero(Y[:, j]) for j in range(Y.shape[1])]
    budget = int(max_added * len(Y))
    added: list[int] = []
    minority = [j for j in np.argsort(counts) if present[j] and counts.max() / counts[j] > mean_ir]
    # Rounds of one clone per minority genre, so the budget is shared instead of spent on the rarest.
    while minority and len(added) < budget:
        still = []
        for j in minority:
            if len(added) >= budget:
                break
            i = int(rng.choice(holders[j]))
            added.append(i)
            counts += Y[i]
            if counts.max() / counts[j] > mean_ir:
                still.append(j)
        minority = still
    log.info("oversampling added %d rows to %d (mean imbalance ratio %.1f)", len(added), len(Y), mean_ir)
    return np.concatenate([np.arange(len(Y)), np.asarray(added, dtype=np.int64)])
