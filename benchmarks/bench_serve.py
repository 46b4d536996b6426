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

Two more measurements, on the last run given:

- ``--explainers N``: /api/predict at 8 clients with and without N more clients asking
  /api/explain for saliency maps all the time, in alternating rounds: p95 side by side (the goal:
  the same within 20 %), and how many maps were finished meanwhile.
- ``--flood``: 200 requests in 20 s, each a 10 MB upload, from 16 senders: the answers by status,
  and the server's peak memory (RSS of its process) and peak temporary disk (its TMPDIR), sampled
  every 50 ms.
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import socket
import tempfile
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


def start(run: Path, log: Path, tmpdir: str | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "cli"), os.environ.get("PYTHONPATH", "")])}
    if tmpdir:
        env["TMPDIR"] = tmpdir
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


def load_cell(url: str, posters: list[tuple[str, bytes]], clients: int, max_requests: int, max_seconds: float,
              endpoint: str = "/api/predict", stop: threading.Event | None = None) -> tuple[list[float], float, int]:  # fmt: skip
    """Latencies (s) of the requests sent by ``clients`` threads, the wall time, and the errors
    (``stop``: end early when it is set)."""
    lat: list[float] = []
    errors = 0
    lock = threading.Lock()
    counter = iter(range(max_requests))
    deadline = time.perf_counter() + max_seconds

    def worker() -> None:
        nonlocal errors
        with httpx.Client(timeout=300) as c:
            while time.perf_counter() < deadline and not (stop and stop.is_set()):
                with lock:
                    k = next(counter, None)
                if k is None:
                    return
                name, data = posters[k % len(posters)]
                t = time.perf_counter()
                try:
                    ok = c.post(url + endpoint, files={"image": (name, data, "image/jpeg")}).status_code == 200
                except httpx.HTTPError:  # a timeout counts as an error, with its time
                    ok = False
                dt = time.perf_counter() - t
                with lock:
                    lat.append(dt)
                    errors += not ok

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
    ap.add_argument("--explainers", type=int, default=0, help="Also: /api/predict at 8 clients beside this many /api/explain clients (last run).")
    ap.add_argument("--flood", action="store_true", help="Also: 200 uploads of 10 MB in 20 s (last run): memory and temporary disk.")
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
    name, run, images = runs[-1]
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[: args.n_posters]
    posters = [(p.name, p.read_bytes()) for p in files]
    if args.explainers:
        print()
        print(with_explains(name, run, posters, args))
    if args.flood:
        print()
        print(flood(name, run, posters))
    print(f"\nload average after: {os.getloadavg()[0]:.1f} (before: {load_before[0]:.1f}); {os.cpu_count()} cores")


def with_explains(name: str, run: Path, posters: list[tuple[str, bytes]], args) -> str:
    """/api/predict at 8 clients, alone and beside ``args.explainers`` clients asking for maps."""
    proc, url = start(run, CACHE / "serve-explains.log")
    try:
        load_cell(url, posters, 1, 3, 60)
        load_cell(url, posters, 1, 1, 300, endpoint="/api/explain")  # warm the explainer
        cells = {False: [], True: []}
        maps = 0
        for r in range(2 * args.rounds):
            busy = r % 2 == 1
            stop = threading.Event()
            side: list = []
            if busy:
                side_thread = threading.Thread(target=lambda: side.append(load_cell(url, posters, args.explainers, 10_000, 3600, "/api/explain", stop)))
                side_thread.start()
                time.sleep(2.0)  # the explanations are under way
            lat, _, err = load_cell(url, posters, 8, args.requests // args.rounds, args.seconds / args.rounds)
            cells[busy] += lat
            if busy:
                stop.set()
                side_thread.join()
                maps += len(side[0][0]) - side[0][2]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    alone, beside = (np.percentile(np.asarray(cells[b]) * 1000, 95) for b in (False, True))
    rows = [[name, "alone", len(cells[False]), f"{np.percentile(np.asarray(cells[False]) * 1000, 50):.0f}", f"{alone:.0f}", "1.00x", "-"],
            [name, f"{args.explainers} explain clients", len(cells[True]), f"{np.percentile(np.asarray(cells[True]) * 1000, 50):.0f}",
             f"{beside:.0f}", f"{beside / alone:.2f}x", maps]]  # fmt: skip
    return "/api/predict at 8 clients, with and without saliency requests running\n\n" + md_table(
        ["run", "beside it", "predictions", "p50 ms", "p95 ms", "p95 vs alone", "maps finished"], rows)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def tmp_bytes(pid: int, path: str) -> int:
    """Bytes in files under ``path``, listed or open in process ``pid`` (unlinked spool files too)."""
    seen: dict[tuple[int, int], int] = {}
    for root, _, names in os.walk(path):
        for n in names:
            try:
                st = os.stat(os.path.join(root, n))
                seen[(st.st_dev, st.st_ino)] = st.st_size
            except OSError:
                pass
    fds = f"/proc/{pid}/fd"
    for fd in os.listdir(fds):
        try:
            if os.readlink(os.path.join(fds, fd)).startswith(path):
                st = os.stat(os.path.join(fds, fd))
                seen[(st.st_dev, st.st_ino)] = st.st_size
        except OSError:
            pass
    return sum(seen.values())


def flood(name: str, run: Path, posters: list[tuple[str, bytes]], n: int = 200, seconds: float = 20.0, mb: float = 10.0) -> str:
    """``n`` uploads of ``mb`` MB in ``seconds`` from 16 senders; peak RSS and temporary disk."""
    from PIL import Image

    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (4000, 4000, 3), dtype=np.uint8)
    lo, hi = 500, 4000
    while hi - lo > 8:  # the largest square of noise (which compresses badly) whose JPEG is under mb MB
        side = (lo + hi) // 2
        buf = io.BytesIO()
        Image.fromarray(noise[:side, :side]).save(buf, "JPEG", quality=95)
        lo, hi = (side, hi) if buf.tell() <= mb * 2**20 - 4096 else (lo, side)
    buf = io.BytesIO()
    Image.fromarray(noise[:lo, :lo]).save(buf, "JPEG", quality=95)
    big = buf.getvalue()  # a whole, valid image: every request decodes it
    with tempfile.TemporaryDirectory(prefix="bench-serve-tmp-") as tmp:
        proc, url = start(run, CACHE / "serve-flood.log", tmpdir=tmp)
        try:
            load_cell(url, posters, 1, 3, 60)
            base_rss = rss_kb(proc.pid)
            peaks = {"rss": base_rss, "tmp": 0}
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    peaks["rss"] = max(peaks["rss"], rss_kb(proc.pid))
                    peaks["tmp"] = max(peaks["tmp"], tmp_bytes(proc.pid, tmp))
                    time.sleep(0.05)

            sampler = threading.Thread(target=sample)
            sampler.start()
            statuses: collections.Counter = collections.Counter()
            lock = threading.Lock()
            t0 = time.perf_counter()

            def sender(k: int) -> None:
                with httpx.Client(timeout=120) as c:
                    for j in range(k, n, 16):
                        wait = t0 + j * seconds / n - time.perf_counter()
                        if wait > 0:
                            time.sleep(wait)
                        try:
                            code = c.post(url + "/api/predict", files={"image": ("big.jpg", big, "image/jpeg")}).status_code
                        except httpx.HTTPError as e:
                            code = type(e).__name__
                        with lock:
                            statuses[code] += 1

            threads = [threading.Thread(target=sender, args=(k,)) for k in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            time.sleep(1.0)
            done.set()
            sampler.join()
            end_rss, end_tmp = rss_kb(proc.pid), tmp_bytes(proc.pid, tmp)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    rows = [[name, n, f"{len(big) / 2**20:.1f}", f"{wall:.1f}", ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items(), key=str)),
             f"{base_rss / 1024:.0f}", f"{peaks['rss'] / 1024:.0f}", f"{end_rss / 1024:.0f}", f"{peaks['tmp'] / 2**20:.1f}", f"{end_tmp / 2**20:.1f}"]]  # fmt: skip
    return f"{n} uploads of {mb:g} MB in {seconds:g} s from 16 senders (server RSS and TMPDIR sampled every 50 ms)\n\n" + md_table(
        ["run", "requests", "MB each", "wall s", "answers", "RSS before MB", "peak RSS MB", "RSS after MB", "peak tmp MB", "tmp after MB"], rows)


if __name__ == "__main__":
    main()
