"""Extraction speed: genrekit end to end against the model alone and against a naive loop.

For each backbone, in one run on the same machine:
  1. model only: the best images/s over a grid of batch sizes and memory formats, on tensors that
     are already decoded and preprocessed (the ceiling extraction can reach);
  2. genrekit: `extract` end to end, JPEG files to HDF5 store, with its defaults (the torchvision
     input path, decoding in the main process between batches), and, in the same run, with a decode
     thread beside the model and with the older PIL input path (`--decoder pil`);
  3. naive: one image at a time (PIL open, transform, fp32 forward, append), as notebooks do.
Model-only is measured in fp32 and in the end-to-end precision (--precision; auto = bf16 on CPUs that
have it), and the ratio is to the best model-only rate in that precision.
It prints images/s and the ratios genrekit/model-only (goal >= 0.85) and genrekit/naive (goal >= 2).

    python benchmarks/bench_extract.py                      # mobilenet_v2 and ViT-B-32, 256 posters
    python benchmarks/bench_extract.py --backbones mobilenet_v2 --n 512
"""

from __future__ import annotations

import argparse
import os
import itertools
import platform
import tempfile
import time
from pathlib import Path

import torch

from genrekit.backbones import create_encoder
from genrekit.data.manifest import read_manifest
from genrekit.extraction import ExtractConfig, extract
from genrekit.system import cpu_count

# The checkout sits next to shared/ (GENREKIT_SHARED overrides it, e.g. from a git worktree).
SHARED = Path(os.environ.get("GENREKIT_SHARED") or Path(__file__).resolve().parents[2] / "shared")
POSTERS = SHARED / "data" / "movie_posters" / "labels.csv"
MOBILENET = SHARED / "weights" / "mobilenet_v2-coralquant-dequant-tv.pth"


def rate(fn, items_per_call: int, min_seconds: float) -> float:
    fn()  # warm-up (allocations, kernels picked)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds:
        fn()
        n += items_per_call
    return n / (time.perf_counter() - t0)


def model_only_grid(enc, batches, threads, seconds) -> dict[tuple[int, bool, int], float]:
    """images/s for every (batch, channels_last, torch threads) on pre-decoded tensors."""
    size = enc.preprocess.size
    out = {}
    before = torch.get_num_threads()
    for bs, cl, th in itertools.product(batches, (False, True), threads):
        torch.set_num_threads(th)
        enc.channels_last = cl
        enc.module.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
        x = torch.randn(bs, 3, size, size)
        out[(bs, cl, th)] = rate(lambda: enc.encode_images(x), bs, seconds)
    torch.set_num_threads(before)
    return out


def naive(enc, paths) -> float:
    """The notebook way: open, transform, forward one image at a time; fp32, default memory format and threads."""
    from PIL import Image

    assert enc.precision == "fp32"
    enc.channels_last = False
    enc.module.to(memory_format=torch.contiguous_format)
    t0 = time.perf_counter()
    feats = [enc.encode_images(enc.preprocess(Image.open(p).convert("RGB"))[None]) for p in paths]
    assert len(feats) == len(paths)
    return len(paths) / (time.perf_counter() - t0)


# End-to-end variants: ExtractConfig fields on top of the defaults.
VARIANTS = {"default": {}, "decode thread": {"decode_thread": True}, "pil path": {"decoder": "pil"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["mobilenet_v2", "ViT-B-32"])
    ap.add_argument("--n", type=int, default=1024, help="posters per end-to-end run (start-up is included)")
    ap.add_argument("--seconds", type=float, default=4.0, help="time per model-only grid point")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16, 32, 64])
    ap.add_argument("--precision", default="auto",
                    help="end-to-end precision (auto: bf16 on CPUs with native bf16, else fp32); model only is "
                         "measured in fp32 and in this one, and the ratio is to the best in this one")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                    help="end-to-end variants; the first is genrekit's default")
    args = ap.parse_args()
    manifest = read_manifest(POSTERS)
    paths = [s.image for s in manifest.samples[: args.n]]
    print(f"# bench_extract on {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, {args.n} posters (182x268 JPEG)")
    rows = []
    for name in args.backbones:
        weights = str(MOBILENET) if name == "mobilenet_v2" and MOBILENET.exists() else "none"
        cores = cpu_count()
        threads = sorted({1, cores})
        grids = {}
        e2e_precision = create_encoder(name, weights=weights, precision=args.precision).precision
        for precision in dict.fromkeys(["fp32", e2e_precision]):
            enc = create_encoder(name, weights=weights, precision=precision)
            grids[precision] = grid = model_only_grid(enc, args.batches, threads, args.seconds)
            print(f"\n## {name} model only, {precision}, images/s (batch x memory format x torch threads)")
            for bs in args.batches:
                cells = "   ".join(f"{'NHWC' if cl else 'NCHW'} {th}t {grid[(bs, cl, th)]:6.1f}"
                                   for cl in (False, True) for th in threads)
                print(f"  batch {bs:3d}: {cells}")
        (best_prec, (best_bs, best_cl, best_th)), best = max(
            (((e2e_precision, k), v) for k, v in grids[e2e_precision].items()), key=lambda kv: kv[1]
        )
        default = create_encoder(name, weights=weights, precision=args.precision)
        e2e = {}
        for variant in args.variants:
            with tempfile.TemporaryDirectory() as tmp:
                rep = extract(ExtractConfig(backbone=name, weights=weights, data=str(POSTERS), out=f"{tmp}/s.h5",
                                            limit=args.n, precision=args.precision, **VARIANTS[variant]))
            e2e[variant] = rep.items_per_second
            s = rep.seconds
            print(f"  genrekit end to end, {variant} (batch {default.spec.cpu_batch_size}, {default.precision}): "
                  f"{e2e[variant]:.1f} images/s (read wait {s['read']:.1f}s, encode {s['encode']:.1f}s, "
                  f"write {s['write']:.2f}s, total {s['total']:.1f}s)", flush=True)
        nv = naive(create_encoder(name, weights=weights, precision="fp32", decoder="pil"), paths[: max(32, args.n // 4)])
        print(f"  naive one-at-a-time loop: {nv:.1f} images/s")
        rows.append((name, best, f"{best_prec}, batch {best_bs}{' NHWC' if best_cl else ''}, {best_th} thread(s)", e2e, nv))
    first = args.variants[0]
    others = args.variants[1:]
    print(f"\n| backbone | model-only best (batch) | genrekit end to end ({first}) | naive loop | e2e / model-only (goal >= 0.85) "
          f"| e2e / naive (goal >= 2) |" + "".join(f" {v}: e2e / model-only |" for v in others))
    print("|---|---|---|---|---|---|" + "---|" * len(others))
    for name, best, cfg, e2e, nv in rows:
        print(f"| {name} | {best:.1f} ({cfg}) | {e2e[first]:.1f} | {nv:.1f} | {e2e[first] / best:.2f} | {e2e[first] / nv:.1f}x |"
              + "".join(f" {e2e[v]:.1f} = {e2e[v] / best:.2f} |" for v in others))


if __name__ == "__main__":
    main()
