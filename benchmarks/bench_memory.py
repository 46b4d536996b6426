"""Peak memory of extraction: 600 posters against 6,000 (goal: ratio <= 1.1).

Each size runs in a fresh subprocess (so no earlier run's peak or allocator state carries over)
that extracts the first N real posters into a new store and reports its own peak resident set
(``VmHWM`` from /proc/self/status) and the largest peak of its decode workers
(``getrusage(RUSAGE_CHILDREN).ru_maxrss``). Extraction streams batches into part files, so its
memory should not grow with the collection; the ratio says whether it does.

Each child also records its RSS at every 10% of the collection encoded (a leak grows along it;
a one-off allocation does not). With ``--trace``, it also runs tracemalloc and prints the Python
allocations that grew the most from 10% encoded to the end, to find what grows.

    python benchmarks/bench_memory.py                   # mobilenet_v2, 600 vs 6,000 posters (~4-7 min here)
    python benchmarks/bench_memory.py --quick           # colorstats, 600 vs 6,000 (~1 min)
    python benchmarks/bench_memory.py --sizes 600 6000 --trace
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import MOBILENET, POSTERS, md_table, print_header

GOAL = 1.1


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child(n: int, backbone: str, weights: str | None, trace: bool) -> None:
    """Extract ``n`` posters and print one JSON line with the memory measurements."""
    import time
    import tracemalloc

    from genrekit.extraction import ExtractConfig, extract

    if trace:
        tracemalloc.start(10)
    start_rss = _status_kb("VmRSS")
    snaps = {}
    trajectory: dict[int, int] = {}  # percent of the collection encoded -> VmRSS kB

    def progress(stage: str, done: int, total: int | None) -> None:
        if not total or not done:
            return
        pct = 10 * (10 * done // total)  # record at the first batch past each 10%
        if pct not in trajectory:
            trajectory[pct] = _status_kb("VmRSS")
            if trace and pct >= 10 and "early" not in snaps:
                snaps["early"] = tracemalloc.take_snapshot()

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rep = extract(ExtractConfig(backbone=backbone, weights=weights, data=str(POSTERS), out=f"{tmp}/s.h5", limit=n), progress)
    out = {
        "n": n,
        "rows": rep.rows,
        "seconds": time.perf_counter() - t0,
        "rss_at_start_kb": start_rss,
        "peak_kb": _status_kb("VmHWM"),
        "rss_by_percent_kb": {str(k): v for k, v in sorted(trajectory.items())},
        "workers_peak_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    }
    if trace:
        end = tracemalloc.take_snapshot()
        _, traced_peak = tracemalloc.get_traced_memory()
        out["traced_peak_kb"] = traced_peak // 1024
        if "early" in snaps:
            out["growth"] = [f"{s.size_diff / 1024:+.0f} KiB  {s.traceback.format()[-1].strip()}"
                             for s in end.compare_to(snaps["early"], "traceback")[:10]]  # fmt: skip
    print(json.dumps(out))


def measure(n: int, backbone: str, weights: str | None, trace: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", str(n), "--backbone", backbone]
    if weights:
        cmd += ["--weights", weights]
    if trace:
        cmd.append("--trace")
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode:
        sys.exit(f"child for {n} posters failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs=2, default=[600, 6000], metavar=("SMALL", "LARGE"))
    ap.add_argument("--backbone", default="mobilenet_v2")
    ap.add_argument("--weights", default=None, help="default: the shared MobileNetV2 weights for mobilenet_v2, else the backbone's")
    ap.add_argument("--trace", action="store_true", help="tracemalloc in the children: what grows")
    ap.add_argument("--quick", action="store_true", help="colorstats instead of mobilenet_v2 (no model: the pipeline alone)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.backbone = "colorstats"
    if args.weights is None and args.backbone == "mobilenet_v2" and MOBILENET.is_file():
        args.weights = str(MOBILENET)
    if args.child is not None:
        child(args.child, args.backbone, args.weights, args.trace)
        return

    print_header("bench_memory", f"{args.backbone}, weights {Path(args.weights).name if args.weights else 'default'}")
    small, large = (measure(n, args.backbone, args.weights, args.trace) for n in args.sizes)
    mib = 1024
    rows = [[r["n"], r["rows"], f"{r['seconds']:.0f}", f"{r['rss_at_start_kb'] / mib:.0f}",
             " / ".join(f"{r['rss_by_percent_kb'].get(p, 0) / mib:.0f}" for p in ("10", "50", "100")),
             f"{r['peak_kb'] / mib:.0f}", f"{r['workers_peak_kb'] / mib:.0f}"] for r in (small, large)]  # fmt: skip
    print(md_table(["posters", "rows stored", "seconds", "RSS after imports MiB", "RSS at 10 / 50 / 100% encoded MiB",
                    "peak RSS MiB (main)", "peak RSS MiB (decode worker)"], rows))  # fmt: skip
    ratio = large["peak_kb"] / small["peak_kb"]
    wratio = large["workers_peak_kb"] / max(small["workers_peak_kb"], 1)
    print(f"\npeak RSS {large['n']} / {small['n']} posters: main process {ratio:.3f}, decode worker {wratio:.3f} "
          f"(goal <= {GOAL}: {'met' if max(ratio, wratio) <= GOAL else 'MISSED'})")  # fmt: skip
    for r in (small, large):
        if "growth" in r:
            print(f"\ntracemalloc, {r['n']} posters: traced peak {r['traced_peak_kb'] / mib:.1f} MiB; grew most from 10% encoded to the end:")
            print("\n".join("  " + g for g in r["growth"]))


if __name__ == "__main__":
    main()
