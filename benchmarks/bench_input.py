"""CPU cost of the input path per poster: the PIL path against the torchvision path, one thread.

Both read the same shared posters to a (3, 224, 224) uint8 tensor (decode, EXIF, resize), timed in
alternating rounds; then normalising a uint8 batch to the model's float input, per image.

    python benchmarks/bench_input.py              # 256 posters, 5 rounds
"""

from __future__ import annotations

import argparse

import torch

from _common import POSTERS, interleaved, md_table, median, print_header, spread

from genrekit.backbones import Preprocess
from genrekit.data.manifest import read_manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--data", default=str(POSTERS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    paths = [s.image for s in read_manifest(args.data).samples[: args.n]]
    print_header("bench_input", f"{len(paths)} posters, 1 torch thread, {args.rounds} alternating rounds")
    pre = {d: Preprocess(size=224, interpolation="bicubic", decoder=d) for d in ("pil", "torchvision")}
    batch = torch.stack([pre["torchvision"].load(p) for p in paths[:32]])
    variants = {
        "PIL path: decode (draft) + resize": lambda: [pre["pil"].load(p) for p in paths],
        "torchvision path: decode_jpeg + uint8 resize": lambda: [pre["torchvision"].load(p) for p in paths],
        "normalise a uint8 batch of 32 (float32)": lambda: [pre["torchvision"].normalise(batch) for _ in range(len(paths) // 32)],
        "normalise a uint8 batch of 32 (to bf16)": lambda: [pre["torchvision"].normalise(batch, torch.bfloat16) for _ in range(len(paths) // 32)],
    }
    times = interleaved(variants, args.rounds)
    per = {k: [t / len(paths) * 1e3 for t in v] for k, v in times.items()}
    print(md_table(["step (bicubic, 224 px)", "ms per poster (median)", "min-max"],
                   [[k, f"{median(v):.3f}", spread(v)] for k, v in per.items()]))
    a, b = (median(per[k]) for k in list(per)[:2])
    print(f"\ntorchvision path / PIL path: {b / a:.2f}")


if __name__ == "__main__":
    main()
