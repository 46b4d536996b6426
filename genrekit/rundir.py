"""The run directory: one home for what every trainer writes and every predictor reads.

Trainers (``genrekit heads``, fused runs, ``genrekit finetune``) write run directories; predictors
(``predict``, ``evaluate``, ``serve``, ``explain``, ``report``, ``leaderboard``) read them. Both go
through this module for the file names, for recognising a directory's kind, for its best head and
for its results, so no wing carries its own copy of the format.

Kinds (:attr:`RunDir.kind`):

- ``heads``: ``RUNS/`` of ``genrekit heads`` on one store: ``results.json`` with a ``heads``
  leaderboard, one directory per head;
- ``head``: one saved head, ``RUNS/<head>``: ``run.json``, or ``ensemble.json`` for the ensemble
  (whose members are its sibling directories). Every directory a ``heads`` run lists is one;
- ``fused``: ``RUNS/`` of ``genrekit heads --store A --store B``: ``results.json`` with ``fusion``;
  one ``heads`` run per store, ``early/`` (a ``heads`` run on the joined features) and
  ``late/<head>/`` (``late`` heads);
- ``late``: one late-fusion head, ``RUNS/late/<head>/fusion.json``;
- ``finetune``: ``FT/`` of ``genrekit finetune``: ``finetune.json``, the safetensors weights and a
  ``results.json`` whose ``kind`` is ``finetune``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from genrekit.errors import StoreError
from genrekit.evaluation.thresholds import Thresholds

RUN_FILE = "run.json"  # one saved head: what it is, its genres, thresholds and store header
ENSEMBLE_FILE = "ensemble.json"  # a saved ensemble: members (sibling heads) and weights
RESULTS_FILE = "results.json"  # a run's results: the leaderboard, the best head, the split
RESULTS_CSV = "results.csv"  # the leaderboard as a table
SPLIT_FILE = "split.csv"  # the split a run made (when the store had none)
PREDICTIONS_FILE = "predictions.npz"  # per-item validation and test probabilities of a head
LATE_FUSION_FILE = "fusion.json"  # one late-fusion head
FINETUNE_FILE = "finetune.json"  # a fine-tuned network's record

KINDS = ("heads", "head", "fused", "late", "finetune")
_RECOVER = "re-run the command that made the run to remake it"


def read_json(path: str | Path, recover: str = _RECOVER) -> dict:
    """The JSON object in a run file; a missing, unreadable or non-object file is refused in one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path} is missing: {recover}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise StoreError(f"{path}: not readable JSON ({first}); the run directory was edited or damaged: {recover}") from None
    if not isinstance(obj, dict):
        raise StoreError(f"{path}: holds a JSON {type(obj).__name__}, not an object; the run directory was edited or damaged: {recover}")
    return obj


def refuse_nonfinite(P, source: str | Path):
    """``P`` (a run's probabilities), refused in one line naming ``source`` (the weights file) when any
    is NaN or inf: a run whose weights were edited, damaged or overflow must never print ``nan`` as a
    probability (nor serve ``null``). Every predictor goes through it: saved heads (so fused runs and
    ensembles), fine-tuned networks, and :func:`genrekit.inference.predict_items`."""
    import numpy as np

    P = np.asarray(P)
    if P.size and P.dtype.kind in "fc":
        bad = ~np.isfinite(P).reshape(len(P), -1).all(axis=1) if P.ndim else ~np.isfinite(P)
        if bad.any():
            raise StoreError(
                f"{source}: the run's weights give non-finite probabilities (NaN or inf) for {int(bad.sum())} of {len(bad)} "
                "input(s); the file was edited or damaged, or its weights overflow: retrain the run"
            )
    return P


def _bad(path: Path, what: str) -> StoreError:
    return StoreError(f"{path}: {what}; the run directory was edited or damaged: {_RECOVER}")


def _number(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def save_part_predictions(directory: str | Path, ids: Mapping[str, object], Y: Mapping[str, object], P_val, P_test) -> Path:
    """``predictions.npz`` of a run: per-item validation and test probabilities and every part's labels.

    Plain arrays ``ids_<part>`` and ``Y_<part>`` for train, val and test, ``P_val`` and ``P_test``,
    columns in the run's genre order; ``genrekit report`` draws its curves and gallery from them.
    """
    import numpy as np

    from genrekit.atomic import atomic_open

    arrays = {}
    for part in ("train", "val", "test"):
        arrays[f"ids_{part}"] = np.asarray([str(i) for i in ids[part]])
        arrays[f"Y_{part}"] = np.asarray(Y[part], np.uint8)
    path = Path(directory) / PREDICTIONS_FILE
    with atomic_open(path, "wb") as fh:
        np.savez_compressed(fh, P_val=np.asarray(P_val, np.float32), P_test=np.asarray(P_test, np.float32), **arrays)
    return path


def load_part_predictions(directory: str | Path, n_genres: int | None = None) -> dict | None:
    """The arrays of a run's ``predictions.npz`` (see :func:`save_part_predictions`), checked like
    ``run.json``: ``None`` when there is none; a damaged or edited file is refused in one line
    naming the file and the array (missing, wrong shape, labels not 0/1, probabilities not finite
    or outside [0, 1])."""
    import numpy as np

    path = Path(directory) / PREDICTIONS_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # zip, npy header and pickle refusals all mean "not the file we wrote"
        raise _bad(path, f"not a readable npz file ({type(e).__name__}: {str(e)[:120]})") from None
    need = ["P_val", "P_test", *(f"{a}_{p}" for p in ("train", "val", "test") for a in ("ids", "Y"))]
    for k in need:
        if k not in arrays:
            raise _bad(path, f"the array {k!r} is missing")
    cols = n_genres if n_genres is not None else (arrays["P_test"].shape[1] if arrays["P_test"].ndim == 2 else -1)
    for part in ("train", "val", "test"):
        ids, Y = arrays[f"ids_{part}"], arrays[f"Y_{part}"]
        if ids.ndim != 1 or ids.dtype.kind not in "UO":
            raise _bad(path, f"the array 'ids_{part}' is not a list of ids")
        if Y.ndim != 2 or Y.shape != (len(ids), cols) or Y.dtype.kind not in "biu" or ((Y != 0) & (Y != 1)).any():
            raise _bad(path, f"the array 'Y_{part}' must be 0/1 labels of shape ({len(ids)}, {cols}); got {Y.dtype} {Y.shape}")
    for part in ("val", "test"):
        P = arrays[f"P_{part}"]
        if P.ndim != 2 or P.shape != arrays[f"Y_{part}"].shape or P.dtype.kind != "f":
            raise _bad(path, f"the array 'P_{part}' must be probabilities of shape {arrays[f'Y_{part}'].shape}; got {P.dtype} {P.shape}")
        if not np.isfinite(P).all() or (P < 0).any() or (P > 1).any():
            raise _bad(path, f"the array 'P_{part}' holds values that are not probabilities (NaN, inf, or outside [0, 1])")
    return arrays


# -- typed results -------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeadResult:
    """One row of a leaderboard (a head of a ``heads`` run, or a part's best in a fused run).

    Attributes:
        entry: the row's name (the head's directory, ``logreg`` or ``logreg-weights``).
        head: the head's registry name.
        balance: ``none``, ``weights``, ``oversample`` or ``-``.
        val_map: validation macro AP (what runs are ranked by).
        test: test metrics at the tuned thresholds.
        test_at_05: test metrics at 0.5.
        thresholds: the rule tuned on validation.
        per_genre: per-genre rows (with ``threshold`` and ``fallback`` where recorded).
        notes: what the scorecard or the search said (a hyper-parameter at the edge of its grid ...).
        fit_seconds: training time.
    """

    entry: str
    head: str
    balance: str
    val_map: float | None
    test: Mapping[str, float | None]
    test_at_05: Mapping[str, float | None]
    thresholds: Thresholds | None
    per_genre: list[dict] = field(default_factory=list)
    notes: tuple[str, ...] = ()
    fit_seconds: float | None = None

    @property
    def threshold_fallback(self) -> tuple[str, ...]:
        """Genres whose threshold fell back to the global one (too few validation positives)."""
        return self.thresholds.fallback if self.thresholds is not None else ()

    @classmethod
    def from_json(cls, entry: str, d: Mapping, path: Path) -> HeadResult:
        if not isinstance(d, Mapping):
            raise _bad(path, f"the leaderboard entry {entry!r} is not an object")

        def obj(v, name: str) -> Mapping:
            if v is None:
                return {}
            if not isinstance(v, Mapping):
                raise _bad(path, f"the field '{entry}.{name}' is a {type(v).__name__}, expected an object")
            return v

        test = obj(d.get("test"), "test")
        tuned, at05 = (test.get("tuned"), test.get("at_0.5")) if "tuned" in test else (test, d.get("test_at_0.5"))
        tuned, at05 = obj(tuned, "test.tuned"), obj(at05, "test.at_0.5")
        val = obj(d.get("val"), "val")
        per_genre = d.get("per_genre") or []
        if not isinstance(per_genre, list) or not all(isinstance(r, Mapping) and isinstance(r.get("genre"), str) for r in per_genre):
            raise _bad(path, f"the field '{entry}.per_genre' must be a list of objects with a 'genre'")
        notes = d.get("notes") or ()
        if not isinstance(notes, (list, tuple)):
            raise _bad(path, f"the field '{entry}.notes' is a {type(notes).__name__}, expected a list")
        val_map = _number(val.get("map_macro") if isinstance(val, Mapping) else None) if "val_map_macro" not in d else _number(d["val_map_macro"])
        th = None
        if isinstance(d.get("thresholds"), Mapping):
            try:
                th = Thresholds.from_json(d["thresholds"])
            except (KeyError, TypeError, ValueError) as e:
                raise _bad(path, f"the thresholds of {entry!r} are malformed ({e})") from None
        return cls(
            entry=entry,
            head=str(d.get("head", entry)),
            balance=str(d.get("balance", "-")),
            val_map=val_map,
            test={k: _number(v) for k, v in (tuned or {}).items()},
            test_at_05={k: _number(v) for k, v in (at05 or {}).items()},
            thresholds=th,
            per_genre=list(per_genre),
            notes=tuple(str(n) for n in notes),
            fit_seconds=_number(d.get("fit_seconds")),
        )


@dataclass(frozen=True)
class Results:
    """A run's ``results.json`` as typed fields (``raw`` keeps the whole record for the report).

    Attributes:
        kind: ``heads``, ``fused`` or ``finetune``.
        best: the entry predict uses (a head name; ``part/entry`` for a fused run).
        genres: the genres the run scores.
        heads: the leaderboard rows, in the run's order (a fused run: each part's best head).
        raw: the JSON record as written.
    """

    kind: str
    best: str | None
    genres: list[str]
    heads: dict[str, HeadResult]
    raw: dict

    @classmethod
    def read(cls, run: str | Path) -> Results:
        path = Path(run) / RESULTS_FILE
        rec = read_json(path)
        kind = results_kind(rec, path)
        if kind == "fused":
            best = rec.get("best")
            best_name = f"{best['part']}/{best['entry']}" if isinstance(best, Mapping) and {"part", "entry"} <= set(best) else None
            late = rec.get("late") or {}
            if not isinstance(late, Mapping) or not isinstance(late.get("heads") or {}, Mapping):
                raise _bad(path, "the field 'late' is not an object with 'heads'")
            heads = {f"late/{n}": HeadResult.from_json(f"late/{n}", e, path) for n, e in (late.get("heads") or {}).items()}
            genres = list((rec.get("same_items") or {}).get("genres") or late.get("genres") or [])
            return cls(kind, best_name, genres, heads, rec)
        if kind == "finetune":
            final = rec.get("final") or {}
            if not isinstance(final, Mapping):
                raise _bad(path, f"the field 'final' is a {type(final).__name__}, expected an object")
            row = HeadResult.from_json(str(rec.get("best") or "finetune"), {**final, "head": "finetune"}, path)
            genres = rec.get("genres") or []
            if not isinstance(genres, list) or not all(isinstance(g, str) for g in genres):
                raise _bad(path, "the field 'genres' must be a list of genre names")
            return cls(kind, row.entry, list(genres), {row.entry: row}, rec)
        heads = rec.get("heads")
        if not isinstance(heads, Mapping):
            raise _bad(path, "the field 'heads' is not an object")
        best = rec.get("best")
        if best is not None and (not isinstance(best, str) or Path(best).name != best or best in (".", "..")):
            raise _bad(path, f"the field 'best' is {best!r}, not the name of a head directory")
        genres = rec.get("genres", [])
        if not isinstance(genres, list) or not all(isinstance(g, str) for g in genres):
            raise _bad(path, "the field 'genres' must be a list of genre names")
        return cls(kind, best, list(genres), {n: HeadResult.from_json(n, e, path) for n, e in heads.items()}, rec)


def leaderboard_rows(run: str | Path) -> tuple[Results, list[HeadResult]]:
    """Every scored entry of a run, in the run's order: what ``genrekit leaderboard`` prints.

    A ``heads`` run: its heads, then the scikit-learn-defaults baseline (scored at 0.5). A fused
    run: each store's heads (``<store>/<head>``), the early-fusion heads (``early/<head>``) and the
    late-fusion ones (``late/<head>``). A fine-tune run: the final network.
    """
    results = open_run(run).results()  # a head directory or a stray folder is named as such
    path = Path(run) / RESULTS_FILE
    raw = results.raw
    if results.kind == "heads":
        rows = list(results.heads.values())
        base = raw.get("baseline")
        if isinstance(base, Mapping):
            at05 = {k: _number(v) for k, v in ((base.get("test") or {}).get("at_0.5") or {}).items()}
            val = base.get("val") or {}
            rows.append(HeadResult("baseline", "baseline", "-", _number(val.get("map_macro")), at05, at05, None,
                                   notes=("one-vs-rest LogisticRegression, scikit-learn defaults, at 0.5",), fit_seconds=_number(base.get("fit_seconds"))))  # fmt: skip
        return results, rows
    if results.kind == "fused":
        rows = []
        parts = [(f"{store}/", rec) for store, rec in (raw.get("single") or {}).items()] + [("early/", raw.get("early")), ("late/", raw.get("late"))]
        for prefix, rec in parts:
            for name, entry in ((rec or {}).get("heads") or {}).items():
                rows.append(HeadResult.from_json(prefix + name, entry, path))
        return results, rows
    return results, list(results.heads.values())


def results_kind(rec: Mapping, path: Path | str = RESULTS_FILE) -> str:
    """``heads``, ``fused`` or ``finetune``: what a results.json record is."""
    if rec.get("kind") == "finetune":
        return "finetune"
    if isinstance(rec.get("fusion"), Mapping):
        return "fused"
    if "heads" in rec:
        return "heads"
    raise _bad(Path(path), "it is neither a heads, a fused nor a fine-tune run's results (no 'heads', 'fusion' or 'kind')")


# -- the directory -------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunDir:
    """A run directory and its kind (:data:`KINDS`); :func:`open_run` makes one."""

    path: Path
    kind: str

    def results(self) -> Results:
        """The typed ``results.json`` (``heads``, ``fused`` and ``finetune`` runs have one)."""
        if self.kind not in ("heads", "fused", "finetune"):
            raise StoreError(f"{self.path} is one {self.kind} head, not a whole run: its results are in {self.path.parent / RESULTS_FILE}")
        return Results.read(self.path)

    def best(self) -> RunDir:
        """The directory ``predict`` uses: the run's best head, or the run itself when it is one."""
        if self.kind == "heads":
            name = self.results().best
            if not name:
                raise StoreError(f"{self.path / RESULTS_FILE} names no best head; pass RUNS/<head>")
            return open_run(self.path / name)
        if self.kind == "fused":
            best = self.results().best
            if not best:
                raise StoreError(f"{self.path}: this fused run names no best fused head; pass RUNS/early/<head> or RUNS/late/<head>")
            return open_run(self.path / best)
        return self

    @property
    def fused_part(self) -> tuple[Path, str, str] | None:
        """(fused run root, part, entry) for a head inside a fused run (``early/<head>``, ``late/<head>``), else None."""
        if self.kind == "late":
            return self.path.parent.parent, "late", self.path.name
        if self.kind == "head" and self.path.parent.name == "early" and (self.path.parent.parent / RESULTS_FILE).is_file():
            root = self.path.parent.parent
            try:
                if results_kind(read_json(root / RESULTS_FILE), root / RESULTS_FILE) == "fused":
                    return root, "early", self.path.name
            except StoreError:
                return None
        return None


def open_run(path: str | Path) -> RunDir:
    """Recognise a run directory.

    Example:
        >>> run = open_run("runs/")  # doctest: +SKIP
        >>> run.kind, run.results().best, run.best().path
        ('heads', 'ensemble', PosixPath('runs/ensemble'))
    """
    p = Path(path)
    if not p.is_dir():
        what = "is a file, not a directory" if p.exists() else "does not exist"
        raise StoreError(f"run directory {str(p)!r} {what} (make one with `genrekit heads`)")
    if (p / FINETUNE_FILE).is_file():
        return RunDir(p, "finetune")
    if (p / LATE_FUSION_FILE).is_file():
        return RunDir(p, "late")
    if (p / RUN_FILE).is_file() or (p / ENSEMBLE_FILE).is_file():
        return RunDir(p, "head")
    if (p / RESULTS_FILE).is_file():
        return RunDir(p, results_kind(read_json(p / RESULTS_FILE), p / RESULTS_FILE))
    raise StoreError(f"{p} is not a run directory: expected {RESULTS_FILE}, {RUN_FILE} or {ENSEMBLE_FILE} in it (make one with `genrekit heads`)")
