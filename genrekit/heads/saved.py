"""Saving and loading heads without running code from the file, and using a saved run.

A run directory ``RUNS/<head>/`` holds::

    run.json           head name and parameters, the store header of the features it was trained
                       on, genres (column order), the threshold rule, metrics, fitted metadata
    scaler.npz         the StandardScaler's mean and scale (heads trained on standardised features)
    model.skops        scikit-learn heads, loaded with skops and an explicit list of trusted types
    model.safetensors  torch heads (weights only; the architecture comes from run.json)
    model.npz          knn and zeroshot (plain arrays, loaded with allow_pickle=False)

Nothing in a run directory is unpickled, so a downloaded run cannot execute code on load.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from genrekit import __version__
from genrekit.atomic import atomic_open, atomic_write, atomic_write_json
from genrekit.errors import LabelError, StoreError, StoreMismatchError, UnknownNameError, UntrustedFileError
from genrekit.evaluation.thresholds import RULES, Thresholds
from genrekit.heads.registry import get_head_spec
from genrekit.rundir import ENSEMBLE_FILE, RESULTS_FILE, RUN_FILE, open_run, read_json, refuse_nonfinite
from genrekit.store import StoreHeader

log = logging.getLogger(__name__)

RUN_FORMAT = 1
# Header fields that must match for a head to accept features: the genres may differ (they are
# aligned by name) and so may the storage dtype (float16 and float32 stores hold the same features).
_FEATURE_FIELDS = ("encoder", "preprocessing", "normalisation", "modality")

# scikit-learn's array-API adapter for torch, which imports torch: skops lists scikit-learn's
# estimators when it is first imported, and that walk imports every package under sklearn.
_TORCH_ADAPTER = "sklearn.externals.array_api_compat.torch"


def skops_io():
    """``skops.io``, imported without torch: its first import walks every scikit-learn package, and
    one of them (the array-API adapter for torch, which no head uses) imports torch, 2 s of a
    process that may never need it (the heads runner's). The walk skips a package that cannot be
    imported, so that one is held off while skops lists the estimators (the same 208 on
    scikit-learn 1.9), and importable again after.
    """
    import sys

    if "skops.io" in sys.modules or "torch" in sys.modules or _TORCH_ADAPTER in sys.modules:
        import skops.io

        return skops.io
    # For the import's length (0.5 s, once a process), another thread importing the adapter would
    # fail; only scikit-learn's array-API dispatch with torch arrays imports it, and never caches
    # the failure.
    sys.modules[_TORCH_ADAPTER] = None  # type: ignore[assignment]
    try:
        import skops.io
    finally:
        sys.modules.pop(_TORCH_ADAPTER, None)
    return skops.io


def _json_params(params: Mapping) -> dict:
    """Constructor parameters that are plain values (arrays such as prompt embeddings are state)."""
    out = {}
    for k, v in params.items():
        if isinstance(v, np.ndarray):
            continue
        out[k] = list(v) if isinstance(v, tuple) else v
    return json.loads(json.dumps(out))


def write_json(path: Path, obj: Mapping) -> None:
    """Write JSON atomically (numpy scalars and arrays allowed)."""
    atomic_write_json(path, obj, default=_json_default)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON-serialisable")


@dataclass
class SavedHead:
    """A fitted head with everything needed to use it on new features.

    Attributes:
        name: registry name of the head.
        model: the fitted head, or a Pipeline (StandardScaler, head).
        genres: the genre of each output column.
        thresholds: the decision rule tuned on validation.
        header: the store header of the training features (``None`` for features without one,
            such as a fused set built in memory).
        info: everything else recorded in run.json (params, metrics, balance, ...).
    """

    name: str
    model: object
    genres: list[str]
    thresholds: Thresholds
    header: StoreHeader | None = None
    info: dict = field(default_factory=dict)
    source: str | None = None  # the weights file it was loaded from, named when its outputs are not finite

    @property
    def head(self):
        return self.model[-1] if isinstance(self.model, Pipeline) else self.model

    # -- saving -------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write the run directory (see the module docstring); returns its path."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        spec = get_head_spec(self.name)
        head, meta = self.head, {}
        if isinstance(self.model, Pipeline):
            sc = self.model[0]
            with atomic_open(d / "scaler.npz", "wb", encoding=None) as fh:
                np.savez(fh, mean=sc.mean_, scale=sc.scale_, var=sc.var_, n_samples_seen=np.asarray(sc.n_samples_seen_))
        # The entry's save format decides; skops files load back with the entry's trusted types only.
        if spec.persist == "skops":
            atomic_write(d / "model.skops", skops_io().dumps(head))
        else:
            meta, arrays = head.get_state()
            if spec.persist == "safetensors":
                from safetensors.numpy import save

                atomic_write(d / "model.safetensors", save({k: np.ascontiguousarray(v) for k, v in arrays.items()}))
            else:
                with atomic_open(d / "model.npz", "wb", encoding=None) as fh:
                    np.savez(fh, **arrays)
        record = {
            **self.info,
            "format": RUN_FORMAT,
            "head": self.name,
            "params": _json_params(head.get_params(deep=False)),
            "state": meta,
            "standardised": isinstance(self.model, Pipeline),
            "genres": list(self.genres),
            "thresholds": self.thresholds.to_json(),
            "store_header": self.header.to_json() if self.header is not None else None,
            "genrekit_version": __version__,
            "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_json(d / RUN_FILE, record)
        return d

    # -- using ----------------------------------------------------------------------------------
    def check_features(self, header: StoreHeader | None, source: str = "these features") -> None:
        """Refuse features made by another encoder, weights, preprocessing or normalisation."""
        if self.header is None or header is None:
            return
        for f, a, b in self.header.diff(header):
            if f == "encoder.precision":
                raise StoreMismatchError(
                    f"the {self.name} head was trained on features made with --precision {a}, but {source} were made "
                    f"with --precision {b}; extract them with --precision {a}"
                )
            if f.split(".")[0] in _FEATURE_FIELDS:
                raise StoreMismatchError(
                    f"the {self.name} head was trained on features with {f}={a!r}, but {source} have {f}={b!r}; "
                    "extract them with the run's backbone, weights and preprocessing"
                )

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(n, len(genres)) probabilities; NaN or inf is refused (:func:`~genrekit.rundir.refuse_nonfinite`)."""
        P = np.asarray(self.model.predict_proba(np.asarray(X, dtype=np.float32)), dtype=np.float32)
        return refuse_nonfinite(P, self.source or f"the {self.name} head")

    def align(self, genres: Sequence[str]) -> tuple[list[int], list[int]]:
        """Columns shared by name: (indices into this head's genres, indices into ``genres``).

        Raises :class:`LabelError` when no genre is shared.
        """
        where = {g: j for j, g in enumerate(genres)}
        mine = [i for i, g in enumerate(self.genres) if g in where]
        if not mine:
            raise LabelError(
                f"none of the head's {len(self.genres)} genres ({', '.join(self.genres[:5])}...) appears among the "
                f"{len(genres)} genres of these labels ({', '.join(list(genres)[:5])}...); genres are matched by exact name"
            )
        return mine, [where[self.genres[i]] for i in mine]


# -- loading: a run directory is user-editable input, so every field is checked before use -----
_RECOVER = "re-run `genrekit heads` to remake it"


def _bad(path: Path, what: str) -> StoreError:
    return StoreError(f"{path}: {what}; the run directory was edited or damaged: {_RECOVER}")


def _read_json(path: Path) -> dict:
    return read_json(path, _RECOVER)


def _field(rec: Mapping, key: str, types: type | tuple[type, ...], path: Path, optional: bool = False):
    if key not in rec:
        if optional:
            return None
        raise _bad(path, f"the field {key!r} is missing")
    v = rec[key]
    if (v is None and optional) or isinstance(v, types):
        return v
    want = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
    raise _bad(path, f"the field {key!r} is a {type(v).__name__}, expected {want}")


def _check_finite(arrays: Mapping[str, np.ndarray], path: Path) -> None:
    for k, v in arrays.items():
        v = np.asarray(v)
        if v.dtype.kind in "fc" and not np.isfinite(v).all():
            raise _bad(path, f"the field {k!r} holds non-finite values (NaN or inf)")


def _fitted_arrays(obj, prefix: str = "", depth: int = 0):
    """(dotted name, float array) of every fitted array inside a loaded estimator, for the finite check.

    scikit-learn keeps fitted state in attributes ending in ``_`` (lists of sub-estimators
    included); a fitted tree keeps its split thresholds and leaf values in a compiled ``Tree``.
    """
    if depth > 6:
        return
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind == "f":
            yield prefix, obj
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _fitted_arrays(v, f"{prefix}[{i}]", depth + 1)
    elif type(obj).__name__ == "Tree":
        for k in ("threshold", "value"):
            yield f"{prefix}.{k}", np.asarray(getattr(obj, k))
    elif hasattr(obj, "__dict__") and hasattr(obj, "get_params"):
        for k, v in vars(obj).items():
            if k.endswith("_") or k == "estimator":
                yield from _fitted_arrays(v, f"{prefix}.{k}" if prefix else k, depth + 1)


def _load_scaler(path: Path) -> StandardScaler:
    if not path.is_file():
        raise StoreError(f"{path} is missing (run.json says the head was trained on standardised features): {_RECOVER}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in ("mean", "scale", "var", "n_samples_seen")}
    except KeyError as e:
        raise _bad(path, f"the array {e} is missing") from None
    except Exception as e:  # zip, npy header and pickle refusals all mean "not the file we wrote"
        raise _bad(path, f"not a readable npz file ({type(e).__name__}: {str(e)[:120]})") from None
    _check_finite(arrays, path)
    mean, scale = arrays["mean"], arrays["scale"]
    if mean.ndim != 1 or scale.shape != mean.shape or arrays["var"].shape != mean.shape or mean.dtype.kind != "f":
        raise _bad(path, f"mean, scale and var must be float vectors of one length; got shapes {mean.shape}, {scale.shape}, {arrays['var'].shape}")
    if (scale <= 0).any():
        raise _bad(path, "the field 'scale' holds values <= 0")
    sc = StandardScaler()
    sc.mean_, sc.scale_, sc.var_ = mean, scale, arrays["var"]
    n = arrays["n_samples_seen"]
    sc.n_samples_seen_ = n.item() if n.ndim == 0 else n
    sc.n_features_in_ = len(mean)
    return sc


def _load_skops(path: Path, spec):
    sio = skops_io()

    if not path.is_file():
        raise StoreError(f"{path} is missing: {_RECOVER}")
    try:
        found = sio.get_untrusted_types(file=path)
    except Exception as e:  # a truncated or foreign zip, bad JSON schema inside ...
        raise _bad(path, f"not a readable skops file ({type(e).__name__}: {str(e)[:120]})") from None
    bad = sorted(set(found) - spec.skops_types())
    if bad:
        raise UntrustedFileError(
            f"{path} contains types genrekit does not load for a {spec.name} head ({', '.join(bad[:5])}); "
            "it was not written by this genrekit, or was altered: retrain the head"
        )
    try:
        head = sio.load(path, trusted=found)
    except Exception as e:
        raise _bad(path, f"not a readable skops file ({type(e).__name__}: {str(e)[:120]})") from None
    for name, arr in _fitted_arrays(head):
        if not np.isfinite(arr).all():
            raise _bad(path, f"the field {name!r} holds non-finite values (NaN or inf)")
    return head


def _load_arrays(path: Path, fmt: str) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise StoreError(f"{path} is missing: {_RECOVER}")
    try:
        if fmt == "safetensors":
            from safetensors.numpy import load_file

            arrays = load_file(str(path))
        else:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
    except Exception as e:  # truncation, a foreign file, pickled objects: all refused alike
        raise _bad(path, f"not a readable {fmt} file ({type(e).__name__}: {str(e)[:120]})") from None
    _check_finite(arrays, path)
    return arrays


def _restore(spec, rec: dict, rj: Path, arrays: dict[str, np.ndarray], path: Path):
    params = _field(rec, "params", dict, rj)
    state = _field(rec, "state", dict, rj)
    try:
        head = spec.factory(**params)
    except TypeError as e:
        raise _bad(rj, f"the field 'params' does not fit the {spec.name} head ({e})") from None
    try:
        return head.set_state(state, arrays)
    except KeyError as e:
        raise _bad(path, f"the field {e} is missing") from None
    except (TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
        raise _bad(path, f"its arrays do not fit the {spec.name} head described in run.json ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None


def _best_head_dir(d: Path) -> Path:
    run = open_run(d)
    if run.kind == "fused":
        raise StoreError(f"{d} is a fused run (several stores); load it with genrekit.inference.load_run, or pass RUNS/<store>/<head>")
    return run.best().path


def load_head(directory: str | Path) -> SavedHead:
    """Load a run directory written by :meth:`SavedHead.save` (``genrekit heads`` writes them).

    ``directory`` is one head's directory (``RUNS/logreg``), or a whole ``RUNS/`` directory, which
    means the best head of that run (``results.json``'s ``best``). Anything edited by hand, truncated
    or not written by genrekit is refused in one line (:class:`StoreError`, or
    :class:`UntrustedFileError` for types genrekit does not load), naming the file and field.

    Example:
        >>> saved = load_head("runs/logreg")  # doctest: +SKIP
        >>> saved.check_features(FeatureStore("other.h5").header)
        >>> P = saved.predict_proba(X)
    """
    d = Path(directory)
    if not (d / RUN_FILE).is_file() and (d / RESULTS_FILE).is_file():
        d = _best_head_dir(d)  # a whole runs directory: the head `genrekit heads` chose
    from genrekit.heads.ensemble import load_ensemble  # the ensemble loads its members with load_head

    if (d / ENSEMBLE_FILE).is_file():
        return load_ensemble(d)
    rj = d / RUN_FILE
    if not rj.is_file():
        raise StoreError(f"{d} is not a saved head: no run.json (expected a directory such as RUNS/logreg)")
    rec = _read_json(rj)
    fmt = _field(rec, "format", int, rj, optional=True) or 0
    if fmt > RUN_FORMAT:
        raise StoreError(f"{d} was saved in run format {fmt}; this genrekit reads up to {RUN_FORMAT}")
    name = _field(rec, "head", str, rj)
    try:
        spec = get_head_spec(name)
    except UnknownNameError as e:
        raise StoreError(f"{rj}: {e}") from None
    genres = _field(rec, "genres", list, rj)
    if not genres or not all(isinstance(g, str) for g in genres) or len(set(genres)) != len(genres):
        raise _bad(rj, "the field 'genres' must be a non-empty list of distinct genre names")
    thresholds = _thresholds(_field(rec, "thresholds", dict, rj), len(genres), rj)
    standardised = _field(rec, "standardised", bool, rj, optional=True)
    header_json = _field(rec, "store_header", dict, rj, optional=True)
    for key in ("fusion", "config"):
        _field(rec, key, dict, rj, optional=True)

    path = d / f"model.{spec.persist}"
    if spec.persist == "skops":
        head = _load_skops(path, spec)
    else:
        head = _restore(spec, rec, rj, _load_arrays(path, spec.persist), path)
    n_genres = getattr(head, "n_genres_", None)
    if n_genres != len(genres):
        raise _bad(rj, f"the head predicts {n_genres} genres but the field 'genres' names {len(genres)}")
    model = head
    if standardised:
        scaler = _load_scaler(d / "scaler.npz")
        if scaler.n_features_in_ != getattr(head, "n_features_in_", None):
            raise _bad(d / "scaler.npz", f"it scales {scaler.n_features_in_} features but the head takes {getattr(head, 'n_features_in_', None)}")
        model = Pipeline([("scale", scaler), ("head", head)])
    try:
        header = StoreHeader.from_json(header_json) if header_json else None
    except (TypeError, KeyError, ValueError) as e:
        raise _bad(rj, f"the field 'store_header' is not a store header ({type(e).__name__}: {e})") from None
    info = {k: v for k, v in rec.items() if k not in ("head", "genres", "thresholds", "store_header", "state")}
    return SavedHead(name, model, list(genres), thresholds, header, info, source=str(path))


def _thresholds(d: dict, n_genres: int, path: Path) -> Thresholds:
    try:
        th = Thresholds.from_json(d)
    except KeyError as e:
        raise _bad(path, f"the field 'thresholds' lacks {e}") from None
    except (TypeError, ValueError) as e:
        raise _bad(path, f"the field 'thresholds' is malformed ({e})") from None
    if th.rule not in RULES:
        raise _bad(path, f"the threshold rule {th.rule!r} is not one of {', '.join(RULES)}")
    if len(th.values) != n_genres:
        raise _bad(path, f"the field 'thresholds' has {len(th.values)} values for {n_genres} genres")
    if not np.isfinite(th.values).all():
        raise _bad(path, "the field 'thresholds.values' holds non-finite values (NaN or inf)")
    if th.rule == "top-k" and not 1 <= th.k <= n_genres:
        raise _bad(path, f"the field 'thresholds.k' is {th.k}, expected 1..{n_genres}")
    return th
