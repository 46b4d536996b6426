"""What every benchmark script shares: the machine line, interleaved timing, tables, cached stores.

Benchmarks run on a shared, noisy machine, so competing variants are timed in alternating rounds
(the order rotates every round, so a slow spell hurts each variant alike) and medians are reported.
"""

from __future__ import annotations

import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from genrekit.system import cpu_count

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SHARED = REPO.parent / "shared"
DATA = SHARED / "data"
POSTERS = DATA / "movie_posters" / "labels.csv"
PLOTS = DATA / "imdb_plots" / "plots.csv"
MOBILENET = SHARED / "weights" / "mobilenet_v2-coralquant-dequant-tv.pth"
# Stores the scripts build themselves when no --store is given (git-ignored).
CACHE = BENCH / ".cache"


def cpu_model() -> str:
    """``lscpu``'s model name (the kernel's when lscpu is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def command() -> str:
    """The exact command that ran this script, relative to the repository root."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(REPO) if script.is_relative_to(REPO) else script
    return shlex.join(["python", str(shown), *sys.argv[1:]])


def machine_lines(extra: str = "") -> list[str]:
    """The lines that head every result table: machine, date, versions, command."""
    import numpy

    versions = f"Python {platform.python_version()}, numpy {numpy.__version__}"
    for module, name in (("torch", "torch"), ("sklearn", "scikit-learn"), ("faiss", "faiss"), ("h5py", "h5py")):
        if module in sys.modules:
            versions += f", {name} {getattr(sys.modules[module], '__version__', '?')}"
    lines = [
        f"- machine: {cpu_model()}, {cpu_count()} cores, {platform.system()} {platform.release()}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"- versions: {versions}",
        f"- command: `{command()}`",
    ]
    return lines + ([f"- setup: {extra}"] if extra else [])


def print_header(title: str, extra: str = "") -> None:
    print(f"# {title}")
    print("\n".join(machine_lines(extra)))
    print()


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; floats are printed as given (format them before)."""
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def interleaved(variants: Mapping[str, Callable[[], object]], rounds: int, warmup: bool = True) -> dict[str, list[float]]:
    """Seconds per call of each variant, timed in ``rounds`` alternating rounds.

    The order of the variants rotates by one every round, so drift on a shared machine (another
    process starting, the CPU clocking down) spreads over all of them instead of one.
    """
    names = list(variants)
    if warmup:
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def spread(xs: Sequence[float], fmt: str = ".3g") -> str:
    """``min-max`` of a list of numbers, for the 'how noisy was it' column."""
    return f"{min(xs):{fmt}}-{max(xs):{fmt}}"


def build_store(
    name: str,
    backbone: str,
    data: Path,
    weights: str | None = None,
    modality: str = "image",
    limit: int | None = None,
    layers: str = "last",
) -> Path:
    """A store in :data:`CACHE`, extracted the first time (resumed if an earlier run was cut off).

    ``extract`` refuses to extend a store made by another encoder, weights or preprocessing, so a
    cached store can never be silently stale.
    """
    from genrekit.errors import StoreMismatchError
    from genrekit.extraction import ExtractConfig, extract

    CACHE.mkdir(parents=True, exist_ok=True)
    out = CACHE / f"{name}.h5"
    config = ExtractConfig(backbone=backbone, weights=weights, data=str(data), out=str(out), modality=modality, limit=limit,
                           layers=layers)
    t0 = time.perf_counter()
    try:
        rep = extract(config)  # a no-op when the store is complete and made the same way
    except StoreMismatchError as e:
        print(f"rebuilding {out.name}: {e}", flush=True)
        out.unlink(missing_ok=True)
        shutil.rmtree(str(out) + ".parts", ignore_errors=True)
        rep = extract(config)
    if rep.encoded:
        print(f"built {out.relative_to(REPO)}: {rep.encoded} {modality}s encoded in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def poster_store(path: str | None, layers: str = "last") -> Path:
    """``--store`` when given, else the real MobileNetV2 store of the shared posters, cached:
    ``layers="all"`` is what ``genrekit extract --backbone mobilenet_v2`` writes by default (six
    stages, mean + std), ``"last"`` the pooled embedding."""
    if path:
        return Path(path)
    if not POSTERS.is_file() or not MOBILENET.is_file():
        sys.exit(f"no --store given and the shared posters/weights are missing ({POSTERS}, {MOBILENET})")
    name = "posters_mobilenet_v2" if layers == "last" else f"posters_mobilenet_v2_{'layers' if layers == 'all' else layers.replace(',', '-')}"
    return build_store(name, "mobilenet_v2", POSTERS, weights=str(MOBILENET), layers=layers)


# -- heads: the leaderboard columns every accuracy table shows ---------------------------------
HEAD_COLUMNS = ["F1 micro", "F1 macro", "mAP", "ROC AUC macro", "Hamming loss"]
HEAD_KEYS = ["f1_micro", "f1_macro", "map_macro", "roc_auc_macro", "hamming_loss"]


def fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:.{digits}f}"


def quiet_baseline() -> None:
    """Silence the ConvergenceWarning of the runner's baseline, here and in its worker processes.

    The baseline is scikit-learn's LogisticRegression defaults on purpose (max_iter=100), which
    stop before converging on these features; the warning says nothing the table does not.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    # Worker processes read -W filters before sklearn is imported, so match the message instead.
    os.environ["PYTHONWARNINGS"] = "ignore:lbfgs failed to converge"


def head_rows(results: dict) -> list[tuple[str, dict, float, float]]:
    """``(entry, tuned test metrics, fit s, predict s)`` per head of a ``run_heads`` result, the
    baseline last (its set metrics are at 0.5: it has no tuned thresholds)."""
    rows = [(name, e["test"]["tuned"], e["fit_seconds"], e["predict_seconds"]) for name, e in results["heads"].items()]
    if results.get("baseline"):
        b = results["baseline"]
        rows.append(("baseline (sklearn defaults, at 0.5)", b["test"]["at_0.5"], b["fit_seconds"], float("nan")))
    return rows


def reference_probe(fs, min_films: int = 50, C: float = 0.05) -> dict:
    """The linear probe of ``movie_posters/SOURCE.md``, on these features, to compare with its numbers.

    Recipe: StandardScaler + one-vs-rest LogisticRegression(C=0.05); train on ids with id % 5 != 0,
    test on the others; the genres with at least ``min_films`` films (20 on the shared posters).
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score, roc_auc_score
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    test = np.array([int(i) % 5 == 0 for i in fs.ids])
    keep = fs.Y.sum(axis=0) >= min_films
    Y = fs.Y[:, keep]
    t0 = time.perf_counter()
    probe = make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(C=C, max_iter=1000)))
    probe.fit(fs.X[~test], Y[~test])
    fit_s = time.perf_counter() - t0
    P = probe.predict_proba(fs.X[test])
    return {
        "genres": int(keep.sum()),
        "test_items": int(test.sum()),
        "roc_auc_macro": float(roc_auc_score(Y[test], P, average="macro")),
        "map_macro": float(average_precision_score(Y[test], P, average="macro")),
        "chance_map": float(Y[test].mean(axis=0).mean()),
        "fit_seconds": fit_s,
    }
