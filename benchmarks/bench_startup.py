"""How fast the CLI answers: `--help` of every command, and the first thing `predict` shows.

`genrekit --help` and each `genrekit COMMAND --help` are timed as a user runs them (a new
process each time; median of --rounds). `genrekit predict --run RUN POSTER` runs in a
pseudo-terminal, as in a shell, and the script records when the first byte appears (the spinner
saying what it loads) and when the first line of the answer does (the poster's name heading its
table), both from the moment the process starts.

    python benchmarks/bench_startup.py                       # --help only
    python benchmarks/bench_startup.py --run runs/ --poster ../shared/data/movie_posters/images/10307.jpg

The machine is shared: the load average at the start and end is printed with the numbers.
"""

from __future__ import annotations

import argparse
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import md_table, median, print_header, spread

COMMANDS = ("", "data", "data split", "backbones", "extract", "store", "store info", "heads", "predict", "evaluate",
            "zeroshot", "finetune", "serve", "report", "explain", "leaderboard")  # fmt: skip


def genrekit() -> list[str]:
    exe = shutil.which("genrekit", path=str(Path(sys.executable).parent)) or shutil.which("genrekit")
    return [exe] if exe else [sys.executable, "-m", "genrekit_cli.main"]


def time_help(args: list[str], rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run([*genrekit(), *args, "--help"], capture_output=True, check=True)
        out.append(time.perf_counter() - t0)
    return out


def first_output(argv: list[str], marker: bytes, timeout: float = 600.0) -> tuple[float | None, float | None, int]:
    """Seconds to the first byte and to ``marker`` of ``argv`` run in a pseudo-terminal, and its exit code."""
    main, sub = pty.openpty()
    env = {**os.environ, "COLUMNS": "100", "TERM": os.environ.get("TERM", "xterm")}
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=sub, stdout=sub, stderr=sub, env=env, close_fds=True)
    os.close(sub)
    first = seen = None
    buf = b""
    while time.perf_counter() - t0 < timeout:
        ready, _, _ = select.select([main], [], [], 0.05)
        if ready:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            now = time.perf_counter() - t0
            first = first if first is not None else now
            buf += chunk
            if seen is None and marker in buf:
                seen = now
        elif proc.poll() is not None:
            break
    code = proc.wait()
    os.close(main)
    return first, seen, code


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="Runs of each --help (the median is reported).")
    ap.add_argument("--run", help="A run directory for `genrekit predict` (skipped without one).")
    ap.add_argument("--poster", help="The poster `predict` reads.")
    ap.add_argument("--predict-rounds", type=int, default=2)
    a = ap.parse_args()
    print_header("CLI start-up", f"load average at start {loadavg()} (1, 5, 15 min)")
    rows = []
    for c in COMMANDS:
        ts = time_help(c.split(), a.rounds)
        rows.append([f"`genrekit {c + ' ' if c else ''}--help`", f"{median(ts):.2f}", spread(ts, ".2f")])
    print(md_table(["command", "median s", "min-max s"], rows))
    if a.run and a.poster:
        print()
        rows = []
        for _ in range(a.predict_rounds):
            first, seen, code = first_output([*genrekit(), "predict", "--run", a.run, a.poster], Path(a.poster).name.encode())
            rows.append([f"{first:.2f}" if first is not None else "-", f"{seen:.2f}" if seen is not None else "-", code])
        print(md_table(["first byte on the terminal (spinner) s", "first line of the answer s", "exit code"], rows))
    print(f"\nload average at end {loadavg()}")


if __name__ == "__main__":
    main()
