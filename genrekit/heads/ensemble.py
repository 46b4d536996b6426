"""The ``ensemble`` head: greedy ensemble selection over a leaderboard's fitted heads.

Caruana, Niculescu-Mizil, Crew & Ksikes (2004), "Ensemble selection from libraries of models":
start from an empty bag; in each round add (with replacement) the member whose inclusion gives the
bag's mean validation probabilities the best score; keep the bag of the best round. Here the score
is validation macro mAP. The first round picks the best single member, so the ensemble never scores
below its best member on validation; ties go to the member listed first, so it is deterministic.
scikit-learn's VotingClassifier/StackingClassifier fit their members themselves and have no
selection-with-replacement, so the selection is hand-written (a dozen lines).

Saved as ``RUNS/ensemble/ensemble.json``: the member heads (sibling run directories, each saved
as usual) with their integer weights, the genres and the thresholds tuned on validation. Nothing
is pickled; loading loads each member with :func:`~genrekit.heads.saved.load_head`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from genrekit import __version__
from genrekit.errors import StoreError
from genrekit.evaluation.metrics import macro_average_precision
from genrekit.rundir import ENSEMBLE_FILE, read_json

ENSEMBLE = "ensemble"
DESCRIPTION = "greedy ensemble selection with replacement (Caruana et al. 2004) of the heads above, on validation mAP"


def greedy_selection(Y_val: np.ndarray, probas: Mapping[str, np.ndarray], rounds: int = 25) -> tuple[dict[str, int], float, list[float]]:
    """Members and their counts that maximise validation mAP of the mean probabilities.

    Args:
        Y_val: (n, G) validation labels.
        probas: member name -> (n, G) validation probabilities, in a fixed order (ties: first).
        rounds: bag size limit (members may repeat).

    Returns:
        (member -> count for the best bag, its validation mAP, the mAP after each round).

    Example:
        >>> weights, score, curve = greedy_selection(Y_val, {"logreg": P1, "knn": P2})  # doctest: +SKIP
    """
    if not probas:
        raise ValueError("ensemble selection needs at least one member")
    names = list(probas)
    total = np.zeros_like(np.asarray(probas[names[0]], np.float64))
    counts = dict.fromkeys(names, 0)
    best_counts, best_score, curve = None, -np.inf, []
    for r in range(1, rounds + 1):
        scores = [macro_average_precision(Y_val, (total + probas[n]) / r) for n in names]
        k = int(np.argmax(scores))  # first of the best: deterministic
        total += probas[names[k]]
        counts[names[k]] += 1
        curve.append(float(scores[k]))
        if scores[k] > best_score + 1e-12:
            best_score, best_counts = float(scores[k]), {n: c for n, c in counts.items() if c}
    return best_counts, best_score, curve


class EnsembleModel:
    """Weighted mean of member heads' probabilities (each member applies its own scaler).

    Attributes:
        members: name -> loaded :class:`~genrekit.heads.saved.SavedHead` (all on the same genres).
        weights: name -> integer count from the selection.
    """

    def __init__(self, members: Mapping[str, object], weights: Mapping[str, int]):
        self.members, self.weights = dict(members), {n: int(w) for n, w in weights.items()}

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        total = sum(self.weights.values())
        P = sum(w * self.members[n].predict_proba(X) for n, w in self.weights.items())
        return (P / total).astype(np.float32)


def save_ensemble(directory: str | Path, weights: Mapping[str, int], genres: Sequence[str], thresholds, header, info: Mapping) -> Path:
    """Write ``ensemble.json``: members are sibling directories of ``directory`` (``../<entry>``)."""
    from genrekit.heads.saved import write_json

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    write_json(d / ENSEMBLE_FILE, {
        **info,
        "head": ENSEMBLE,
        "members": {n: {"dir": f"../{n}", "weight": int(w)} for n, w in weights.items()},
        "genres": list(genres),
        "thresholds": thresholds.to_json(),
        "store_header": header.to_json() if header is not None else None,
        "genrekit_version": __version__,
        "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })  # fmt: skip
    return d


def load_ensemble(directory: str | Path):
    """The saved ensemble as a :class:`~genrekit.heads.saved.SavedHead` whose model is an :class:`EnsembleModel`."""
    from genrekit.heads.saved import SavedHead, _bad, _field, _thresholds, load_head
    from genrekit.store import StoreHeader

    d = Path(directory)
    ej = d / ENSEMBLE_FILE
    rec = read_json(ej)  # every field checked before use, like run.json: one line naming the file and field
    genres = _field(rec, "genres", list, ej)
    if not genres or not all(isinstance(g, str) for g in genres) or len(set(genres)) != len(genres):
        raise _bad(ej, "the field 'genres' must be a non-empty list of distinct genre names")
    thresholds = _thresholds(_field(rec, "thresholds", dict, ej), len(genres), ej)
    listed = _field(rec, "members", dict, ej)
    if not listed:
        raise _bad(ej, "the field 'members' is empty")
    members, weights = {}, {}
    for name, m in listed.items():
        if not isinstance(m, dict):
            raise _bad(ej, f"the field 'members.{name}' is a {type(m).__name__}, expected an object with dir and weight")
        where = _field(m, "dir", str, ej)
        w = _field(m, "weight", (int, float), ej)
        if isinstance(w, bool) or not np.isfinite(w) or w <= 0:
            raise _bad(ej, f"the field 'members.{name}.weight' is {w!r}, expected a positive number")
        member_dir = (d / where).resolve()
        if member_dir.parent != d.resolve().parent:
            raise StoreError(f"{ej}: member {name!r} points outside the run ({where}); retrain the ensemble")
        member = load_head(member_dir)
        if member.genres != genres:
            raise StoreError(f"{d}: member {name} has other genres than the ensemble; retrain the run")
        members[name], weights[name] = member, w
    header_json = _field(rec, "store_header", dict, ej, optional=True)
    try:
        header = StoreHeader.from_json(header_json) if header_json else None
    except (TypeError, KeyError, ValueError) as e:
        raise _bad(ej, f"the field 'store_header' is not a store header ({type(e).__name__}: {e})") from None
    info = {k: v for k, v in rec.items() if k not in ("head", "genres", "thresholds", "store_header")}
    return SavedHead(ENSEMBLE, EnsembleModel(members, weights), list(genres), thresholds, header, info, source=str(ej))
