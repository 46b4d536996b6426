"""Extraction on Ray against local extraction, on the same posters, and a paper estimate at scale.

On the first N shared posters with the real MobileNetV2 weights, in alternating rounds:
  1. ``--engine local`` (genrekit's own batch loop);
  2. ``--engine ray`` on a local Ray started once (as a running cluster would be): Ray Data
     decode tasks and one encoder actor, started per command (its start-up is counted).
It prints images/s of both, their ratio (goal >= 0.7), the steady-state ratio (from the first
encoded batch to the last, i.e. without the actor's start-up), and checks that both stores hold
the same ids and embeddings. Then, from per-image costs measured here (decode and preprocess on
one core), it estimates the time and the cost of 10 million posters on N GPUs.

    python benchmarks/bench_ray.py                       # 1,000 posters, 2 rounds
    python benchmarks/bench_ray.py --n 200 --rounds 1    # quick
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import MOBILENET, POSTERS, md_table, median, print_header

from genrekit.extraction import ExtractConfig, extract
from genrekit.extraction.core import decode_item
from genrekit.store import FeatureStore


def subset(n: int, folder: Path) -> Path:
    """The first ``n`` rows of the shared posters' manifest, with absolute image paths."""
    with open(POSTERS, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:n]
    for r in rows:
        r["image"] = str((POSTERS.parent / r["image"]).resolve())
    out = folder / "labels.csv"
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


def timed(config: ExtractConfig) -> tuple[float, float, str]:
    """(images/s of the whole command, images/s from the first encoded batch to the last, store path)."""
    marks: list[float] = []

    def progress(_stage, done, _total):
        if done:
            marks.append(time.perf_counter())

    t0 = time.perf_counter()
    rep = extract(config, progress=progress)
    total = time.perf_counter() - t0
    steady = (rep.encoded - 0) / (marks[-1] - marks[0]) if len(marks) > 1 and marks[-1] > marks[0] else float("nan")
    return rep.encoded / total, steady, rep.store


def decode_ms(manifest: Path, n: int = 200) -> float:
    """Milliseconds of one core to decode and preprocess one poster (the CPU work per image)."""
    import torch

    from genrekit.backbones import create_encoder
    from genrekit.data.manifest import read_manifest

    pre = create_encoder("mobilenet_v2", weights="none").preprocess
    paths = [s.image for s in read_manifest(manifest).samples[:n]]
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    for p in paths:
        decode_item(p, pre)
    return 1000 * (time.perf_counter() - t0) / len(paths)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--posters", type=float, default=10e6, help="collection size of the estimate")
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--gpu-images-per-s", type=float, default=2000.0,
                    help="images/s of one GPU model-only (ViT-L-14 bf16 on an H100, issue 14's target; measure with bench_gpu.py)")
    ap.add_argument("--cpus-per-gpu", type=int, default=16, help="decode cores beside each GPU")
    ap.add_argument("--usd-per-gpu-hour", type=float, default=3.0)
    args = ap.parse_args()
    from genrekit.extraction.ray_engine import init_ray

    print_header("bench_ray", f"{args.n} posters, MobileNetV2 (real weights), {args.rounds} rounds")
    weights = str(MOBILENET)
    init_ray(None)
    rows = {"local": [], "ray": []}
    with tempfile.TemporaryDirectory() as tmp:
        manifest = subset(args.n, Path(tmp))
        stores = {}
        for r in range(args.rounds):
            for engine in (("local", "ray") if r % 2 == 0 else ("ray", "local")):
                out = Path(tmp) / f"{engine}-{r}.h5"
                ips, steady, stores[engine] = timed(ExtractConfig(backbone="mobilenet_v2", weights=weights, data=str(manifest),
                                                                  out=str(out), engine=engine))  # fmt: skip
                rows[engine].append((ips, steady))
                print(f"round {r} {engine}: {ips:.1f} images/s (steady {steady:.1f})", flush=True)
        a, b = FeatureStore(stores["local"]).load(), FeatureStore(stores["ray"]).load()
        oa, ob = np.argsort(a.ids), np.argsort(b.ids)
        same = list(a.ids[oa]) == list(b.ids[ob])
        diff = float(np.abs(a.X[oa] - b.X[ob]).max()) if same else float("nan")
        per_image_ms = decode_ms(manifest)
    loc, ray_ = median([x for x, _ in rows["local"]]), median([x for x, _ in rows["ray"]])
    sl, sr = median([s for _, s in rows["local"]]), median([s for _, s in rows["ray"]])
    print()
    print(md_table(["engine", "images/s (whole command)", "images/s (steady state)"],
                   [["local", f"{loc:.1f}", f"{sl:.1f}"], ["ray (local Ray, 2 CPUs)", f"{ray_:.1f}", f"{sr:.1f}"]]))  # fmt: skip
    print(f"\nray / local: {ray_ / loc:.2f} whole command, {sr / sl:.2f} steady state (goal >= 0.7)")
    print(f"same ids: {same} ({len(a.ids)} rows); max |embedding difference|: {diff:.2e}")
    # Paper estimate: each GPU is fed by its node's decode cores; the slower of the two sets the pace.
    decode_rate = 1000.0 / per_image_ms * args.cpus_per_gpu
    per_gpu = min(args.gpu_images_per_s, decode_rate)
    print(f"\nestimate for {args.posters:,.0f} posters: decode+preprocess {per_image_ms:.2f} ms/image/core here "
          f"-> {decode_rate:,.0f} images/s from {args.cpus_per_gpu} cores per GPU; GPU model {args.gpu_images_per_s:,.0f} images/s "
          f"-> {per_gpu:,.0f} images/s per GPU ({'decode' if decode_rate < args.gpu_images_per_s else 'GPU'}-bound)")
    est = []
    for n in args.gpus:
        hours = args.posters / (per_gpu * n) / 3600
        est.append([n, f"{hours:.2f}", f"{hours * n * args.usd_per_gpu_hour:,.0f}"])
    print(md_table(["GPUs", "hours", f"cost (USD at {args.usd_per_gpu_hour}/GPU-hour)"], est))


if __name__ == "__main__":
    main()
