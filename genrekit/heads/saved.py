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
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from genrekit import __version__
from genrekit.errors import LabelError, StoreError, StoreMismatchError, UntrustedFileError
from genrekit.evaluation.thresholds import Thresholds
from genrekit.heads.registry import get_head_spec
from genrekit.store import StoreHeader

log = logging.getLogger(__name__)

RUN_FORMAT = 1
# Header fields that must match for a head to accept features: the genres may differ (they are
# aligned by name) and so may the storage dtype (float16 and float32 stores hold the same features).
_FEATURE_FIELDS = ("encoder", "preprocessing", "normalisation", "modality")

# Everything a saved scikit-learn head may contain. skops refuses any other type on load.
TRUSTED_TYPES: tuple[str, ...] = (
    "genrekit.heads.sklearn_heads.ChainHead",
    "genrekit.heads.sklearn_heads.LogRegHead",
    "genrekit.heads.sklearn_heads.RandomForestHead",
    "genrekit.heads.sklearn_heads.SVCHead",
    "sklearn.calibration.CalibratedClassifierCV",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.ensemble._forest.RandomForestClassifier",
    "sklearn.kernel_approximation.Nystroem",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.multiclass.OneVsRestClassifier",
    "sklearn.multiclass._ConstantPredictor",
    "sklearn.multioutput.ClassifierChain",
    "sklearn.preprocessing._label.LabelBinarizer",
    "sklearn.svm._classes.LinearSVC",
    "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._tree.Tree",
    "builtins.slice",
    "numpy.dtype",
    "numpy.float64",
    "numpy.int64",
)


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
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default))
    os.replace(tmp, path)


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
            np.savez(d / "scaler.npz", mean=sc.mean_, scale=sc.scale_, var=sc.var_, n_samples_seen=np.asarray(sc.n_samples_seen_))
        if spec.persist == "skops":
            import skops.io as sio

            sio.dump(head, d / "model.skops")
        else:
            meta, arrays = head.get_state()
            if spec.persist == "safetensors":
                from safetensors.numpy import save_file

                save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(d / "model.safetensors"))
            else:
                np.savez(d / "model.npz", **arrays)
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
        write_json(d / "run.json", record)
        return d

    # -- using ----------------------------------------------------------------------------------
    def check_features(self, header: StoreHeader | None, source: str = "these features") -> None:
        """Refuse features made by another encoder, weights, preprocessing or normalisation."""
        if self.header is None or header is None:
            return
        for f, a, b in self.header.diff(header):
            if f.split(".")[0] in _FEATURE_FIELDS:
                raise StoreMismatchError(
                    f"the {self.name} head was trained on features with {f}={a!r}, but {source} have {f}={b!r}; "
                    "extract them with the run's backbone, weights and preprocessing"
                )

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(n, len(genres)) probabilities."""
        return np.asarray(self.model.predict_proba(np.asarray(X, dtype=np.float32)), dtype=np.float32)

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


def _load_scaler(path: Path) -> StandardScaler:
    with np.load(path, allow_pickle=False) as z:
        sc = StandardScaler()
        sc.mean_, sc.scale_, sc.var_ = z["mean"], z["scale"], z["var"]
        sc.n_samples_seen_ = z["n_samples_seen"].item() if z["n_samples_seen"].ndim == 0 else z["n_samples_seen"]
        sc.n_features_in_ = len(sc.mean_)
    return sc


def _load_skops(path: Path):
    import skops.io as sio

    found = sio.get_untrusted_types(file=path)
    bad = sorted(set(found) - set(TRUSTED_TYPES))
    if bad:
        raise UntrustedFileError(
            f"{path} contains types genrekit does not load ({', '.join(bad[:5])}); "
            "it was not written by this genrekit, or was altered: retrain the head"
        )
    return sio.load(path, trusted=found)


def load_head(directory: str | Path) -> SavedHead:
    """Load a run directory written by :meth:`SavedHead.save` (``genrekit heads`` writes them).

    ``directory`` is one head's directory (``RUNS/logreg``), or a whole ``RUNS/`` directory, which
    means the best head of that run (``results.json``'s ``best``).

    Example:
        >>> saved = load_head("runs/logreg")  # doctest: +SKIP
        >>> saved.check_features(FeatureStore("other.h5").header)
        >>> P = saved.predict_proba(X)
    """
    d = Path(directory)
    results = d / "results.json"
    if not (d / "run.json").is_file() and results.is_file():
        # A whole runs directory: use the head `genrekit heads` chose (best validation mAP).
        best = json.loads(results.read_text()).get("best")
        if isinstance(best, dict):
            raise StoreError(f"{d} is a fused run (several stores); load it with genrekit.inference.load_run, or pass RUNS/<store>/<head>")
        if not best:
            raise StoreError(f"{results} names no best head; pass RUNS/<head>")
        d = d / best
    from genrekit.heads.ensemble import ENSEMBLE_FILE, load_ensemble  # the ensemble loads its members with load_head

    if (d / ENSEMBLE_FILE).is_file():
        return load_ensemble(d)
    rj = d / "run.json"
    if not rj.is_file():
        raise StoreError(f"{d} is not a saved head: no run.json (expected a directory such as RUNS/logreg)")
    rec = json.loads(rj.read_text())
    if int(rec.get("format", 0)) > RUN_FORMAT:
        raise StoreError(f"{d} was saved in run format {rec.get('format')}; this genrekit reads up to {RUN_FORMAT}")
    spec = get_head_spec(rec["head"])
    if spec.persist == "skops":
        head = _load_skops(d / "model.skops")
    elif spec.persist == "safetensors":
        from safetensors.numpy import load_file

        head = spec.factory(**rec["params"]).set_state(rec["state"], load_file(str(d / "model.safetensors")))
    else:
        with np.load(d / "model.npz", allow_pickle=False) as z:
            head = spec.factory(**rec["params"]).set_state(rec["state"], {k: z[k] for k in z.files})
    model = Pipeline([("scale", _load_scaler(d / "scaler.npz")), ("head", head)]) if rec.get("standardised") else head
    header = StoreHeader.from_json(rec["store_header"]) if rec.get("store_header") else None
    info = {k: v for k, v in rec.items() if k not in ("head", "genres", "thresholds", "store_header", "state")}
    return SavedHead(rec["head"], model, list(rec["genres"]), Thresholds.from_json(rec["thresholds"]), header, info)
