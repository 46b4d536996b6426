"""Extraction speed: where an end-to-end second goes, against the model alone, side by side in one run.

For each backbone x features (last layer, six stages) x precision:
  1. model only: the network's forward (pooling included, as extraction runs it) on posters that are
     already decoded, resized and normalised, in the model's dtype; best images/s over batch x memory
     format x streams (batches side by side sharing the torch threads, as extraction's streams run
     them) at the torch threads extraction uses. The ceiling extraction can reach.
  2. genrekit end to end: `extract()` with its defaults, JPEG files to HDF5 store, start-up included,
     and (--variants) the same with another input strategy or batch size. Both run with glibc
     keeping freed memory (genrekit.system.keep_freed_memory, set when an encoder is built): without
     it every batch faults its activations in again and both sides lose half their speed.
  3. rounds: 1 and 2 alternate --rounds times and each round gives a ratio, so a neighbour slowing
     the machine for a while slows both sides (the median round is reported).
  4. breakdown: the end-to-end run's own clock (start-up, waiting for input, encode, write, the
     rest) and, measured separately on the same posters, what a poster costs in each stage: decode,
     resize (one thread), normalise, network, pooling (extraction's threads).
Precisions: fp32, and bf16 where this CPU has it natively. Where it has not, `--matched` adds the
"matched-cost" case: MobileNetV2 in fp32 at the input size whose model-only rate is nearest
--matched-rate (159 images/s: bf16 MobileNetV2 six-stage on the 2-core Sapphire Rapids machine), so
the input path has to keep up with a model as fast as the bf16 one.
It prints images/s and e2e / model-only (goal >= 0.85).

    python benchmarks/bench_extract.py                            # mobilenet_v2, last + six stages
    python benchmarks/bench_extract.py --matched --rounds 5 --n 1024
    python benchmarks/bench_extract.py --backbones ViT-B-32 --layers last --naive
    python benchmarks/bench_extract.py --fresh-processes --n 2048 --rounds 2   # genrekit extract, malloc kept vs glibc's
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from genrekit.backbones import create_encoder
from genrekit.backbones.base import cpu_has_bf16
from genrekit.backbones.layers import StagePool, pooled_stats
from genrekit.backbones.preprocess import Preprocess
from genrekit.backbones.registry import get_spec, list_backbones, register
from genrekit.backbones.decode import read_rgb
from genrekit.data.manifest import read_manifest
from genrekit.extraction import ExtractConfig, extract
from genrekit.extraction.core import thread_shares
from genrekit.system import cpu_count

# The checkout sits next to shared/ (GENREKIT_SHARED overrides it, e.g. from a git worktree).
SHARED = Path(os.environ.get("GENREKIT_SHARED") or Path(__file__).resolve().parents[2] / "shared")
POSTERS = SHARED / "data" / "movie_posters" / "labels.csv"
MOBILENET = SHARED / "weights" / "mobilenet_v2-coralquant-dequant-tv.pth"
LAYERS = {"last": "last", "six": "all"}  # --layers names -> extract's --layers

# End-to-end variants: ExtractConfig fields on top of the defaults.
VARIANTS = {
    "default": {},
    "decode thread": {"decode_thread": True},
    "decode process": {"workers": 1},
    "pil path": {"decoder": "pil"},
    "1 stream": {"streams": 1},
    "2 streams": {"streams": 2},
    **{f"batch {b}": {"batch_size": b} for b in (4, 8, 16, 32)},
}


def weights_for(name: str) -> str:
    return str(MOBILENET) if name.startswith("mobilenet_v2") and MOBILENET.exists() else "none"


def at_size(name: str, size: int) -> str:
    """Register ``name`` with another input size (the matched-cost case) and return its name."""
    new = f"{name}@{size}px"
    if new not in {s.name for s in list_backbones()}:
        spec = get_spec(name)
        register(dataclasses.replace(spec, name=new, preprocess=dataclasses.replace(spec.preprocess, size=size),
                                     options={**spec.options, "arch": spec.options.get("arch", name)}))
    return new


def network_only(module: torch.nn.Module):
    """The forward without pooling (the stage maps), to split the model's time from pooling's."""
    if isinstance(module, StagePool):
        if module.timm_indices is None:
            return lambda x: list(module.body(x).values())
        return lambda x: module.body.forward_intermediates(x, indices=module.timm_indices, intermediates_only=True)
    return module


def model_inputs(enc, pixels: list[torch.Tensor], batch: int, channels_last: bool):
    """Normalised batches in the model's dtype and memory format, as extraction hands them over."""
    for i in range(0, len(pixels), batch):
        x = enc.preprocess.normalise(torch.stack(pixels[i : i + batch]), enc.cast_dtype or torch.float32)
        yield x.contiguous(memory_format=torch.channels_last) if channels_last else x


def set_layout(enc, channels_last: bool) -> None:
    enc.channels_last = channels_last
    enc.module.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def model_only(enc, xs: list[torch.Tensor], n: int, streams: int = 1) -> float:
    """images/s of the module's forward over about ``n`` posters, cycling through the batches ``xs``
    (one warm-up batch first, in each thread), in ``streams`` threads side by side that share
    torch's threads as extraction's streams do. ``xs`` is kept small (a few MB): hundreds of MB of
    inputs made in advance are read back from memory, and in a VM that samples and reclaims cold
    pages they made model only slower than extraction, whose batch was just written."""
    threads = torch.get_num_threads()
    shares = thread_shares(threads, streams)  # as extraction shares them out
    started: list[float] = []
    ready = threading.Barrier(streams, action=lambda: started.append(time.perf_counter()))  # every thread warm

    def forward(k: int) -> int:
        torch.set_num_threads(shares[k])
        with torch.inference_mode():
            enc.module(xs[k % len(xs)])  # warm-up
            ready.wait()
            done, i = 0, k
            while done < n // streams:
                x = xs[i % len(xs)]
                enc.module(x)
                done, i = done + len(x), i + streams
        return done

    if streams == 1:  # in this thread, as extraction runs one stream
        done = forward(0)
    else:
        with ThreadPoolExecutor(streams) as pool:
            done = sum(pool.map(forward, range(streams)))
        torch.set_num_threads(threads)
    return done / (time.perf_counter() - started[0])


def grid(enc, pixels, batches, seconds, streams=(1,)) -> dict[tuple[int, bool, int], float]:
    """images/s for every (batch, channels_last, streams) over the first posters; about
    ``seconds`` each (the rate measured once decides how many posters make that time)."""
    out = {}
    for bs in batches:
        for cl in (False, True):
            set_layout(enc, cl)
            xs = list(model_inputs(enc, pixels, bs, cl))
            for st in streams if cl else (1,):
                probe = model_only(enc, xs, 2 * bs * st, st)
                out[(bs, cl, st)] = model_only(enc, xs, max(2 * bs * st, int(probe * seconds)), st)
    return out


def stage_costs(enc, paths, pixels, batch: int) -> dict[str, float]:
    """ms per poster of each stage, on these posters: decode and resize on one thread (as
    extraction's decode thread runs them), normalise / network / pooling on extraction's threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    raw: list[torch.Tensor] = []
    dec = timed(lambda: raw.extend(read_rgb(p) for p in paths))
    res = timed(lambda: [enc.preprocess.resize_uint8(x) for x in raw])
    torch.set_num_threads(threads)
    n = len(pixels)
    norm = timed(lambda: [None for _ in model_inputs(enc, pixels, batch, enc.channels_last)])
    net = network_only(enc.module)
    t_net = pool = 0.0
    with torch.inference_mode():
        for i, x in enumerate(model_inputs(enc, pixels, batch, enc.channels_last)):
            if i == 0:
                net(x)  # warm-up
            t0 = time.perf_counter()
            maps = net(x)
            t1 = time.perf_counter()
            if isinstance(enc.module, StagePool):
                pooled_stats(maps, enc.module.stats)
            t_net, pool = t_net + t1 - t0, pool + time.perf_counter() - t1
    return {"decode": 1e3 * dec / len(paths), "resize": 1e3 * res / len(paths), "normalise": 1e3 * norm / n,
            "network": 1e3 * t_net / n, "pooling": 1e3 * pool / n}


def naive(name, weights, paths) -> float:
    """The notebook way: open, transform, forward one image at a time; fp32, default memory format."""
    from PIL import Image

    enc = create_encoder(name, weights=weights, precision="fp32", decoder="pil", layers="last")
    set_layout(enc, False)
    t0 = time.perf_counter()
    feats = [enc.encode_images(enc.preprocess(Image.open(p).convert("RGB"))[None]) for p in paths]
    assert len(feats) == len(paths)
    return len(paths) / (time.perf_counter() - t0)


def pick_size(name, weights, pixels_224, target: float, sizes, seconds: float) -> tuple[int, float]:
    """The input size whose fp32 model-only rate (batch 8, NHWC, six stages) is nearest ``target``."""
    best = None
    for size in sizes:
        enc = create_encoder(at_size(name, size), weights=weights, precision="fp32", layers="all")
        pre = enc.preprocess
        pixels = [pre.resize_uint8(p) for p in pixels_224[:64]]
        r = grid(enc, pixels, [8], seconds)[(8, True, 1)]
        print(f"  matched cost: {name} fp32 six stages at {size} px: {r:.1f} images/s (target {target:.0f})", flush=True)
        if best is None or abs(r - target) < abs(best[1] - target):
            best = (size, r)
    return best


def run_case(args, name: str, layers: str, precision: str, paths: list[str]) -> dict:
    weights = weights_for(name)
    enc = create_encoder(name, weights=weights, precision=precision, layers=LAYERS[layers])
    pixels = [enc.preprocess.load(p) for p in paths]
    threads = torch.get_num_threads()
    streams = [st for st in args.streams if st <= threads]
    g = grid(enc, pixels[:64], args.batches, args.seconds, streams)
    print(f"\n## {name}, {layers} layer{'s' if layers == 'six' else ''}, {precision}: model only, images/s "
          f"(batch x memory format [x streams side by side sharing the {threads} torch threads])")
    for b in args.batches:
        print(f"  batch {b:3d}: NCHW {g[(b, False, 1)]:6.1f}   NHWC {g[(b, True, 1)]:6.1f}"
              + "".join(f"   NHWC x {st} streams {g[(b, True, st)]:6.1f}" for st in streams if st > 1))
    (bs, cl, st), _ = max(g.items(), key=lambda kv: kv[1])
    set_layout(enc, cl)
    xs = list(model_inputs(enc, pixels[:64], bs, cl))
    rounds = []
    for r in range(args.rounds):
        mo = model_only(enc, xs, len(pixels), st)
        e2e = {}
        for variant in args.variants:
            with tempfile.TemporaryDirectory() as tmp:
                # device="cpu": model only runs on the CPU; extract's "auto" would take a GPU where there is one
                rep = extract(ExtractConfig(backbone=name, weights=weights, data=str(POSTERS), out=f"{tmp}/s.h5", device="cpu",
                                            limit=args.n, precision=precision, layers=LAYERS[layers], **VARIANTS[variant]))
            e2e[variant] = rep
        rounds.append((mo, e2e))
        print(f"  round {r + 1}: model only {mo:6.1f}   " + "   ".join(
            f"{v} {rep.items_per_second:6.1f} ({rep.items_per_second / mo:.2f})" for v, rep in e2e.items()), flush=True)
    first = args.variants[0]
    ratios = {v: statistics.median(e[v].items_per_second / mo for mo, e in rounds) for v in args.variants}
    mid = sorted(rounds, key=lambda me: me[1][first].items_per_second / me[0])[len(rounds) // 2]
    mo, rep = mid[0], mid[1][first]
    s, total = rep.seconds, rep.seconds["total"]
    costs = stage_costs(enc, paths[: args.stage_n], pixels[: args.stage_n], bs)
    rest = total - s.get("start", 0) - s["read"] - s["encode"] - s["write"]
    print(f"  breakdown of the median round's {first} run ({rep.encoded} posters, {total:.1f} s):")
    for what, sec in (("start-up (manifest, model)", s.get("start", 0.0)), ("input (waited for; streams: decoding)", s["read"]),
                      ("encode (normalise, network, pooling)", s["encode"]), ("store write", s["write"]), ("the rest", rest)):
        print(f"    {what:38s} {sec:6.2f} s  {100 * sec / total:5.1f}%")
    print(f"  per poster, measured apart: decode {costs['decode']:.2f} ms + resize {costs['resize']:.2f} ms (1 thread); "
          f"normalise {costs['normalise']:.2f} + network {costs['network']:.2f} + pooling {costs['pooling']:.2f} ms "
          f"(wall, {torch.get_num_threads()} threads); model only {1e3 / mo:.2f} ms")
    return {"name": name, "layers": layers, "precision": precision,
            "best": f"batch {bs} {'NHWC' if cl else 'NCHW'}" + (f" x {st} streams" if st > 1 else ""),
            "model_only": statistics.median(mo for mo, _ in rounds),
            "e2e": {v: statistics.median(e[v].items_per_second for _, e in rounds) for v in args.variants}, "ratio": ratios}


def fresh_processes(args, paths_n: int) -> None:
    """`genrekit extract` as a user runs it, a fresh process each time, with glibc keeping freed
    memory (genrekit's default) and with glibc's own defaults (GENREKIT_MALLOC=default), alternately."""
    cli = str(Path(sys.executable).with_name("genrekit"))
    kinds = {"kept": {}, "glibc defaults": {"GENREKIT_MALLOC": "default"}}
    for layers in args.layers:
        print(f"\n## genrekit extract, fresh processes: mobilenet_v2, {layers} layer{'s' if layers == 'six' else ''}, "
              f"{paths_n} posters (wall seconds, start-up included; kernel seconds; minor page faults)")
        for r in range(args.rounds):
            cells = []
            for kind, env in kinds.items():
                with tempfile.TemporaryDirectory() as tmp:
                    before = resource.getrusage(resource.RUSAGE_CHILDREN)
                    t0 = time.perf_counter()
                    subprocess.run([cli, "extract", "-b", "mobilenet_v2", "--weights", weights_for("mobilenet_v2"), "-d", str(POSTERS),
                                    "-o", f"{tmp}/s.h5", "--limit", str(paths_n), "--layers", LAYERS[layers], "--precision", "fp32", "--device", "cpu"],
                                   env={**os.environ, **env}, check=True, capture_output=True)  # fmt: skip
                    wall = time.perf_counter() - t0
                    after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cells.append(f"{kind} {wall:5.1f} s = {paths_n / wall:5.1f} images/s (kernel {after.ru_stime - before.ru_stime:4.1f} s, "
                             f"{(after.ru_minflt - before.ru_minflt) / 1e6:.2f} M faults)")
            print(f"  round {r + 1}: " + "   ".join(cells), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["mobilenet_v2"])
    ap.add_argument("--layers", nargs="+", default=list(LAYERS), choices=list(LAYERS))
    ap.add_argument("--n", type=int, default=1024, help="posters per end-to-end run (start-up is included)")
    ap.add_argument("--rounds", type=int, default=3, help="model only / end to end alternations (median reported)")
    ap.add_argument("--seconds", type=float, default=1.5, help="time per model-only grid point")
    ap.add_argument("--batches", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 2],
                    help="model only: batches side by side sharing the torch threads, as extraction's streams")
    ap.add_argument("--precisions", nargs="+", default=None,
                    help="default: fp32, and bf16 where this CPU has it natively")
    ap.add_argument("--matched", action="store_true",
                    help="add MobileNetV2 fp32 at the input size whose model-only rate is nearest --matched-rate")
    ap.add_argument("--matched-rate", type=float, default=159.0)
    ap.add_argument("--matched-sizes", type=int, nargs="+", default=[192, 176, 160, 144, 128])
    ap.add_argument("--variants", nargs="+", default=["default", "decode thread"], choices=list(VARIANTS),
                    help="end-to-end variants; the first is genrekit's default")
    ap.add_argument("--stage-n", type=int, default=256, help="posters for the per-stage costs")
    ap.add_argument("--naive", action="store_true", help="also time a one-at-a-time fp32 loop (PIL, no batching)")
    ap.add_argument("--fresh-processes", action="store_true",
                    help="only: `genrekit extract` in fresh processes, freed memory kept vs glibc's defaults")
    args = ap.parse_args()
    if args.fresh_processes:
        fresh_processes(args, args.n)
        return
    precisions = args.precisions or (["fp32", "bf16"] if cpu_has_bf16() else ["fp32"])
    paths = [s.image for s in read_manifest(POSTERS).samples[: args.n]]
    print(f"# bench_extract on {platform.processor() or platform.machine()} ({cpu_count()} cores, native bf16: "
          f"{cpu_has_bf16()}), {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"{args.n} posters (182x268 JPEG), {args.rounds} rounds, load average {os.getloadavg()[0]:.1f}")
    cases = [(name, layers, p) for name in args.backbones for p in precisions for layers in args.layers]
    if args.matched:
        enc = create_encoder("mobilenet_v2", weights=weights_for("mobilenet_v2"), precision="fp32")
        size, _ = pick_size("mobilenet_v2", weights_for("mobilenet_v2"), [enc.preprocess.load(p) for p in paths[:64]],
                            args.matched_rate, args.matched_sizes, args.seconds)
        cases += [(at_size("mobilenet_v2", size), layers, "fp32") for layers in args.layers]
    rows = [run_case(args, *case, paths) for case in cases]
    first, others = args.variants[0], args.variants[1:]
    print(f"\n| backbone | features | precision | model only (best) | end to end ({first}) | e2e / model-only (goal >= 0.85) |"
          + "".join(f" {v}: e2e / model-only |" for v in others))
    print("|---|---|---|---|---|---|" + "---|" * len(others))
    for r in rows:
        print(f"| {r['name']} | {r['layers']} | {r['precision']} | {r['model_only']:.1f} ({r['best']}) | {r['e2e'][first]:.1f} | "
              f"**{r['ratio'][first]:.2f}** |" + "".join(f" {r['e2e'][v]:.1f} = {r['ratio'][v]:.2f} |" for v in others))
    if args.naive:
        for name in args.backbones:
            nv = naive(name, weights_for(name), paths[: max(32, args.n // 4)])
            print(f"{name}: naive one-at-a-time fp32 loop {nv:.1f} images/s")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
