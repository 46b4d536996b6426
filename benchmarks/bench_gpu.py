"""GPU extraction speed: CLIP backbones at fp16 and bf16, model only and end to end.

For each backbone (random weights: no download) and precision, in one run on one GPU:
  1. the GPU's bf16 matmul peak, measured (a large bf16 matmul, timed with CUDA events);
  2. model only: images/s of ``Encoder.encode_images`` on synthetic batches already on the GPU,
     best over a few batch sizes, and the share of the bf16 peak that rate reaches (model FLOPs
     per image counted with ``torch.utils.flop_counter.FlopCounterMode``; 1 multiply-add = 2 FLOPs);
  3. end to end: ``genrekit extract`` with its GPU defaults over procedurally drawn JPEG posters
     (``genrekit.data.demo``, written to a temporary folder: no data is needed), decode workers
     included, once per ``--decoders`` entry (``torchvision``: libjpeg-turbo in CPU workers, uint8
     batches in pinned memory, normalised on the GPU; ``nvjpeg``: JPEG bytes from the workers,
     one batched nvJPEG decode and the resize on the GPU); images/s over the steady part (input wait + encode + write) and over the whole
     call (model build and manifest read included).
It needs nothing but this repository and its Python dependencies: no network, no weights, no data.
Without a CUDA GPU it prints "no CUDA GPU: nothing to measure" and exits 0.

    python benchmarks/bench_gpu.py                                  # ViT-B-32, ViT-L-14, RN50x16 x fp16, bf16
    python benchmarks/bench_gpu.py --models ViT-L-14 --precisions bf16 --n 16384
    python benchmarks/bench_gpu.py --device cpu --models test-tiny-clip --n 256 --batches 16   # check the logic on CPU
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import torch

# Runnable from a bare checkout (dependencies installed, genrekit not): the repository first.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import md_table, median, print_header

from genrekit.backbones import create_encoder


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, n: int, repeats: int = 20) -> float:
    """FLOP/s of an n x n x n bf16 matmul, the median of ``repeats`` timed calls."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / median(times)


def _native_mha_flops(query, key, value, embed_dim, num_heads, *args, out_shape=None, **kwargs) -> int:
    # nn.MultiheadAttention's inference fast path is one fused op FlopCounterMode does not know
    # (without this, a ViT-B-32 counts 5.9 instead of 8.8 GFLOP); its inputs are batch-first.
    b, l, e = query
    s = key[1]
    return 2 * b * (2 * l * e * e + 2 * s * e * e) + 4 * b * l * s * e  # q, out, k, v projections; QK^T and AV


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)  # the CUDA attention kernels are counted; the CPU one is not


# Ops FlopCounterMode has no formula for, that these models run.
EXTRA_FLOPS = {
    torch.ops.aten._native_multi_head_attention: _native_mha_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
}


def flops_per_image(enc, size: int) -> float:
    """Forward FLOPs of one image through the image tower, as FlopCounterMode counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(2, 3, size, size, device=enc.device)
    counter = FlopCounterMode(display=False, custom_mapping=EXTRA_FLOPS)
    with counter:
        enc.encode_images(x)
    return counter.get_total_flops() / 2


def model_only(enc, size: int, batch: int, seconds: float) -> float:
    """images/s of ``encode_images`` on a batch already on the device (output copied back)."""
    x = torch.randn(batch, 3, size, size, device=enc.device)
    for _ in range(2):  # warm-up: kernel selection, allocator growth
        enc.encode_images(x)
    sync(enc.device)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        enc.encode_images(x)  # returns a numpy array, so each call ends synchronised
        n += batch
    return n / (time.perf_counter() - t0)


def synthetic_posters(folder: Path, n: int, unique: int) -> Path:
    """A manifest of ``n`` rows cycling over ``unique`` procedurally drawn posters."""
    from genrekit.data.demo import make_demo

    demo = make_demo(folder / "demo", n=min(n, unique), seed=0)
    with open(demo, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    labels = folder / "labels.csv"
    with open(labels, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "genres", "image"])
        for i in range(n):
            r = rows[i % len(rows)]
            w.writerow([f"p{i:07d}", r["genres"], str(demo.parent / r["image"])])
    return labels


def end_to_end(model: str, precision: str, device: str, labels: Path, out: Path, decoder: str) -> tuple[float, float, dict]:
    from genrekit.extraction import ExtractConfig, extract

    rep = extract(ExtractConfig(backbone=model, weights="none", data=str(labels), out=str(out), device=device,
                                precision=precision, decoder=decoder))
    s = rep.seconds
    steady = rep.encoded / (s["read"] + s["encode"] + s["write"])
    out.unlink()
    return steady, rep.items_per_second, s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["ViT-B-32", "ViT-L-14", "RN50x16"])
    ap.add_argument("--precisions", nargs="+", default=["fp16", "bf16"], choices=("fp16", "bf16", "fp32"))
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256], help="model-only batch sizes")
    ap.add_argument("--seconds", type=float, default=3.0, help="time per model-only batch size")
    ap.add_argument("--n", type=int, default=8192, help="posters per end-to-end extraction")
    ap.add_argument("--unique", type=int, default=2048, help="distinct poster files drawn (the manifest cycles over them)")
    ap.add_argument("--peak-n", type=int, default=8192, help="matrix size of the peak matmul")
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu to check this script's logic without a GPU")
    ap.add_argument("--decoders", nargs="+", default=["torchvision", "nvjpeg"], choices=("torchvision", "nvjpeg", "pil"),
                    help="input paths measured end to end (nvjpeg only on a GPU)")
    ap.add_argument("--quick", action="store_true", help="ViT-B-32 only, bf16 only, 2,048 posters")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU: nothing to measure")
        return
    if device.type != "cuda":
        args.decoders = [d for d in args.decoders if d != "nvjpeg"]
    if args.quick:
        args.models, args.precisions, args.n = args.models[:1], ["bf16"], min(args.n, 2048)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (logic check only: no autocast, numbers mean nothing)"
    print_header("bench_gpu", f"device {gpu}, {args.n:,} posters end to end")

    peak = matmul_peak(device, args.peak_n if device.type == "cuda" else min(args.peak_n, 1024))
    print(f"measured bf16 matmul peak: {peak / 1e12:.1f} TFLOP/s ({args.peak_n if device.type == 'cuda' else min(args.peak_n, 1024)}^3)\n", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        labels = synthetic_posters(Path(tmp), args.n, args.unique)
        for model in args.models:
            for precision in args.precisions:
                enc = create_encoder(model, weights="none", device=str(device), precision=precision)
                size = enc.preprocess.size
                flops = flops_per_image(enc, size)
                grid = {bs: model_only(enc, size, bs, args.seconds) for bs in args.batches}
                best_bs, best = max(grid.items(), key=lambda kv: kv[1])
                del enc
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                share = flops * best / peak
                print(f"{model} {precision}: {flops / 1e9:.1f} GFLOP/image; model only "
                      + ", ".join(f"batch {bs}: {r:,.0f}/s" for bs, r in grid.items()), flush=True)
                for decoder in args.decoders:
                    steady, whole, secs = end_to_end(model, precision, str(device), labels, Path(tmp) / "s.h5", decoder)
                    print(f"  end to end, {decoder} input: {steady:,.0f}/s steady, {whole:,.0f}/s whole call "
                          f"(input wait {secs['read']:.1f} s, encode {secs['encode']:.1f} s, write {secs['write']:.1f} s, "
                          f"total {secs['total']:.1f} s)", flush=True)  # fmt: skip
                    rows.append([model, precision, decoder, size, f"{flops / 1e9:.1f}", f"{best:,.0f} ({best_bs})", f"{share:.1%}",
                                 f"{steady:,.0f}", f"{whole:,.0f}", f"{steady / best:.2f}"])  # fmt: skip
    print()
    print(md_table(["backbone", "precision", "input", "input px", "GFLOP/image", "model only images/s (batch)",
                    "share of bf16 matmul peak", "end to end images/s (steady)", "end to end images/s (whole call)",
                    "end to end / model only"], rows))  # fmt: skip


if __name__ == "__main__":
    main()
