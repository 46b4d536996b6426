"""Turning genre probabilities into genre sets: decision rules tuned on the validation split.

Rules (the ``--threshold`` flag):

- ``0.5``: every genre at 0.5 (what the research did; the untuned reference).
- ``global``: one threshold for all genres, the one that maximises micro F1 on validation.
- ``per-genre``: each genre its own F1-maximising threshold; a genre with fewer than
  ``min_positives`` validation positives falls back to the global threshold (too few positives
  give a threshold fitted to noise), and is named in :attr:`Thresholds.fallback`.
- ``top-k``: each item gets its k most probable genres, k chosen on validation by micro F1.
- ``at-least-one``: per-genre thresholds, and an item with no genre above its threshold still
  gets its most probable one (every film has a genre).

Thresholds are tuned on validation and applied to test, never tuned on test.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from genrekit.errors import LabelError, UnknownNameError

RULES: tuple[str, ...] = ("0.5", "global", "per-genre", "top-k", "at-least-one")


@dataclass(frozen=True)
class Thresholds:
    """A fitted decision rule; JSON-serialisable and saved with every head.

    Attributes:
        rule: one of :data:`RULES`.
        values: one threshold per genre (unused by ``top-k``).
        k: genres per item for ``top-k``; 0 otherwise.
        fallback: genres that use the global threshold for lack of validation positives.
    """

    rule: str
    values: tuple[float, ...]
    k: int = 0
    fallback: tuple[str, ...] = ()

    def apply(self, P: np.ndarray) -> np.ndarray:
        """0/1 predictions (uint8) for probabilities ``P`` of shape (n, G)."""
        P = np.asarray(P)
        if P.ndim != 2 or P.shape[1] != len(self.values):
            raise LabelError(f"probabilities have shape {P.shape}; these thresholds are for {len(self.values)} genres")
        if self.rule == "top-k":
            return top_k(P, self.k)
        Y = (P >= np.asarray(self.values)[None, :]).astype(np.uint8)
        if self.rule == "at-least-one" and len(P):
            empty = Y.sum(axis=1) == 0
            Y[np.flatnonzero(empty), P[empty].argmax(axis=1)] = 1
        return Y

    def to_json(self) -> dict:
        return {"rule": self.rule, "values": [float(v) for v in self.values], "k": self.k, "fallback": list(self.fallback)}

    @classmethod
    def from_json(cls, d: Mapping) -> Thresholds:
        return cls(rule=str(d["rule"]), values=tuple(float(v) for v in d["values"]), k=int(d.get("k", 0)), fallback=tuple(d.get("fallback", ())))

    def subset(self, columns: Sequence[int]) -> Thresholds:
        """The same rule restricted to some genres (used when aligning genres by name)."""
        return Thresholds(self.rule, tuple(self.values[j] for j in columns), self.k, self.fallback)


def fixed(n_genres: int, value: float = 0.5) -> Thresholds:
    """The untuned rule: every genre at ``value``."""
    return Thresholds("0.5" if value == 0.5 else "global", (float(value),) * n_genres)


def top_k(P: np.ndarray, k: int) -> np.ndarray:
    """Mark each row's ``k`` highest scores (ties broken by column order)."""
    Y = np.zeros(P.shape, np.uint8)
    k = max(0, min(k, P.shape[1]))
    if k and len(P):
        idx = np.argsort(-P, axis=1, kind="stable")[:, :k]
        np.put_along_axis(Y, idx, 1, axis=1)
    return Y


def best_f1_threshold(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """The threshold on ``s`` that maximises F1 of ``s >= t`` against ``y``, and that F1.

    Exact: every cut between two distinct scores is tried in one sort plus cumulative sums. The
    threshold returned is the midpoint between the last score kept and the next one, so that it
    generalises no worse to either side. With no positives it returns (1.0, 0.0).
    """
    y = np.asarray(y).ravel() > 0
    s = np.asarray(s, dtype=np.float64).ravel()
    n_pos = int(y.sum())
    if n_pos == 0 or len(s) == 0:
        return 1.0, 0.0
    order = np.argsort(-s, kind="stable")
    ss, ys = s[order], y[order]
    tp = np.cumsum(ys)
    n_kept = np.arange(1, len(ss) + 1)
    f1 = 2.0 * tp / (n_kept + n_pos)
    last_of_run = np.r_[ss[1:] != ss[:-1], True]  # a cut must not split equal scores
    f1 = np.where(last_of_run, f1, -1.0)
    i = int(np.argmax(f1))
    t = ss[i] if i + 1 == len(ss) else (ss[i] + ss[i + 1]) / 2.0
    return float(t), float(f1[i])


def _micro_f1(Y: np.ndarray, Yp: np.ndarray) -> float:
    tp = float((Y & Yp).sum())
    denom = float(Y.sum() + Yp.sum())
    return 2.0 * tp / denom if denom else 0.0


def tune_thresholds(
    Y_val: np.ndarray,
    P_val: np.ndarray,
    rule: str = "per-genre",
    genres: Sequence[str] | None = None,
    min_positives: int = 3,
    max_k: int = 5,
) -> Thresholds:
    """Fit a decision rule on validation probabilities.

    Args:
        Y_val: (n, G) validation truth.
        P_val: (n, G) validation probabilities.
        rule: one of :data:`RULES`.
        genres: names for :attr:`Thresholds.fallback` (defaults to column numbers).
        min_positives: genres with fewer validation positives use the global threshold.
        max_k: the largest k tried by ``top-k``.

    Returns:
        The fitted :class:`Thresholds`.

    Example:
        >>> th = tune_thresholds(Y_val, P_val, "per-genre", genres)  # doctest: +SKIP
        >>> Y_test_pred = th.apply(P_test)
    """
    if rule not in RULES:
        raise UnknownNameError("threshold rule", rule, RULES)
    Y_val = (np.asarray(Y_val) > 0).astype(np.uint8)
    P_val = np.asarray(P_val, dtype=np.float64)
    if Y_val.shape != P_val.shape or Y_val.ndim != 2:
        raise LabelError(f"validation labels {Y_val.shape} and probabilities {P_val.shape} must have one shape (n, G)")
    G = Y_val.shape[1]
    names = list(genres) if genres is not None else [str(j) for j in range(G)]
    if rule == "0.5":
        return fixed(G)
    if rule == "top-k":
        scores = [_micro_f1(Y_val, top_k(P_val, k)) for k in range(1, max(1, min(max_k, G)) + 1)]
        return Thresholds("top-k", (0.5,) * G, k=int(np.argmax(scores)) + 1)
    t_global, _ = best_f1_threshold(Y_val, P_val)
    if rule == "global":
        return Thresholds("global", (t_global,) * G)
    values, fallback = [], []
    for j in range(G):
        if Y_val[:, j].sum() < min_positives:
            values.append(t_global)
            fallback.append(names[j])
        else:
            values.append(best_f1_threshold(Y_val[:, j], P_val[:, j])[0])
    return Thresholds(rule, tuple(values), fallback=tuple(fallback))
