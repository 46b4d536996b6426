"""Torch heads: ``mlp`` (binary cross-entropy) and ``softf1`` (the sigmoidF1 loss).

torch is imported inside the methods, so importing genrekit.heads never loads it. The module is
built in ``fit`` and lives on the CPU; it pickles as its weights (numpy arrays), so a process that
receives a fitted head (the heads runner's, from its jobs) imports torch only if it runs the
network; it is saved as safetensors plus JSON (see :mod:`genrekit.heads.io`). Training is seeded
(its own RNG scope, so the caller's global torch RNG is untouched) and stops early on a validation set: the one passed to ``fit``, or a
seeded ``val_fraction`` of the training rows when none is given.
"""

from __future__ import annotations

import logging

import numpy as np

from genrekit.errors import ConfigError
from genrekit.heads.base import MultiLabelHead

log = logging.getLogger(__name__)

LOSSES = ("bce", "softf1")


def build_module(n_features: int, n_genres: int, hidden: int, dropout: float):
    """The network: one hidden ReLU layer with dropout (``hidden=0``: a linear layer)."""
    from torch import nn

    if hidden <= 0:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(n_features, n_genres))
    return nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_genres))


def sigmoid_f1_loss(logits, targets, beta: float = 1.0, eta: float = 0.0):
    """1 - macro soft F1 over the batch (Bénédict et al., "sigmoidF1", 2022).

    True/false positives and false negatives are counted with ``sigmoid(beta * (logits + eta))``
    instead of hard 0/1 decisions, so F1 itself is differentiable and rare genres weigh as much as
    common ones.
    """
    import torch

    s = torch.sigmoid(beta * (logits + eta))
    tp = (s * targets).sum(0)
    fp = (s * (1 - targets)).sum(0)
    fn = ((1 - s) * targets).sum(0)
    f1 = 2 * tp / (2 * tp + fp + fn + 1e-8)
    return 1 - f1.mean()


class TorchMLPHead(MultiLabelHead):
    """A small MLP on cached features, trained with BCE or the soft-F1 loss.

    Args:
        loss: ``"bce"`` or ``"softf1"``.
        hidden: hidden units (0: no hidden layer).
        dropout: dropout before the output layer.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        batch_size: minibatch size; soft-F1 needs batches large enough to hold positives of rare genres.
        max_epochs: upper bound on epochs.
        patience: epochs without a better validation loss before stopping.
        val_fraction: share of training rows held out for early stopping when no validation set is given.
        class_weight: ``"balanced"`` weighs each genre's positives by negatives/positives (capped at
            50) in the BCE loss; soft-F1 is already insensitive to imbalance and ignores it.
        n_threads: torch CPU threads while fitting/predicting (``None``: torch's current setting).
        random_state: seed of initialisation, shuffling, dropout and the held-out rows.
    """

    def __init__(
        self,
        loss: str = "bce",
        hidden: int = 512,
        dropout: float = 0.5,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        batch_size: int = 256,
        max_epochs: int = 100,
        patience: int = 8,
        val_fraction: float = 0.1,
        class_weight: str | None = None,
        n_threads: int | None = None,
        random_state: int = 0,
    ):
        self.loss = loss
        self.hidden = hidden
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.val_fraction = val_fraction
        self.class_weight = class_weight
        self.n_threads = n_threads
        self.random_state = random_state

    # -- training --------------------------------------------------------------------------
    def _loss_fn(self, Y: np.ndarray):
        import torch
        import torch.nn.functional as F

        if self.loss == "softf1":
            return sigmoid_f1_loss
        pos_weight = None
        if self.class_weight == "balanced":
            pos = Y.sum(axis=0).clip(min=1)
            pos_weight = torch.from_numpy(np.clip((len(Y) - pos) / pos, 1.0, 50.0).astype(np.float32))
        return lambda logits, t: F.binary_cross_entropy_with_logits(logits, t, pos_weight=pos_weight)

    def fit(self, X, Y, X_val=None, Y_val=None) -> TorchMLPHead:
        import torch

        X, Y, X_val, Y_val = self._fit_inputs(X, Y, X_val, Y_val)
        if self.loss not in LOSSES:
            raise ConfigError(f"TorchMLPHead loss={self.loss!r}; expected one of {', '.join(LOSSES)}")
        if self.class_weight not in (None, "balanced"):
            raise ConfigError(f"class_weight={self.class_weight!r}; expected None or 'balanced'")
        rng = np.random.default_rng(self.random_state)
        if X_val is None:
            idx = rng.permutation(len(X))
            n_val = max(1, int(round(self.val_fraction * len(X)))) if len(X) > 1 else 0
            X_val, Y_val = X[idx[:n_val]], Y[idx[:n_val]]
            X, Y = X[idx[n_val:]], Y[idx[n_val:]]
        prev_threads = torch.get_num_threads()
        if self.n_threads:
            torch.set_num_threads(self.n_threads)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.random_state)
                self._train(torch, X, Y, X_val, Y_val)
        finally:
            torch.set_num_threads(prev_threads)
        return self

    def _train(self, torch, X, Y, X_val, Y_val) -> None:
        module = build_module(X.shape[1], Y.shape[1], self.hidden, self.dropout)
        opt = torch.optim.AdamW(module.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        loss_fn = self._loss_fn(Y)
        Xt, Yt = torch.from_numpy(np.array(X)), torch.from_numpy(Y.astype(np.float32))  # copies: joblib may hand read-only memmaps
        Xv, Yv = torch.from_numpy(np.array(X_val)), torch.from_numpy(Y_val.astype(np.float32))
        gen = torch.Generator().manual_seed(self.random_state)
        best, best_state, best_epoch, waited = float("inf"), None, 0, 0
        self.history_: list[tuple[float, float]] = []
        for epoch in range(1, self.max_epochs + 1):
            module.train()
            total = 0.0
            for b in torch.randperm(len(Xt), generator=gen).split(self.batch_size):
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(module(Xt[b]), Yt[b])
                loss.backward()
                opt.step()
                total += loss.item() * len(b)
            module.eval()
            with torch.inference_mode():
                val = float(loss_fn(module(Xv), Yv)) if len(Xv) else total
            self.history_.append((total / max(len(Xt), 1), val))
            if val < best - 1e-5:
                best, best_epoch, waited = val, epoch, 0
                best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            else:
                waited += 1
                if waited >= self.patience:
                    break
        if best_state is not None:  # None only when every validation loss was NaN
            module.load_state_dict(best_state)
        module.eval()
        self.module_ = module
        self.best_epoch_ = best_epoch
        self.best_val_loss_ = best
        self.n_iter_ = len(self.history_)  # epochs run
        log.info("%s head: best epoch %d of %d, validation loss %.4f", self.loss, best_epoch, len(self.history_), best)

    # -- inference -------------------------------------------------------------------------
    def predict_proba(self, X) -> np.ndarray:
        import torch

        X = self._check_X(X)
        prev_threads = torch.get_num_threads()
        if self.n_threads:
            torch.set_num_threads(self.n_threads)
        try:
            with torch.inference_mode():
                out = [torch.sigmoid(self.module_(torch.tensor(X[i : i + 8192]))).numpy() for i in range(0, len(X), 8192)]
        finally:
            torch.set_num_threads(prev_threads)
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.n_genres_), np.float32)

    # -- persistence (safetensors + JSON; see genrekit.heads.io) ----------------------------
    def get_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """Fitted state as (JSON-able dict, named float arrays)."""
        meta = {
            "n_features_in_": int(self.n_features_in_),
            "n_genres_": int(self.n_genres_),
            "best_epoch_": int(self.best_epoch_),
            "best_val_loss_": float(self.best_val_loss_),
            "history_": [list(h) for h in self.history_],
        }
        arrays = self.__dict__.get("_arrays")
        return meta, arrays if arrays is not None else _weights(self.module_)

    def set_state(self, meta: dict, arrays: dict[str, np.ndarray]) -> TorchMLPHead:
        """Restore what :meth:`get_state` returned, on a head built with the same parameters."""
        self.n_features_in_ = meta["n_features_in_"]
        self.n_genres_ = meta["n_genres_"]
        self.best_epoch_ = meta["best_epoch_"]
        self.best_val_loss_ = meta["best_val_loss_"]
        self.history_ = [tuple(h) for h in meta["history_"]]
        self.n_iter_ = len(self.history_)
        self.classes_ = [np.array([0, 1]) for _ in range(self.n_genres_)]
        self.module_ = self._network(arrays, self.hidden)
        return self

    # -- pickling: the network travels as its weights ----------------------------------------
    @property
    def module_(self):
        """The fitted network (after unpickling, rebuilt from its weights on first use)."""
        module = self.__dict__.get("_module")
        if module is None:
            arrays = self.__dict__.get("_arrays")
            if arrays is None:
                raise AttributeError(f"{type(self).__name__} has no module_: it is not fitted")
            # set before the weights go, so that threads using a just-unpickled head all find one
            module = self.__dict__.setdefault("_module", self._network(arrays, _width(arrays)))
            self.__dict__.pop("_arrays", None)
        return module

    @module_.setter
    def module_(self, module) -> None:
        self.__dict__.pop("_arrays", None)
        self._module = module

    def __getstate__(self):
        state = dict(super().__getstate__())  # a copy: object's is the live __dict__
        module = state.pop("_module", None)
        if module is not None:
            state["_arrays"] = _weights(module)
        return state

    def _network(self, arrays: dict[str, np.ndarray], hidden: int):
        """The network of ``hidden`` units with these weights (refused by torch if they do not fit)."""
        import torch

        module = build_module(self.n_features_in_, self.n_genres_, hidden, self.dropout)
        module.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()})
        return module.eval()


def _width(arrays: dict[str, np.ndarray]) -> int:
    """The hidden units of pickled weights, whatever ``hidden`` was set to since the fit."""
    return arrays["0.weight"].shape[0] if "0.weight" in arrays else 0  # hidden=0: layer 0 is the dropout


def _weights(module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
