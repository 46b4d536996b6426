"""Train every head on one set of cached features and rank them: ``genrekit heads``.

Train on the train split, tune thresholds on validation, report on test, save each head, write
``results.json`` / ``results.csv``. The runner takes a :class:`~genrekit.store.FeatureSet`, not a
path, so a fused multi-store FeatureSet trains the same way.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from genrekit import __version__
from genrekit.atomic import atomic_open
from genrekit.data.split import PARTS, split_warnings, stratified_split, write_split_file
from genrekit.errors import ConfigError, GenrekitError, LabelError, UnknownNameError
from genrekit.evaluation.metrics import METRIC_KEYS, macro_average_precision, multilabel_metrics
from genrekit.evaluation.scorecard import flat_note, score
from genrekit.evaluation.thresholds import RULES, fixed
from genrekit.heads.ensemble import DESCRIPTION as ENSEMBLE_DESCRIPTION
from genrekit.heads.ensemble import ENSEMBLE, greedy_selection, save_ensemble
from genrekit.heads.balance import BALANCE_MODES, check_balance, oversample_indices
from genrekit.heads.registry import HEADS, get_head_spec
from genrekit.heads.saved import SavedHead, write_json
from genrekit.heads.sklearn_heads import grid_notes, similarity_order
from genrekit.heads.zeroshot import genre_prompt_embeddings
from genrekit.progress import ProgressFn, null_progress
from genrekit.rundir import RESULTS_CSV, RESULTS_FILE, SPLIT_FILE, save_part_predictions
from genrekit.store import FeatureSet, StoreHeader
from genrekit.system import cpu_count, exit_without_collection

log = logging.getLogger(__name__)

TextEncoder = Callable[[list[str]], np.ndarray]
BASELINE = "baseline"  # one-vs-rest LogisticRegression with scikit-learn's defaults (C=1, max_iter=100), solved as logreg is; the reference


@dataclass(frozen=True)
class HeadsConfig:
    """Options of ``genrekit heads``; each field is one CLI flag.

    Attributes:
        heads: head names to train; empty means every head that applies (``--all``), and the
            ``ensemble`` of them; ``ensemble`` among named heads ensembles the others.
        threshold: decision rule tuned on validation and saved with each head (``--threshold``).
        balance: one or more of none / weights / oversample; several give one leaderboard row
            per head and mode, so their effect on macro F1 sits side by side.
        seed: seeds the default split, the heads and oversampling.
        ratios: train/val/test shares of the default split (used when the store has none).
        min_train_positives: genres with fewer training positives are dropped (a head cannot
            learn a genre from a handful of posters, and its metrics would be noise).
        min_eval_positives: genres with fewer positives in val or in test are dropped (no
            threshold can be tuned, or nothing can be scored).
        min_threshold_positives: genres with fewer validation positives use the global threshold
            under the per-genre rule (an F1-optimal cut fitted to a handful of positives is noise:
            on the 6,000 MobileNetV2 posters, 3 instead of 10 cost 0.01-0.05 test micro F1).
        jobs: heads trained at once (0: one per CPU core); the cores are shared between them.
        knn_index: FAISS index spec of the knn head.
        chain_order: genre names that start the chain (the rest follow by text similarity or
            frequency); empty means text similarity when the encoder has a text tower, else
            frequency.
        chain_encoder: a backbone with a text tower (e.g. ``minilm``) whose genre embeddings order
            the chain, for features whose own encoder has none (a CNN, a fused set); it only
            orders genres, so its embedding size need not match the features'.
        standardise: fit a StandardScaler on train for the heads that want one. Early-fused
            features come standardised per store, with each store's block weighted; a second
            scaler would undo those weights, so fused runs turn it off.
        skip_inapplicable: skip (and name) heads given in ``heads`` that do not apply to these
            features instead of failing; fused runs set it, as a head such as ``zeroshot`` may
            apply to one store and not to another.
        baseline: also fit the default one-vs-rest logistic regression as a reference.
        head_params: per head name, parameters overriding its defaults (e.g. smaller models
            for a quick look: ``{"rf": {"n_estimators": 50}}``).
    """

    heads: tuple[str, ...] = ()
    threshold: str = "per-genre"
    balance: tuple[str, ...] = ("none",)
    seed: int = 0
    ratios: tuple[float, float, float] = (0.7, 0.15, 0.15)
    min_train_positives: int = 10
    min_eval_positives: int = 1
    min_threshold_positives: int = 10
    jobs: int = 0
    knn_index: str = "auto"
    chain_order: tuple[str, ...] = ()
    chain_encoder: str | None = None
    standardise: bool = True
    skip_inapplicable: bool = False
    baseline: bool = True
    head_params: Mapping[str, Mapping] = field(default_factory=dict)

    def validate(self) -> None:
        for h in (*self.heads, *self.head_params):
            if h != ENSEMBLE:
                get_head_spec(h)
        if self.threshold not in RULES:
            raise UnknownNameError("threshold rule", self.threshold, RULES)
        if not self.balance:
            raise ConfigError(f"--balance needs at least one of {', '.join(BALANCE_MODES)}")
        for b in self.balance:
            check_balance(b)
        if self.chain_encoder:
            from genrekit.backbones import get_spec

            get_spec(self.chain_encoder)
        if self.min_train_positives < 1 or self.min_eval_positives < 1:
            raise ConfigError("--min-positives must be at least 1 (a genre needs a positive to be learnt and scored)")


# -- preparing the data ------------------------------------------------------------------------
def resolve_split(fs: FeatureSet, config: HeadsConfig, out: Path) -> tuple[np.ndarray, str]:
    """The store's split when it has a usable one, else a stratified split saved as split.csv."""
    split = None if fs.split is None else np.asarray(fs.split, dtype=object)
    if split is not None and all((split == p).any() for p in PARTS):
        return split, "store"
    if split is not None:
        log.warning("the store's split lacks a train, val or test part; making a stratified split instead")
    split = stratified_split(fs.Y, config.ratios, seed=config.seed)
    write_split_file(out / SPLIT_FILE, list(fs.ids), split)
    return split, "stratified"


def select_genres(Y: np.ndarray, split: np.ndarray, genres: Sequence[str], config: HeadsConfig) -> tuple[list[int], dict[str, str]]:
    """Columns with enough positives, and enough negatives, in every part, and why each other genre was dropped.

    A genre nearly every item has is as unlearnable as one nearly none has (the heads refuse it,
    or predict a constant), so negatives need the same counts as positives.
    """
    counts = {p: Y[split == p].sum(axis=0) for p in PARTS}
    sizes = {p: int((split == p).sum()) for p in PARTS}
    need = {"train": config.min_train_positives, "val": config.min_eval_positives, "test": config.min_eval_positives}
    keep, dropped = [], {}
    for j, g in enumerate(genres):
        for kind, have in (("positives", {p: int(counts[p][j]) for p in PARTS}), ("negatives", {p: sizes[p] - int(counts[p][j]) for p in PARTS})):
            if any(have[p] < need[p] for p in PARTS):
                dropped[g] = (f"{' / '.join(f'{have[p]} {p}' for p in PARTS)} {kind}; "
                              f"needs at least {need['train']} train, {need['val']} val and {need['test']} test")  # fmt: skip
                break
        else:
            keep.append(j)
    return keep, dropped


def _text_encoder_from_header(header: StoreHeader | None) -> tuple[TextEncoder | None, str]:
    """The store encoder's text tower, or None and the reason it is unavailable."""
    if header is None:
        return None, "the features have no single encoder (no store header)"
    from genrekit.backbones.families import family_has_text

    if family_has_text(str(header.encoder.get("family"))) is False:  # known from the header, without torch (2 s)
        return None, f"backbone {header.encoder.get('name')} has no text tower"
    from genrekit.extraction import encoder_from_header

    try:
        encoder = encoder_from_header(header)
    except GenrekitError as e:
        return None, f"the store's encoder could not be rebuilt ({e})"
    if not encoder.has_text:
        return None, f"backbone {header.encoder.get('name')} has no text tower"
    return encoder.encode_texts, ""


def _encoder_genre_embeddings(backbone: str, genres: list[str]) -> np.ndarray:
    """Genre embeddings from any backbone's text tower (plot-style prompts), for the chain order."""
    from genrekit.backbones import create_encoder

    encoder = create_encoder(backbone, device="cpu")
    if not encoder.has_text:
        raise ConfigError(f"--chain-encoder {backbone} has no text tower; use a text backbone such as minilm, or an open_clip model")
    return genre_prompt_embeddings(encoder.encode_texts, genres, "text")


def _chain_order(
    genres: list[str], Y_train: np.ndarray, given: Sequence[str], genre_embeddings: np.ndarray | None, source: str = "text similarity"
) -> tuple[list[int], str]:
    by_freq = [int(j) for j in np.argsort(-Y_train.sum(axis=0), kind="stable")]
    if given:
        unknown = [g for g in given if g not in genres]
        if unknown:
            raise UnknownNameError("genre in --chain-order", unknown[0], genres)
        head = [genres.index(g) for g in given]
        return head + [j for j in by_freq if j not in head], "given"
    if genre_embeddings is not None:
        return similarity_order(genre_embeddings, start=by_freq[0]), source
    return by_freq, "label frequency"


# -- one task, run in a worker process ---------------------------------------------------------
@dataclass(frozen=True)
class _Task:
    entry: str
    head: str
    balance: str
    params: dict
    seed: int = 0
    part: tuple[int, int] | None = None  # (part, parts) of a head grown in parts (HeadSpec.parts_param)


def _fit_task(task: _Task, data: dict, threads: int) -> dict:
    from threadpoolctl import threadpool_limits

    from genrekit.heads.registry import create_head

    spec = get_head_spec(task.head)
    params = dict(task.params)
    if spec.threads_param:
        params[spec.threads_param] = threads
    with threadpool_limits(limits=threads):
        if "torch" in sys.modules:  # intra-op threads of anything torch runs here; never import it for sklearn heads
            sys.modules["torch"].set_num_threads(threads)
        head = create_head(task.head, **params)
        X, Y = data["X_train"], data["Y_train"]
        if task.balance == "oversample":
            idx = oversample_indices(Y, seed=task.seed)
            X, Y = X[idx], Y[idx]
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            # Counted and reported once per head by the caller, instead of one stderr block per genre.
            warnings.simplefilter("always", ConvergenceWarning)
            if task.part:
                head.fit_part(X, Y, *task.part)
            else:
                head.fit(X, Y, data["X_val"], data["Y_val"])
        fit_s = time.perf_counter() - t0
        unconverged = 0
        for w in caught:
            if issubclass(w.category, ConvergenceWarning):
                unconverged += 1
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        P_val, P_test, predict_s = (None, None, 0.0) if task.part else _predict(head, data)
    return {"task": task, "head": head, "P_val": P_val, "P_test": P_test, "fit_seconds": fit_s,
            "predict_seconds": predict_s, "unconverged": unconverged}


def _predict(head, data: dict) -> tuple[np.ndarray, np.ndarray, float]:
    t0 = time.perf_counter()
    P_val, P_test = head.predict_proba(data["X_val"]), head.predict_proba(data["X_test"])
    return P_val, P_test, time.perf_counter() - t0


def _in_parts(tasks: list[_Task], jobs: int) -> list[_Task]:
    """A head made of independent parts (a forest's trees) that would set the run's length (its
    cost above one job's share of all the costs) as several tasks, each within that share; longest
    first (:meth:`RandomForestHead.fit_part`). On 2 cores the forest is within its share and stays
    whole: two halves side by side ran slower than the forest beside the other heads."""
    from genrekit.heads.registry import create_head

    cost = {t.entry: get_head_spec(t.head).cost for t in tasks}
    share = sum(cost.values()) / jobs
    out = []
    for t in tasks:
        spec = get_head_spec(t.head)
        parts = 1
        if spec.parts_param and cost[t.entry] > share:
            units = create_head(t.head, **t.params).get_params()[spec.parts_param]
            parts = min(jobs, units, math.ceil(cost[t.entry] / share))
        out += [replace(t, part=(i, parts)) for i in range(parts)] if parts > 1 else [t]
    return sorted(out, key=lambda t: -cost[t.entry] / (t.part[1] if t.part else 1))


def _joined(stream, data_for: Callable[[_Task], dict]):
    """The results of ``stream`` with the parts of a head joined into that head, predicted here;
    its fit seconds are its parts' sum (CPU seconds, as for a head fitted whole on one thread)."""
    waiting: dict[str, list[dict]] = {}
    for r in stream:
        task = r["task"]
        if task.part is None:
            yield r
            continue
        got = waiting.setdefault(task.entry, [])
        got.append(r)
        if len(got) < task.part[1]:
            continue
        del waiting[task.entry]
        got.sort(key=lambda g: g["task"].part[0])
        head = type(got[0]["head"]).join_parts([g["head"] for g in got])
        P_val, P_test, predict_s = _predict(head, data_for(task))
        yield {"task": replace(task, part=None), "head": head, "P_val": P_val, "P_test": P_test,
               "fit_seconds": sum(g["fit_seconds"] for g in got), "predict_seconds": predict_s,
               "unconverged": sum(g["unconverged"] for g in got)}


def _job_count(config: HeadsConfig, n_tasks: int) -> int:
    """Heads trained at once: ``--jobs`` (0: one per core), never more than there are tasks."""
    return max(1, min(config.jobs or cpu_count(), n_tasks))


def _ready() -> int:
    """A job's first task: unpickling it imports this module (scikit-learn, the heads) there."""
    exit_without_collection()
    return os.getpid()


def _fit_in_job(task: _Task, data: dict, threads: int) -> dict:
    """:func:`_fit_task` in a job process, which then leaves as soon as the run lets it go."""
    exit_without_collection()
    return _fit_task(task, data, threads)


def _start_jobs(names: list[str], config: HeadsConfig) -> threading.Thread | None:
    """Start the job processes now, in a thread, so that their start-up (Python and scikit-learn
    imports, about 2.5 s each) overlaps the split, the text-tower check and the standardisation
    instead of following them. As many as :func:`_fit_all` asks for when every head that needs no text
    tower applies; loky reuses them (and adds or stops one if the count differs)."""
    jobs = _job_count(config, sum(not get_head_spec(n).needs_text for n in names) * len(config.balance) + config.baseline)
    if jobs < 2:
        return None

    def start() -> None:
        from joblib import Parallel, delayed

        try:
            Parallel(n_jobs=jobs, backend="loky")(delayed(_ready)() for _ in range(jobs))
        except Exception as e:  # the run starts them itself, and reports what fails there
            log.debug("starting %d job processes ahead failed: %s", jobs, e)

    thread = threading.Thread(target=start, name="genrekit-start-jobs", daemon=True)
    thread.start()
    return thread


def _fitted_summary(head) -> dict:
    out = {}
    for k in ("C_", "k_", "best_epoch_", "order_", "search_"):
        if hasattr(head, k):
            v = getattr(head, k)
            out[k] = {str(a): b for a, b in v.items()} if isinstance(v, dict) else v
    return out


# -- the run, step by step ---------------------------------------------------------------------
@dataclass
class _Prepared:
    """The labelled data of a run after the split and the genre selection."""

    split: np.ndarray
    split_source: str
    genres: list[str]
    dropped: dict[str, str]
    Y: np.ndarray  # (n, kept genres)
    parts: dict[str, np.ndarray]  # part -> row mask
    X: dict[str, np.ndarray]  # part -> features
    Ys: dict[str, np.ndarray]  # part -> labels


def _check_labelled(fs: FeatureSet) -> None:
    if fs.Y.ndim != 2 or fs.Y.shape[1] == 0 or not fs.Y.any():
        raise LabelError(
            f"the features have no genre labels ({fs.Y.shape[1] if fs.Y.ndim == 2 else 0} genre columns, "
            f"{int(fs.Y.sum())} positives); heads need labelled items: extract from a manifest with a genres column"
        )


def _prepare(fs: FeatureSet, config: HeadsConfig, out: Path) -> _Prepared:
    """Resolve the split and select the genres every part can train and score."""
    _check_labelled(fs)
    split, split_source = resolve_split(fs, config, out)
    keep, dropped = select_genres(fs.Y, split, fs.genres, config)
    for g, why in dropped.items():
        log.info("dropped genre %r: %s", g, why)  # also in results["dropped_genres"]
    if not keep:
        raise LabelError(f"no genre has enough positives in train, val and test (--min-positives {config.min_train_positives})")
    Y = fs.Y[:, keep].astype(np.uint8)
    parts = {p: split == p for p in PARTS}
    return _Prepared(split, split_source, [fs.genres[j] for j in keep], dropped, Y, parts,
                     {p: fs.X[parts[p]] for p in PARTS}, {p: Y[parts[p]] for p in PARTS})  # fmt: skip


def _runner_inputs(
    names: list[str], prep: _Prepared, fs: FeatureSet, config: HeadsConfig, header: StoreHeader | None, text_encoder: TextEncoder | None
) -> tuple[list[str], dict[str, str], dict, dict]:
    """What the chosen heads ask for in their registry entries (:data:`RUNNER_INPUTS`), computed once.

    Returns the heads that apply, the skipped ones with the reason, the inputs by name, and the
    chain order record for results.json.
    """
    wanted = {inp for n in names for inp in get_head_spec(n).inputs.values()}
    explicit = bool(config.heads)
    skipped: dict[str, str] = {}
    inputs: dict = {"knn_index": config.knn_index}
    prompt_emb = None
    chain_by_text = "chain_order" in wanted and not config.chain_order
    if "prompt_embeddings" in wanted or (chain_by_text and not config.chain_encoder):
        enc, why = (text_encoder, "") if text_encoder is not None else _text_encoder_from_header(header)
        if enc is not None:
            prompt_emb = genre_prompt_embeddings(enc, prep.genres, header.modality if header is not None else "image")
            if prompt_emb.shape[1] != fs.X.shape[1]:
                why = f"the text tower's {prompt_emb.shape[1]}-d space is not the features' {fs.X.shape[1]}-d space"
                prompt_emb = None
        for n in names:
            if get_head_spec(n).needs_text and prompt_emb is None:
                if explicit and not config.skip_inapplicable:
                    raise ConfigError(f"head {n!r} does not apply to these features: {why}")
                skipped[n] = why
    inputs["prompt_embeddings"] = prompt_emb
    genre_emb, emb_source = prompt_emb, "text similarity"
    if chain_by_text and config.chain_encoder:
        genre_emb, emb_source = _encoder_genre_embeddings(config.chain_encoder, prep.genres), f"text similarity ({config.chain_encoder})"
    order, source = _chain_order(prep.genres, prep.Ys["train"], config.chain_order, genre_emb, emb_source)
    inputs["chain_order"] = order
    return [n for n in names if n not in skipped], skipped, inputs, {"source": source, "genres": [prep.genres[j] for j in order]}


def _build_tasks(names: list[str], inputs: Mapping, config: HeadsConfig, skipped: Mapping[str, str]) -> list[_Task]:
    """One task per head and balance mode (a head without class weights runs once unweighted); :func:`_in_parts` orders them."""
    tasks: list[_Task] = []
    multi = len(config.balance) > 1
    for n in names:
        spec = get_head_spec(n)
        for b in config.balance:
            eff = b
            if b == "weights" and not spec.class_weights:
                if multi and "none" in config.balance:
                    continue
                eff = "none"
            params: dict = dict(config.head_params.get(n, {}))
            if spec.seed_param:
                params[spec.seed_param] = config.seed
            if eff == "weights":
                params["class_weight"] = "balanced"
            params.update({param: inputs[inp] for param, inp in spec.inputs.items()})
            tasks.append(_Task(f"{n}-{b}" if multi else n, n, eff, params, config.seed))
    if config.baseline:
        tasks.append(_Task(BASELINE, "logreg", "none", {"Cs": (1.0,), "max_iter": 100}))
    if not tasks:
        raise ConfigError(f"no head applies to these features: {'; '.join(f'{k}: {v}' for k, v in skipped.items())}")
    return tasks


def _standardised(prep: _Prepared) -> tuple[StandardScaler, dict, dict]:
    """The scaler fitted on train only, and the heads' inputs as they are and standardised."""
    scaler = StandardScaler().fit(prep.X["train"])
    raw = {"X_train": prep.X["train"], "X_val": prep.X["val"], "X_test": prep.X["test"], "Y_train": prep.Ys["train"], "Y_val": prep.Ys["val"]}
    scaled = {**raw, **{k: scaler.transform(raw[k]).astype(np.float32) for k in ("X_train", "X_val", "X_test")}}
    return scaler, raw, scaled


def _fit_all(tasks: list[_Task], raw: dict, scaled: dict, config: HeadsConfig, n_items: int, dim: int):
    """Fit every task (in parallel when asked), yielding results as they finish; heads that
    standardise get ``scaled``, the others ``raw``.

    Returns (jobs, threads per job, the stream of results).
    """
    jobs = _job_count(config, len(tasks))
    threads = max(1, cpu_count() // jobs)
    log.info("training %d head(s) on %d x %d features, %d at a time, %d thread(s) each", len(tasks), n_items, dim, jobs, threads)
    tasks = _in_parts(tasks, jobs)

    def data_for(t: _Task) -> dict:
        return scaled if get_head_spec(t.head).standardise and config.standardise else raw

    if jobs == 1:
        stream = (_fit_task(t, data_for(t), threads) for t in tasks)
    else:
        from joblib import Parallel, delayed

        stream = Parallel(n_jobs=jobs, backend="loky", return_as="generator_unordered")(
            delayed(_fit_in_job)(t, data_for(t), threads) for t in tasks
        )
    return jobs, threads, _joined(stream, data_for)


def _score_baseline(r: dict, prep: _Prepared) -> dict:
    P_val, P_test, Yte = r["P_val"], r["P_test"], prep.Ys["test"]
    return {
        "description": "one-vs-rest LogisticRegression(), scikit-learn defaults, standardised features",
        "fit_seconds": r["fit_seconds"],
        "val": {"map_macro": macro_average_precision(prep.Ys["val"], P_val)},
        "test": {"at_0.5": multilabel_metrics(Yte, P_test, fixed(len(prep.genres)).apply(P_test))},
    }


def run_heads(
    features: FeatureSet,
    out: str | Path,
    config: HeadsConfig = HeadsConfig(),
    header: StoreHeader | None = None,
    text_encoder: TextEncoder | None = None,
    progress: ProgressFn | None = None,
    run_info: Mapping | None = None,
) -> dict:
    """Train, tune and compare heads; write the leaderboard and one directory per head.

    The steps: prepare (split, genres), gather the runner inputs the heads' registry entries ask
    for, build the tasks, fit them, then per head tune thresholds on validation, score on test and
    save; finally write results.json and results.csv.

    Args:
        features: the items (a store's ``load()``, or a fused set).
        out: run directory (created); gets results.json, results.csv, split.csv when the split
            is made here, and ``<head>/`` per head.
        config: what to train and how.
        header: the store header of ``features``; saved with each head so that prediction
            refuses features from another encoder, and used to rebuild the encoder's text tower
            for ``zeroshot`` and the chain order.
        text_encoder: ``encode_texts`` of the encoder that made ``features`` (skips rebuilding it
            from ``header``; tests pass a stub).
        progress: called as ``progress("heads", done, total)``.
        run_info: extra fields for every saved head's run.json (fused runs record their stores).

    Returns:
        The results dict also written to ``results.json``.

    Example:
        >>> store = FeatureStore("posters.h5")  # doctest: +SKIP
        >>> res = run_heads(store.load(), "runs/", HeadsConfig(), header=store.header)
        >>> res["best"], res["heads"][res["best"]]["test"]["tuned"]["map_macro"]
    """
    config.validate()
    progress = progress or null_progress
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fs = features
    names = [n for n in config.heads if n != ENSEMBLE] or list(HEADS)
    starting = _start_jobs(names, config)
    try:
        prep = _prepare(fs, config, out)
        want_ensemble = not config.heads or ENSEMBLE in config.heads
        names, skipped, inputs, chain_record = _runner_inputs(names, prep, fs, config, header, text_encoder)
        tasks = _build_tasks(names, inputs, config, skipped)
        scaler, raw, scaled = _standardised(prep)  # while the jobs start: they wait for nothing else
    finally:
        if starting is not None:
            starting.join()  # the jobs are up; on an error here, never left starting behind
    jobs, threads, stream = _fit_all(tasks, raw, scaled, config, *fs.X.shape)
    progress("heads", 0, len(tasks))
    t_start = time.perf_counter()
    entries: dict[str, dict] = {}
    baseline = None
    member_probas: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for done, r in enumerate(stream, start=1):
        task: _Task = r["task"]
        if r["unconverged"]:
            # The baseline keeps scikit-learn's max_iter=100 on purpose: it is the untuned reference.
            (log.info if task.entry == BASELINE else log.warning)(
                "%s: the solver stopped before converging in %d fit(s)", task.entry, r["unconverged"]
            )
        if task.entry == BASELINE:
            baseline = _score_baseline(r, prep)
        else:
            entries[task.entry] = _finish(task, r, get_head_spec(task.head), scaler, prep.genres, prep.Ys["val"], prep.Ys["test"],
                                          header, config, out, run_info)  # fmt: skip
            member_probas[task.entry] = (r["P_val"], r["P_test"])
            save_predictions(out / task.entry, fs.ids, prep.parts, r["P_val"], r["P_test"], prep.Y)
        progress("heads", done, len(tasks))
    wall = time.perf_counter() - t_start

    order = sorted(entries, key=lambda e: list(HEADS).index(entries[e]["head"]))
    entries = {e: entries[e] for e in order}
    if want_ensemble and len(entries) >= 2:
        members = {e: member_probas[e] for e in entries}  # leaderboard order: ties go to the earlier head
        entries[ENSEMBLE] = _ensemble_step(members, prep.genres, prep.Ys["val"], prep.Ys["test"], header, config, out, run_info)
        P_val, P_test = entries[ENSEMBLE].pop("_P")
        save_predictions(out / ENSEMBLE, fs.ids, prep.parts, P_val, P_test, prep.Y)
    best = max(entries, key=lambda e: (entries[e]["val"]["map_macro"] or -1.0)) if entries else None
    results = {
        "genrekit_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": {**asdict(config), "jobs_used": jobs, "threads_per_job": threads},
        "features": {"n_items": int(len(fs.X)), "dim": int(fs.X.shape[1]), "store_header": header.to_json() if header else None},
        "split": {
            "source": prep.split_source,
            "file": "split.csv" if prep.split_source == "stratified" else None,
            "counts": {p: int(prep.parts[p].sum()) for p in PARTS},
            "warnings": split_warnings(fs.Y, prep.split, fs.genres),
        },
        "genres": prep.genres,
        "genre_counts": {p: dict(zip(prep.genres, prep.Ys[p].sum(axis=0).tolist())) for p in PARTS},
        "dropped_genres": prep.dropped,
        "skipped_heads": skipped,
        "chain_order": chain_record,
        "best": best,
        "best_rule": "highest validation map_macro",
        "baseline": baseline,
        "wall_seconds": wall,
        "heads": entries,
    }
    if len(config.balance) > 1:
        results["balance_effect"] = _balance_effect(entries)
    _write_results(out, results)
    return results


def _write_results(out: Path, results: dict) -> None:
    write_json(out / RESULTS_FILE, results)
    _write_csv(out / RESULTS_CSV, results["heads"], results["baseline"])


def _finish(task, r, spec, scaler, genres, Yva, Yte, header, config, out, run_info=None) -> dict:
    """Tune thresholds on validation, score on test, save the head; the results entry."""
    card = score(Yva, r["P_val"], Yte, r["P_test"], genres, config.threshold, config.min_threshold_positives)
    th = card.thresholds
    entry = {
        "head": task.head,
        "balance": task.balance,
        "description": spec.description,
        "fit_seconds": r["fit_seconds"],
        "predict_seconds": r["predict_seconds"],
        "fitted": _fitted_summary(r["head"]),
        "notes": grid_notes(r["head"]) + flat_note(r["P_test"]),
        **_card_fields(card),
        "dir": task.entry,
    }
    model = Pipeline([("scale", scaler), ("head", r["head"])]) if spec.standardise and config.standardise else r["head"]
    info = {k: entry[k] for k in ("balance", "description", "fitted", "fit_seconds", "val", "test")}
    info["config"] = asdict(config)
    info.update(run_info or {})
    SavedHead(task.head, model, genres, th, header, info).save(out / task.entry)
    return entry


def _ensemble_step(members: dict, genres, Yva, Yte, header, config, out, run_info=None) -> dict:
    """Greedy ensemble selection over the fitted heads' validation probabilities; thresholds tuned on
    validation; saved as member names and weights; the results entry (as for any head)."""
    t0 = time.perf_counter()
    weights, val_map, curve = greedy_selection(Yva, {e: p[0] for e, p in members.items()})
    total = sum(weights.values())
    P_val = sum(w * members[e][0] for e, w in weights.items()) / total
    P_test = sum(w * members[e][1] for e, w in weights.items()) / total
    card = score(Yva, P_val, Yte, P_test, genres, config.threshold, config.min_threshold_positives, val_map=val_map)
    th = card.thresholds
    entry = {
        "head": ENSEMBLE,
        "balance": "-",
        "description": ENSEMBLE_DESCRIPTION,
        "fit_seconds": time.perf_counter() - t0,
        "predict_seconds": 0.0,
        "fitted": {"members": weights, "val_map_by_round": curve},
        "notes": flat_note(P_test),
        **_card_fields(card),
        "dir": ENSEMBLE,
    }
    info = {k: entry[k] for k in ("balance", "description", "fitted", "fit_seconds", "val", "test")}
    save_ensemble(Path(out) / ENSEMBLE, weights, genres, th, header, {**info, "config": asdict(config), **(run_info or {})})
    return {**entry, "_P": (P_val, P_test)}




def save_predictions(directory: Path, ids, parts: Mapping[str, np.ndarray], P_val, P_test, Y: np.ndarray) -> None:
    """Per-item validation and test probabilities, and the labels of every part, for ``genrekit report``
    (:func:`genrekit.rundir.save_part_predictions`, beside the saved head)."""
    ids = np.asarray([str(i) for i in ids])
    save_part_predictions(directory, {p: ids[parts[p]] for p in PARTS}, {p: np.asarray(Y[parts[p]]) for p in PARTS}, P_val, P_test)


def _card_fields(card) -> dict:
    """A head's results fields from its scorecard (the keys results.json has always had)."""
    c = card.to_json()
    return {k: c[k] for k in ("thresholds", "threshold_fallback", "val", "test", "rules", "per_genre", "skipped_for_ranking")}


def _balance_effect(entries: dict) -> dict:
    """Per head: test macro F1 (tuned and at 0.5) and macro recall under each balance mode."""
    eff: dict[str, dict] = {}
    for e in entries.values():
        t = e["test"]
        eff.setdefault(e["head"], {})[e["balance"]] = {
            "f1_macro_tuned": t["tuned"]["f1_macro"],
            "f1_macro_at_0.5": t["at_0.5"]["f1_macro"],
            "recall_macro_at_0.5": t["at_0.5"]["recall_macro"],
        }
    return eff


def _write_csv(path: Path, entries: Mapping[str, dict], baseline: Mapping | None) -> None:
    """One row per head (and the baseline), a column per metric of results.json.

    Test metrics tuned on validation are plain keys (``f1_micro``), at 0.5 ``<key>_at_0.5``,
    validation ones ``val_<key>``; the baseline has no tuned thresholds, so its tuned cells are empty.
    """
    test_keys = list(METRIC_KEYS)
    val_keys = list(dict.fromkeys(k for e in entries.values() for k in e["val"]))
    cols = ["entry", "head", "balance", *test_keys, *(f"{k}_at_0.5" for k in test_keys), *(f"val_{k}" for k in val_keys),
            "fit_seconds", "predict_seconds"]  # fmt: skip
    rows = [
        {"entry": name, "head": e["head"], "balance": e["balance"], **e["test"]["tuned"],
         **{f"{k}_at_0.5": v for k, v in e["test"]["at_0.5"].items()}, **{f"val_{k}": v for k, v in e["val"].items()},
         "fit_seconds": round(e["fit_seconds"], 3), "predict_seconds": round(e["predict_seconds"], 3)}
        for name, e in entries.items()
    ]  # fmt: skip
    if baseline is not None:
        rows.append({"entry": BASELINE, "head": "logreg", "balance": "none", **{f"{k}_at_0.5": v for k, v in baseline["test"]["at_0.5"].items()},
                     **{f"val_{k}": v for k, v in baseline["val"].items()}, "fit_seconds": round(baseline["fit_seconds"], 3)})  # fmt: skip
    with atomic_open(path, newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, restval="")
        w.writeheader()
        w.writerows({k: r[k] for k in cols if k in r} for r in rows)
