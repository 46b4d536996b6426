"""`genrekit serve` on loopback: requests/s and p50/p95 latency of single-poster predictions.

For each run it starts `genrekit serve` as a subprocess on a free loopback port, waits for
/healthz, then sends POST /api/predict requests (one poster each, bytes held in memory) from 1
and from 8 concurrent clients (one keep-alive httpx client per thread). The concurrency levels
alternate in rounds, so a busy spell on the shared machine hurts both alike. Each cell stops at
--requests requests or --seconds seconds, whichever comes first. Load average is printed before
and after.

    python benchmarks/bench_serve.py                                   # the demo run, built in benchmarks/.cache
    python benchmarks/bench_serve.py --run mobilenet_v2=/work/stores-serve/runs_mnv2 \\
        --posters /work/shared/data/movie_posters/images               # plus a real MobileNetV2 run
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from _common import CACHE, REPO, md_table, print_header

CLI = [sys.executable, "-c", "from genrekit_cli.main import main; main()"]


def demo_run() -> tuple[Path, Path]:
    """The demo run (colorstats + logreg on `genrekit data demo`), built once in the cache."""
    root = CACHE / "serve_demo"
    runs, images = root / "runs", root / "data" / "images"
    if not (runs / "results.json").is_file():
        for args in (["data", "demo", "--out", str(root / "data")],
                     ["extract", "--backbone", "colorstats", "--data", str(root / "data" / "labels.csv"), "--out", str(root / "posters.h5")],
                     ["heads", "--store", str(root / "posters.h5"), "--head", "logreg", "--out", str(runs)]):  # fmt: skip
            subprocess.run(CLI + args, check=True, stdout=subprocess.DEVNULL)
    return runs, images


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(run: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "cli"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(CLI + ["serve", "--run", str(run), "--port", str(port)], stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while time.monotonic() - t0 < 600:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    proc.terminate()
    sys.exit(f"genrekit serve did not start:\n{log.read_text()}")


def load_cell(url: str, posters: list[tuple[str, bytes]], clients: int, max_requests: int, max_seconds: float) -> tuple[list[float], float, int]:
    """Latencies (s) of the requests sent by ``clients`` threads, the wall time, and the errors."""
    lat: list[float] = []
    errors = 0
    lock = threading.Lock()
    counter = iter(range(max_requests))
    deadline = time.perf_counter() + max_seconds

    def worker() -> None:
        nonlocal errors
        with httpx.Client(timeout=120) as c:
            while time.perf_counter() < deadline:
                with lock:
                    k = next(counter, None)
                if k is None:
                    return
                name, data = posters[k % len(posters)]
                t = time.perf_counter()
                r = c.post(url + "/api/predict", files={"image": (name, data, "image/jpeg")})
                dt = time.perf_counter() - t
                with lock:
                    lat.append(dt)
                    errors += r.status_code != 200

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, time.perf_counter() - t0, errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", default=[], help="NAME=RUN_DIR to serve (repeatable); the demo run is always included.")
    ap.add_argument("--posters", help="Folder of posters to send to the --run runs [default: the demo posters].")
    ap.add_argument("--n-posters", type=int, default=40, help="Distinct posters sent (cycled).")
    ap.add_argument("--clients", default="1,8", help="Concurrency levels.")
    ap.add_argument("--requests", type=int, default=200, help="Most requests per cell.")
    ap.add_argument("--seconds", type=float, default=30.0, help="Most seconds per cell.")
    ap.add_argument("--rounds", type=int, default=2, help="Alternating rounds per run (cells are merged).")
    args = ap.parse_args()
    levels = [int(c) for c in args.clients.split(",")]

    demo, demo_images = demo_run()
    runs = [("demo (colorstats + logreg)", demo, demo_images)]
    for spec in args.run:
        name, _, path = spec.partition("=")
        runs.append((name, Path(path), Path(args.posters) if args.posters else demo_images))
    load_before = os.getloadavg()
    print_header("genrekit serve on loopback", f"{len(levels)} concurrency levels {levels}, <= {args.requests} requests or "
                 f"{args.seconds:g} s per cell, {args.rounds} rounds; load average before: {load_before[0]:.1f}")  # fmt: skip
    rows = []
    for name, run, images in runs:
        files = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[: args.n_posters]
        posters = [(p.name, p.read_bytes()) for p in files]
        log = CACHE / f"serve-{abs(hash(name))}.log"
        CACHE.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        proc, url = start(run, log)
        startup = time.perf_counter() - t0
        try:
            load_cell(url, posters, 1, 5, 60)  # warm the connection and the model's caches
            cells: dict[int, tuple[list[float], float, int]] = {c: ([], 0.0, 0) for c in levels}
            for r in range(args.rounds):
                for c in levels[r % len(levels):] + levels[: r % len(levels)]:
                    lat, wall, err = load_cell(url, posters, c, args.requests // args.rounds, args.seconds / args.rounds)
                    a = cells[c]
                    cells[c] = (a[0] + lat, a[1] + wall, a[2] + err)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        base = None
        for c in levels:
            lat, wall, err = cells[c]
            rps = len(lat) / wall
            base = base or rps
            ms = np.asarray(lat) * 1000
            rows.append([name, c, len(lat), err, f"{rps:.1f}", f"{rps / base:.2f}x", f"{np.percentile(ms, 50):.0f}",
                         f"{np.percentile(ms, 95):.0f}", f"{startup:.0f}"])  # fmt: skip
        print(f"{name}: done", flush=True)
    print()
    print(md_table(["run", "clients", "requests", "errors", "requests/s", "vs 1 client", "p50 ms", "p95 ms", "start-up s"], rows))
    print(f"\nload average after: {os.getloadavg()[0]:.1f} (before: {load_before[0]:.1f}); {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
