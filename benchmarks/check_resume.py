"""Kill `genrekit extract` with SIGKILL at random moments, re-run it, and compare with a clean run.

    python benchmarks/check_resume.py --reference posters.h5        # reuse a finished store
    python benchmarks/check_resume.py --kills 5 --seed 1
    python benchmarks/check_resume.py --engine ray --limit 600 --kills 1   # the driver of a Ray run

It runs the real CLI command on the shared posters, kills it `--kills` times after a random
number of seconds, re-runs it to the end, then checks: every id exactly once, the same ids in the
same order as the reference (the same ids in any order with ``--engine ray``, which joins rows by
id), embeddings equal to float tolerance, nothing re-encoded twice (each run's "already done"
count only grows). With ``--engine ray`` the killed driver's whole process group goes, the local
Ray it started included.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from genrekit.store import FeatureStore

SHARED = Path(__file__).resolve().parents[2] / "shared"
POSTERS = SHARED / "data" / "movie_posters" / "labels.csv"
WEIGHTS = SHARED / "weights" / "mobilenet_v2-coralquant-dequant-tv.pth"


def command(out: Path, engine: str = "local", limit: int | None = None) -> list[str]:
    exe = Path(sys.executable).with_name("genrekit")
    return [str(exe), "extract", "--backbone", "mobilenet_v2", "--weights", str(WEIGHTS), "--data", str(POSTERS), "--out", str(out),
            "--engine", engine, *(["--limit", str(limit)] if limit else [])]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", type=Path, help="a store made by an uninterrupted run of the same command")
    ap.add_argument("--kills", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--engine", default="local", choices=("local", "ray"))
    ap.add_argument("--limit", type=int, help="only the first N posters")
    ap.add_argument("--min-delay", type=float, default=5.0)
    ap.add_argument("--max-delay", type=float, default=40.0)
    args = ap.parse_args()
    cmd = lambda out: command(out, args.engine, args.limit)  # noqa: E731
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="genrekit-resume-"))
    ref = args.reference
    if ref is None:
        ref = tmp / "reference.h5"
        subprocess.run(command(ref, "local", args.limit), check=True, capture_output=True)
    out = tmp / "killed.h5"
    for k in range(args.kills):
        p = subprocess.Popen(cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        delay = rng.uniform(args.min_delay, args.max_delay)
        time.sleep(delay)
        os.killpg(p.pid, signal.SIGKILL)  # the driver and everything it started
        p.wait()
        parts = out.with_name(out.name + ".parts")
        n = len(list(parts.glob("part-*.npz"))) if parts.exists() else 0
        print(f"kill {k + 1}: SIGKILL after {delay:.1f}s; {n} part files on disk; store exists: {out.exists()}", flush=True)
    done = subprocess.run(cmd(out), check=True, capture_output=True, text=True).stdout
    m = re.search(r"(\d+) rows \((\d+) encoded now, (\d+) already done\)", " ".join(done.split()))
    print("final run:", m.group(0) if m else done.strip()[-200:])
    a, b = FeatureStore(ref).load(), FeatureStore(out).load()
    unique = len(set(b.ids)) == len(b.ids)
    if args.engine == "ray":  # rows arrive in any order; compare by id
        oa, ob = np.argsort(a.ids), np.argsort(b.ids)
        a.ids, a.X, b.ids, b.X = a.ids[oa], a.X[oa], b.ids[ob], b.X[ob]
    same_order = list(a.ids) == list(b.ids)
    diff = float(np.abs(a.X - b.X).max()) if same_order else float("nan")
    print(f"rows {len(b.ids)} (reference {len(a.ids)}), unique ids: {unique}, same ids and order: {same_order}, "
          f"max |embedding difference|: {diff:.2e}")
    ok = unique and same_order and np.allclose(a.X, b.X, rtol=1e-4, atol=1e-4)
    print("RESUME CHECK", "PASSED" if ok else "FAILED")
    shutil.rmtree(tmp)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
