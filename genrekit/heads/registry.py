"""The one table of heads: name -> :class:`HeadSpec`. Adding a head is one entry here.

Example:
    >>> from genrekit.heads import create_head, list_heads
    >>> list_heads()
    ['logreg', 'rf', 'svc', 'mlp', 'chain', 'softf1', 'zeroshot', 'knn']
    >>> head = create_head("logreg", Cs=(0.01,))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from genrekit.errors import UnknownNameError
from genrekit.heads.base import MultiLabelHead
from genrekit.heads.knn import KNNHead
from genrekit.heads.sklearn_heads import ChainHead, LogRegHead, RandomForestHead, SVCHead
from genrekit.heads.torch_heads import TorchMLPHead
from genrekit.heads.zeroshot import ZeroShotHead


@dataclass(frozen=True)
class HeadSpec:
    """How to build, feed, schedule and save one head.

    Attributes:
        name: registry name (the ``--head`` value and the run directory name).
        factory: called with keyword parameters, returns an unfitted head.
        description: one line for ``--help`` and the leaderboard.
        needs_text: needs prompt embeddings from the item encoder's text tower.
        class_weights: takes ``class_weight="balanced"`` (``--balance weights``).
        standardise: train on standardised features (a StandardScaler fitted on train).
        persist: how the fitted head is saved: ``skops``, ``safetensors`` (+ JSON) or ``npz`` (+ JSON).
        threads_param: the parameter that sets its CPU threads, if it has its own.
        seed_param: the parameter that seeds it, if it is random.
        cost: relative fit time on 6,000 x 1280 features (measured, benchmarks/README.md), so the
            longest heads start first.
    """

    name: str
    factory: Callable[..., MultiLabelHead]
    description: str
    needs_text: bool = False
    class_weights: bool = False
    standardise: bool = True
    persist: str = "skops"
    threads_param: str | None = None
    seed_param: str | None = "random_state"
    cost: float = 1.0


HEADS: dict[str, HeadSpec] = {
    s.name: s
    for s in (
        HeadSpec("logreg", LogRegHead, "one-vs-rest logistic regression, C searched on validation mAP",
                 class_weights=True, seed_param=None, cost=20),
        # Standardised although trees do not need it: random-init CNN features are ~1e-9 in size,
        # below scikit-learn's split threshold, and every tree would be a single leaf.
        HeadSpec("rf", RandomForestHead, "multi-output random forest",
                 class_weights=True, threads_param="n_jobs", cost=30),
        HeadSpec("svc", SVCHead, "RBF SVM (Nystroem + linear SVC), sigmoid-calibrated, C searched on validation",
                 class_weights=True, cost=30),
        HeadSpec("mlp", partial(TorchMLPHead, loss="bce"), "torch MLP, BCE loss, early stopping on validation",
                 class_weights=True, persist="safetensors", threads_param="n_threads", cost=8),
        HeadSpec("chain", ChainHead, "classifier chain of logistic regressions (teacher forcing), ordered by genre text similarity",
                 class_weights=True, cost=15),
        HeadSpec("softf1", partial(TorchMLPHead, loss="softf1", batch_size=512, lr=3e-4),
                 "torch MLP trained with the sigmoidF1 (soft-F1) loss",
                 persist="safetensors", threads_param="n_threads", cost=8),
        HeadSpec("zeroshot", ZeroShotHead, "cosine similarity to genre prompts (text tower), calibrated on validation",
                 needs_text=True, standardise=False, persist="npz", seed_param=None, cost=0.1),
        HeadSpec("knn", KNNHead, "FAISS k nearest neighbours, cosine, distance-weighted votes",
                 standardise=False, persist="npz", threads_param="n_threads", seed_param=None, cost=1),
    )
}  # fmt: skip


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
