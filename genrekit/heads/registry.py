"""The one table of heads: name -> :class:`HeadSpec`. Adding a head is one entry here.

Example:
    >>> from genrekit.heads import create_head, list_heads
    >>> list_heads()
    ['logreg', 'rf', 'svc', 'mlp', 'chain', 'softf1', 'zeroshot', 'knn']
    >>> head = create_head("logreg", Cs=(0.01,))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

from genrekit.errors import ConfigError, UnknownNameError
from genrekit.heads.base import MultiLabelHead
from genrekit.heads.knn import KNNHead
from genrekit.heads.sklearn_heads import ChainHead, LogRegHead, RandomForestHead, SVCHead
from genrekit.heads.torch_heads import TorchMLPHead
from genrekit.heads.zeroshot import ZeroShotHead


# What the leaderboard runner can hand a head, by name: a head's entry maps constructor parameters
# to these (``inputs={"order": "chain_order"}``), and the runner computes only what some head asks.
RUNNER_INPUTS: dict[str, str] = {
    "prompt_embeddings": "(G, D) genre prompt embeddings from the item encoder's text tower (skips the head without one)",
    "chain_order": "genre column indices in chain order (--chain-order, else text similarity, else frequency)",
    "knn_index": "the FAISS index spec of --knn-index",
}
SAVE_FORMATS: tuple[str, ...] = ("skops", "safetensors", "npz")
# Types any skops-saved head may hold besides its own (containers of sklearn's fitted state).
SKOPS_BASE_TYPES: tuple[str, ...] = ("builtins.slice", "numpy.dtype", "numpy.float64", "numpy.int64")
_OVR = ("sklearn.multiclass.OneVsRestClassifier", "sklearn.multiclass._ConstantPredictor", "sklearn.preprocessing._label.LabelBinarizer")


@dataclass(frozen=True)
class HeadSpec:
    """How to build, feed, schedule and save one head: everything the runner and the saver need.

    Attributes:
        name: registry name (the ``--head`` value and the run directory name).
        factory: called with keyword parameters, returns an unfitted head.
        description: one line for ``--help`` and the leaderboard.
        inputs: constructor parameter -> runner input (a key of :data:`RUNNER_INPUTS`) it receives.
        class_weights: takes ``class_weight="balanced"`` (``--balance weights``).
        standardise: train on standardised features (a StandardScaler fitted on train).
        persist: how the fitted head is saved (:data:`SAVE_FORMATS`): ``skops`` (the estimator,
            loaded with ``trusted_types`` only), ``safetensors`` or ``npz`` (arrays from the head's
            ``get_state()``, JSON metadata in run.json, restored by ``set_state``).
        trusted_types: for ``skops``: every type the saved head holds beyond
            :data:`SKOPS_BASE_TYPES`; skops refuses any other on load.
        threads_param: the parameter that sets its CPU threads, if it has its own.
        seed_param: the parameter that seeds it, if it is random.
        cost: fit seconds on the 6,000 x 3,312 six-stage poster store (benchmarks/README.md), so the
            longest heads start first, and a head made of parts is split when its cost is above
            one job's share.
        parts_param: for a head made of independent parts (a forest's trees), the parameter
            that counts them; the head then has ``fit_part(X, Y, part, parts)`` and
            ``join_parts(heads)``, and the runner grows its parts on several jobs at once when
            the whole head would set the run's length.
    """

    name: str
    factory: Callable[..., MultiLabelHead]
    description: str
    inputs: Mapping[str, str] = field(default_factory=dict)
    class_weights: bool = False
    standardise: bool = True
    persist: str = "skops"
    trusted_types: tuple[str, ...] = ()
    threads_param: str | None = None
    seed_param: str | None = "random_state"
    cost: float = 1.0
    parts_param: str | None = None

    def __post_init__(self) -> None:
        unknown = [v for v in self.inputs.values() if v not in RUNNER_INPUTS]
        if unknown:
            raise UnknownNameError("runner input", unknown[0], RUNNER_INPUTS, hint=f"(head {self.name!r})")
        if self.persist not in SAVE_FORMATS:
            raise UnknownNameError("save format", self.persist, SAVE_FORMATS, hint=f"(head {self.name!r})")
        if self.persist == "skops" and not self.trusted_types:
            raise ConfigError(f"head {self.name!r} is saved with skops but lists no trusted_types; name the types its fitted model holds")

    @property
    def needs_text(self) -> bool:
        """Needs prompt embeddings from the item encoder's text tower."""
        return "prompt_embeddings" in self.inputs.values()

    def skops_types(self) -> frozenset[str]:
        """Every type a skops file of this head may hold."""
        return frozenset(SKOPS_BASE_TYPES) | frozenset(self.trusted_types)


_LOGREG = ("sklearn.linear_model._logistic.LogisticRegression",)
HEADS: dict[str, HeadSpec] = {
    s.name: s
    for s in (
        HeadSpec("logreg", LogRegHead, "one-vs-rest logistic regression, C searched on validation mAP",
                 class_weights=True, seed_param=None, cost=10,
                 trusted_types=("genrekit.heads.sklearn_heads.LogRegHead", *_OVR, *_LOGREG)),
        # Standardised although trees do not need it: random-init CNN features are ~1e-9 in size,
        # below scikit-learn's split threshold, and every tree would be a single leaf.
        HeadSpec("rf", RandomForestHead, "multi-output random forest",
                 class_weights=True, threads_param="n_jobs", cost=70, parts_param="n_estimators",
                 trusted_types=("genrekit.heads.sklearn_heads.RandomForestHead", "sklearn.ensemble._forest.RandomForestClassifier",
                                "sklearn.tree._classes.DecisionTreeClassifier", "sklearn.tree._tree.Tree")),
        HeadSpec("svc", SVCHead, "RBF SVM (Nystroem + linear SVC), sigmoid-calibrated, C searched on validation",
                 class_weights=True, cost=11,
                 trusted_types=("genrekit.heads.sklearn_heads.SVCHead", *_OVR, "sklearn.kernel_approximation.Nystroem",
                                "sklearn.calibration.CalibratedClassifierCV", "sklearn.calibration._CalibratedClassifier",
                                "sklearn.calibration._SigmoidCalibration", "sklearn.svm._classes.LinearSVC")),
        HeadSpec("mlp", partial(TorchMLPHead, loss="bce"), "torch MLP, BCE loss, early stopping on validation",
                 class_weights=True, persist="safetensors", threads_param="n_threads", cost=14),
        HeadSpec("chain", ChainHead, "classifier chain of logistic regressions (teacher forcing), ordered by genre text similarity",
                 inputs={"order": "chain_order"}, class_weights=True, cost=17,
                 trusted_types=("genrekit.heads.sklearn_heads.ChainHead", "sklearn.multioutput.ClassifierChain", *_LOGREG)),
        HeadSpec("softf1", partial(TorchMLPHead, loss="softf1", batch_size=512, lr=3e-4),
                 "torch MLP trained with the sigmoidF1 (soft-F1) loss",
                 persist="safetensors", threads_param="n_threads", cost=16),
        HeadSpec("zeroshot", ZeroShotHead, "cosine similarity to genre prompts (text tower), calibrated on validation",
                 inputs={"prompt_embeddings": "prompt_embeddings"}, standardise=False, persist="npz", seed_param=None, cost=0.1),
        HeadSpec("knn", KNNHead, "FAISS k nearest neighbours, cosine, distance-weighted votes",
                 inputs={"index": "knn_index"}, standardise=False, persist="npz", threads_param="n_threads", seed_param=None, cost=2),
    )
}  # fmt: skip


def register_head(spec: HeadSpec) -> HeadSpec:
    """Add a head to :data:`HEADS` (one entry is all a head needs); refuses a name already taken."""
    if spec.name in HEADS:
        raise ConfigError(f"a head named {spec.name!r} is already registered")
    HEADS[spec.name] = spec
    return spec


def list_heads() -> list[str]:
    """Registered head names, in leaderboard order."""
    return list(HEADS)


def get_head_spec(name: str) -> HeadSpec:
    """The :class:`HeadSpec` of ``name``, or :class:`UnknownNameError` with close matches."""
    try:
        return HEADS[name]
    except KeyError:
        raise UnknownNameError("head", name, HEADS, hint=f"known heads: {', '.join(HEADS)}") from None


def create_head(name: str, **params) -> MultiLabelHead:
    """An unfitted head by name, with parameters overriding its defaults."""
    return get_head_spec(name).factory(**params)
