"""Every genre's linear model solved side by side: one matrix product per step for all of them.

One-vs-rest logistic regression (``logreg``), a teacher-forced classifier chain (``chain``) and
the calibrated linear SVMs of ``svc`` fit many independent binary problems on the same X.
scikit-learn solves them one after another, each step a float64 matrix-vector product over all of
X, so a C search reads X thousands of times. Here one L-BFGS per problem advances in lockstep, each
with its own history, step and stopping test, and every step evaluates all the problems still
running in one float32 matrix product. The objectives are scikit-learn's (logistic: mean weighted
log-loss + ||w||^2 / (2 C n), intercept unpenalised; liblinear's squared hinge with the bias
penalised; ``class_weight="balanced"`` weighed as scikit-learn weighs) and the logistic stopping
rule is its too (the largest gradient entry under ``tol``), so the solutions agree with
scikit-learn's to about 1e-3 in probability: both stop at the same tolerance, reached along
different paths (tests/test_heads_side_by_side.py). Each C starts from the solution at the nearest
C solved before. The heads score each C of their search with these, and the chosen C's solution
becomes the head's model, held in the scikit-learn estimator that would have been fitted
(``fitted``), so prediction, saving, Grad-CAM and fine-tuning read it as before
(benchmarks/README.md, "Heads in a minute").
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import LabelBinarizer

from genrekit.evaluation.metrics import macro_average_precision


def _sample_weights(Y: np.ndarray, class_weight: str | None) -> np.ndarray | None:
    if class_weight is None:
        return None
    if class_weight != "balanced":
        raise ValueError(f"class_weight {class_weight!r}: only None or 'balanced'")
    n = len(Y)
    pos = Y.sum(axis=0).astype(np.float64)
    return np.where(Y == 1, n / (2 * pos), n / (2 * (n - pos))).astype(np.float32)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow warnings for large |z|


def lbfgs_columns(evaluate, theta: np.ndarray, tol: float, max_iter: int, memory: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Minimise K independent objectives at once: column k of ``theta`` (P, K) is problem k's.

    ``evaluate(theta_cols, cols)`` returns the objectives (len(cols),) and gradients (P, len(cols))
    of the problems ``cols``. Each problem runs its own L-BFGS (history, step, backtracking line
    search) and stops when its largest gradient entry is under ``tol`` or after ``max_iter``
    steps; the ones still running are evaluated together. Returns the solution and each problem's
    number of steps (``max_iter``: stopped before converging).
    """
    theta = np.array(theta, dtype=np.float64)
    P, G = theta.shape
    iters = np.zeros(G, np.int64)
    f, g = evaluate(theta, np.arange(G))
    active = np.abs(g).max(axis=0) > tol
    s_hist: list[np.ndarray] = []  # each (P, G)
    y_hist: list[np.ndarray] = []
    rho_hist: list[np.ndarray] = []  # (G,)
    first = True
    while active.any():
        cols = np.flatnonzero(active)
        q = g[:, cols].copy()
        alphas = []
        for s, y, rho in zip(reversed(s_hist), reversed(y_hist), reversed(rho_hist)):
            a = rho[cols] * np.einsum("pk,pk->k", s[:, cols], q)
            q -= a * y[:, cols]
            alphas.append(a)
        if s_hist:
            s, y = s_hist[-1][:, cols], y_hist[-1][:, cols]
            yy = np.einsum("pk,pk->k", y, y)
            gamma = np.where(yy > 0, np.einsum("pk,pk->k", s, y) / np.where(yy > 0, yy, 1.0), 1.0)
            q *= gamma
        for s, y, rho, a in zip(s_hist, y_hist, rho_hist, reversed(alphas)):
            bcoef = rho[cols] * np.einsum("pk,pk->k", y[:, cols], q)
            q += s[:, cols] * (a - bcoef)
        p = -q
        slope = np.einsum("pk,pk->k", g[:, cols], p)
        bad = slope >= 0  # not a descent direction: restart along the gradient
        if bad.any():
            p[:, bad] = -g[:, cols][:, bad]
            slope[bad] = np.einsum("pk,pk->k", g[:, cols][:, bad], p[:, bad])
        step = np.ones(len(cols))
        if first:  # scipy's first step: 1 / ||d||
            step = np.minimum(1.0, 1.0 / np.maximum(np.sqrt(np.einsum("pk,pk->k", p, p)), 1e-12))
        # backtracking (Armijo) line search, all unfinished problems evaluated together
        f_new = np.empty(len(cols))
        g_new = np.empty_like(p)
        todo = np.arange(len(cols))
        for _ in range(40):
            trial = theta[:, cols[todo]] + step[todo] * p[:, todo]
            ft, gt = evaluate(trial, cols[todo])
            ok = ft <= f[cols[todo]] + 1e-4 * step[todo] * slope[todo]
            f_new[todo[ok]], g_new[:, todo[ok]] = ft[ok], gt[:, ok]
            todo = todo[~ok]
            if not len(todo):
                break
            step[todo] *= 0.5
        else:  # no decrease found: those problems are at the precision limit; keep them where they are
            f_new[todo], g_new[:, todo] = f[cols[todo]], g[:, cols[todo]]
            step[todo] = 0.0
        s_new = np.zeros((P, G))
        y_new = np.zeros((P, G))
        s_new[:, cols] = step * p
        y_new[:, cols] = g_new - g[:, cols]
        sy = np.einsum("pk,pk->k", s_new, y_new)
        rho = np.where(sy > 1e-10, 1.0 / np.where(sy > 1e-10, sy, 1.0), 0.0)  # skip pairs without curvature
        s_hist.append(s_new)
        y_hist.append(y_new)
        rho_hist.append(rho)
        if len(s_hist) > memory:
            s_hist.pop(0), y_hist.pop(0), rho_hist.pop(0)
        theta[:, cols] += s_new[:, cols]
        f[cols], g[:, cols] = f_new, g_new
        iters[cols] += 1
        first = False
        stalled = step == 0.0
        done = (np.abs(g_new).max(axis=0) <= tol) | stalled | (iters[cols] >= max_iter)
        active[cols[done]] = False
    return theta, iters


class _SideBySide:
    """What the side-by-side solvers share: solving at a C, warm-started from the nearest C
    solved before, and the validation mAP there. Subclasses set ``n_params`` and ``n_problems``
    and define ``_eval(theta, cols, C)``, ``predict_proba(C, X)`` and ``fitted(model, C)`` (the
    solution at C as the fitted scikit-learn model ``model`` would be)."""

    tol: float
    max_iter: int
    memory: int
    n_params: int
    n_problems: int

    def solve(self, C: float) -> tuple[np.ndarray, np.ndarray]:
        """The parameters at ``C`` (n_params, n_problems; last row: intercepts) and each problem's steps."""
        C = float(C)
        if C not in self.solutions:
            start = np.zeros((self.n_params, self.n_problems))
            if self.solutions:
                start = self.solutions[min(self.solutions, key=lambda c: abs(np.log(c / C)))][0].copy()
            self.solutions[C] = lbfgs_columns(lambda th, cols: self._eval(th, cols, C), start, self.tol, self.max_iter, self.memory)
        return self.solutions[C]

    def validation_map(self, C: float, X_val: np.ndarray, Y_val: np.ndarray) -> float:
        return macro_average_precision(Y_val, self.predict_proba(C, X_val))

    def _warn_unconverged(self, C: float) -> None:
        """A ``ConvergenceWarning`` per problem stopped by ``max_iter`` at C, as each scikit-learn fit warns."""
        for k in np.flatnonzero(self.solve(C)[1] >= self.max_iter):
            warnings.warn(f"problem {k} (C={C:g}): L-BFGS reached max_iter={self.max_iter} before converging",
                          ConvergenceWarning, stacklevel=3)


def _linear(estimator, coef: np.ndarray, intercept: float, n_iter: int):
    """``estimator`` (an unfitted scikit-learn linear classifier) with the fitted attributes of a
    binary 0/1 fit on the heads' float32 features whose solution is ``coef``, ``intercept``, in
    the dtype that fit gives them (``LogisticRegression`` keeps float32; liblinear's SVM float64),
    so that predicting reads X as it is instead of converting it for every genre."""
    logistic = isinstance(estimator, LogisticRegression)
    dtype = np.float32 if logistic else np.float64
    estimator.classes_ = np.array([0, 1])
    estimator.coef_ = np.asarray(coef, dtype)[None]
    estimator.intercept_ = np.array([intercept], dtype)
    estimator.n_features_in_ = estimator.coef_.shape[1]
    estimator.n_iter_ = np.array([int(n_iter)], np.int32) if logistic else int(n_iter)
    return estimator


class SideBySideLogistic(_SideBySide):
    """G binary logistic regressions on ``X`` (a chain: link k also sees the true labels of the
    genres before it in ``order``, as scikit-learn's ``ClassifierChain`` trains).

    Args:
        X: (n, d) training features.
        Y: (n, G) 0/1 labels.
        class_weight: ``None`` or ``"balanced"``.
        order: a chain's genre order; ``None``: one-vs-rest.
        tol: a genre stops when its largest gradient entry is under ``tol`` (scikit-learn's).
        max_iter: L-BFGS steps per genre (scikit-learn's ``max_iter``).
        memory: L-BFGS history pairs (scipy's default, 10).
    """

    def __init__(self, X: np.ndarray, Y: np.ndarray, class_weight: str | None = None, order: Sequence[int] | None = None,
                 tol: float = 1e-4, max_iter: int = 300, memory: int = 10) -> None:
        X = np.asarray(X, dtype=np.float32)
        Y = np.asarray(Y, dtype=np.float32)
        self.n, self.d = X.shape
        self.G = Y.shape[1]
        self.order = None if order is None else np.asarray(order, dtype=np.int64)
        self.Yc = Y if self.order is None else Y[:, self.order]  # targets, in chain order for a chain
        if self.order is None:
            self.A, self.mask = X, None
        else:  # link k reads X and the labels of links 0..k-1
            self.A = np.ascontiguousarray(np.hstack([X, self.Yc]))
            self.mask = np.ones((self.d + self.G, self.G), np.float32)
            self.mask[self.d :] = np.triu(np.ones((self.G, self.G), np.float32), 1)
        self.S = _sample_weights(self.Yc, class_weight)
        self.tol, self.max_iter, self.memory = tol, max_iter, memory
        self.n_params, self.n_problems = self.A.shape[1] + 1, self.G
        self.solutions: dict[float, tuple[np.ndarray, np.ndarray]] = {}  # C -> (theta, iterations)

    # -- the objective of the genres in ``cols``: f (k,), gradient (P, k) ------------------------
    def _eval(self, theta: np.ndarray, cols: np.ndarray, C: float) -> tuple[np.ndarray, np.ndarray]:
        W, b = theta[:-1], theta[-1]
        if self.mask is not None:
            W = W * self.mask[:, cols]
        Z = self.A @ W.astype(np.float32) + b.astype(np.float32)
        Yk = self.Yc[:, cols]
        loss = np.logaddexp(0.0, Z) - Yk * Z
        R = _sigmoid(Z) - Yk
        if self.S is not None:
            loss *= self.S[:, cols]
            R *= self.S[:, cols]
        l2 = 1.0 / (C * self.n)
        f = loss.sum(axis=0, dtype=np.float64) / self.n + 0.5 * l2 * np.einsum("pk,pk->k", W, W)
        gW = (self.A.T @ R).astype(np.float64) / self.n + l2 * W
        if self.mask is not None:
            gW *= self.mask[:, cols]
        return f, np.vstack([gW, R.sum(axis=0, dtype=np.float64)[None] / self.n])

    def predict_proba(self, C: float, X: np.ndarray) -> np.ndarray:
        """(m, G) probabilities in the genres' own column order; a chain feeds each link the
        earlier links' 0/1 predictions, as scikit-learn's ``ClassifierChain`` predicts."""
        theta, _ = self.solve(C)
        X = np.asarray(X, dtype=np.float32)
        W, b = theta[: self.d].astype(np.float32), theta[-1].astype(np.float32)
        Z = X @ W + b
        if self.order is None:
            return _sigmoid(Z)
        V = (theta[self.d : -1] * self.mask[self.d :]).astype(np.float32)
        P = np.zeros_like(Z)
        hard = np.zeros_like(Z)
        for k in range(self.G):
            z = Z[:, k] + hard[:, :k] @ V[:k, k]
            P[:, k] = _sigmoid(z)
            hard[:, k] = z > 0
        out = np.empty_like(P)
        out[:, self.order] = P
        return out

    def fitted(self, model, C: float):
        """``model`` (an unfitted ``OneVsRestClassifier`` or, for a chain, ``ClassifierChain`` of
        ``LogisticRegression``: the one scikit-learn would fit at C) holding the solution at C."""
        theta, iters = self.solve(C)
        self._warn_unconverged(C)
        if self.order is None:
            model.label_binarizer_ = LabelBinarizer(sparse_output=True).fit(self.Yc)
            model.classes_ = model.label_binarizer_.classes_
            model.estimators_ = [_linear(clone(model.estimator), theta[:-1, k], theta[-1, k], iters[k]) for k in range(self.G)]
        else:  # link k reads X and the labels of the links before it, in chain order
            model.order_ = self.order.copy()
            model.estimators_ = [_linear(clone(model.estimator), theta[: self.d + k, k], theta[-1, k], iters[k]) for k in range(self.G)]
            model.classes_ = [e.classes_ for e in model.estimators_]
            model.chain_method_ = "predict"
        model.n_features_in_ = self.d
        return model



class SideBySideCalibratedSVM(_SideBySide):
    """Validation mAP, for each C, of scikit-learn's one-vs-rest ``CalibratedClassifierCV(LinearSVC(C,
    dual=False), method="sigmoid", cv=cv)``, with its G x cv linear SVMs solved side by side.

    Each genre's folds are scikit-learn's (``StratifiedKFold(cv)`` on that genre's labels); each
    SVM minimises liblinear's primal (squared hinge, bias penalised as a weight, class weights on
    its fold's rows) and is calibrated on its held-out fold with scikit-learn's sigmoid fit; a
    genre's probability is the mean over its folds, as the calibrated classifier's is. The
    chosen C's solution becomes the head's model (``fitted``).
    """

    def __init__(self, X: np.ndarray, Y: np.ndarray, class_weight: str | None = None, cv: int = 3,
                 tol: float = 1e-4, max_iter: int = 1000, memory: int = 10) -> None:
        from sklearn.model_selection import StratifiedKFold

        self.A = np.asarray(X, dtype=np.float32)
        Y = np.asarray(Y)
        self.n, self.d = self.A.shape
        self.G, self.cv = Y.shape[1], cv
        K = self.G * cv
        self.M = np.zeros((self.n, K), np.float32)  # 1: the row trains this column's SVM
        self.held: list[np.ndarray] = []
        for g in range(self.G):
            for k, (train, test) in enumerate(StratifiedKFold(cv).split(self.A, Y[:, g])):
                self.M[train, g * cv + k] = 1.0
                self.held.append(test)
        self.Yg = Y
        self.y = np.repeat(np.where(Y > 0, 1.0, -1.0).astype(np.float32), cv, axis=1)  # (n, K) in +-1
        if class_weight == "balanced":  # per fold: its rows' n / (2 x class count), as LinearSVC weighs C
            pos = (self.M * (self.y > 0)).sum(axis=0)
            tot = self.M.sum(axis=0)
            self.M *= np.where(self.y > 0, tot / (2 * pos), tot / (2 * (tot - pos))).astype(np.float32)
        elif class_weight is not None:
            raise ValueError(f"class_weight {class_weight!r}: only None or 'balanced'")
        self.tol, self.max_iter, self.memory = tol, max_iter, memory
        self.n_params, self.n_problems = self.d + 1, K
        self.solutions: dict[float, tuple[np.ndarray, np.ndarray]] = {}
        self.calibrations: dict[float, np.ndarray] = {}

    def _eval(self, theta: np.ndarray, cols: np.ndarray, C: float):
        W, b = theta[:-1], theta[-1]
        Z = self.A @ W.astype(np.float32) + b.astype(np.float32)
        y, M = self.y[:, cols], self.M[:, cols]
        margin = np.maximum(0.0, 1.0 - y * Z)
        l2 = 1.0 / (C * self.n)
        f = (M * margin * margin).sum(axis=0, dtype=np.float64) / self.n + 0.5 * l2 * (np.einsum("pk,pk->k", W, W) + b * b)
        R = -2.0 * M * y * margin
        gW = (self.A.T @ R).astype(np.float64) / self.n + l2 * W
        return f, np.vstack([gW, R.sum(axis=0, dtype=np.float64)[None] / self.n + l2 * b])

    def _calibration(self, C: float) -> np.ndarray:
        """Each SVM's sigmoid on its held-out fold, (2, K): scikit-learn's ``_sigmoid_calibration``."""
        from sklearn.calibration import _sigmoid_calibration

        if C not in self.calibrations:
            theta, _ = self.solve(C)
            Z = self.A @ theta[:-1].astype(np.float32) + theta[-1].astype(np.float32)
            self.calibrations[C] = np.array([_sigmoid_calibration(Z[self.held[col], col].astype(np.float64), self.Yg[self.held[col], col // self.cv])
                                             for col in range(self.n_problems)]).T  # fmt: skip
        return self.calibrations[C]

    def predict_proba(self, C: float, X: np.ndarray) -> np.ndarray:
        theta, _ = self.solve(C)
        a, c = self._calibration(C)
        Z = np.asarray(X, dtype=np.float32) @ theta[:-1].astype(np.float32) + theta[-1].astype(np.float32)
        P = _sigmoid(-(a * Z + c))  # (m, K): genre g's folds are columns g*cv .. g*cv+cv-1
        return P.reshape(len(P), self.G, self.cv).mean(axis=2)

    def fitted(self, model, C: float):
        """``model`` (an unfitted ``OneVsRestClassifier(CalibratedClassifierCV(LinearSVC))``, the
        one scikit-learn would fit at C) holding the solution at C: per genre, its fold SVMs
        and their sigmoids."""
        from sklearn.calibration import _CalibratedClassifier, _SigmoidCalibration

        theta, iters = self.solve(C)
        self._warn_unconverged(C)
        a, c = self._calibration(C)
        model.label_binarizer_ = LabelBinarizer(sparse_output=True).fit(self.Yg)
        model.classes_ = model.label_binarizer_.classes_
        model.estimators_ = []
        for g in range(self.G):
            cal = clone(model.estimator)
            cal.calibrated_classifiers_ = []
            for col in range(g * self.cv, (g + 1) * self.cv):
                sig = _SigmoidCalibration()
                sig.a_, sig.b_ = float(a[col]), float(c[col])
                svm = _linear(clone(cal.estimator), theta[:-1, col], theta[-1, col], iters[col])
                cal.calibrated_classifiers_.append(_CalibratedClassifier(svm, [sig], classes=np.array([0, 1]), method="sigmoid"))
            cal.classes_ = np.array([0, 1])
            cal.n_features_in_ = self.d
            model.estimators_.append(cal)
        model.n_features_in_ = self.d
        return model
