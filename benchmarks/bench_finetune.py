"""Default `genrekit finetune` against the best frozen head of `genrekit heads --all`, same test split.

On the shared posters with the real MobileNetV2 weights: macro ROC AUC, mAP and F1 micro/macro at
thresholds tuned on validation for both; seconds per epoch, training images/s, peak RSS, wall time.

    python benchmarks/bench_finetune.py                      # builds the store and the heads run
    python benchmarks/bench_finetune.py --store S.h5 --run RUNS/ --out /tmp/ft   # reuse them
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import CACHE, HEAD_COLUMNS, HEAD_KEYS, fmt, md_table, poster_store, print_header, quiet_baseline  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", help="poster store [the cached default MobileNetV2 store of the shared posters: six stages]")
    ap.add_argument("--run", help="a `genrekit heads --all` run on the store [trained here]")
    ap.add_argument("--out", default=str(CACHE / "finetune"), help="fine-tune run directory (resumed if it exists)")
    ap.add_argument("--epochs", type=int, default=None, help="override the default epochs")
    ap.add_argument("--speed", action="store_true", help="only time training steps against frozen extraction (interleaved)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if args.speed:
        speed(args.rounds)
        return

    from genrekit.runs.finetune import FinetuneConfig, run_finetune
    from genrekit.runs.leaderboard import HeadsConfig, run_heads
    from genrekit.store import FeatureStore

    quiet_baseline()
    store = poster_store(args.store, layers="all")  # what `genrekit extract` writes by default
    run = Path(args.run) if args.run else CACHE / f"finetune_heads_{store.stem}"
    if not (run / "results.json").is_file():
        fs = FeatureStore(store)
        run_heads(fs.load(), run, HeadsConfig(), header=fs.header)
    heads = json.loads((run / "results.json").read_text())
    frozen = heads["best"]
    config = FinetuneConfig() if args.epochs is None else FinetuneConfig(epochs=args.epochs)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    res = run_finetune(store, args.out, config, run=run)
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()

    print_header("Fine-tuning vs the best frozen head", f"store {store}, heads run {run}, fine-tune run {args.out}")
    rows = [(f"frozen: {frozen} (best of heads --all by val mAP)", heads["heads"][frozen]["test"]["tuned"])]
    for name, e in res["cells"].items():
        rows.append((f"fine-tune cell {name} (best epoch)", e["test"]["tuned"]))
    rows.append((f"fine-tune final: {res['best']}, WiSE-FT alpha {res['wise_ft']['chosen']:g}", res["final"]["test"]["tuned"]))
    print(md_table(["model", *HEAD_COLUMNS], [(n, *(fmt(m[k]) for k in HEAD_KEYS)) for n, m in rows]))
    f, z = res["final"]["test"]["tuned"], heads["heads"][frozen]["test"]["tuned"]
    print()
    print(f"- test split: {res['split']['counts']}, {len(res['genres'])} genres; same split and genres as the heads run")
    print(f"- fine-tune minus frozen: ROC AUC {f['roc_auc_macro'] - z['roc_auc_macro']:+.3f}, mAP {f['map_macro'] - z['map_macro']:+.3f}, "
          f"F1 micro {f['f1_micro'] - z['f1_micro']:+.3f}, F1 macro {f['f1_macro'] - z['f1_macro']:+.3f}")  # fmt: skip
    print(f"- WiSE-FT val mAP by alpha: {dict(zip(res['wise_ft']['alphas'], [round(v, 4) for v in res['wise_ft']['val_map']]))}")
    for name, e in res["cells"].items():
        h = e["history"]
        per_epoch = [round(x["seconds"]) for x in h]
        ips = [round(x["train_images_per_s"], 1) for x in h]
        print(f"- {name}: {e['last_epoch']} epochs ({e['stopped']}), seconds per epoch {per_epoch}, training images/s {ips}, "
              f"last LR {e['last_lr']:.2g}, cell seconds {e['seconds']:.0f}")  # fmt: skip
    print(f"- image size {res['image_size']} px, device {res['device']}, precision {res['precision']}, peak RSS {res['peak_rss_mb']:.0f} MB")
    print(f"- wall seconds of this call {wall:.0f} (a resumed run counts only what it did; results.json wall {res['wall_seconds']:.0f})")
    print(f"- load average (1/5/15 min) before {tuple(round(x, 1) for x in load_before)}, after {tuple(round(x, 1) for x in load_after)}")


def speed(rounds: int) -> None:
    """Training images/s at 160 and 224 px against frozen extraction at 224 px, interleaved, so the
    ratios hold on a loaded machine: a quiet machine's training speed is its extraction speed
    (measured in bench_extract.py) times the ratio."""
    import torch
    import torch.nn.functional as F

    from _common import MOBILENET, interleaved, median, spread
    from genrekit.backbones import create_encoder
    from genrekit.backbones.finetuned import FinetuneNet, trainable_encoder
    from genrekit.runs.finetune import _amp

    weights = str(MOBILENET) if MOBILENET.is_file() else "none"
    frozen = create_encoder("mobilenet_v2", weights, "cpu", layers="last")
    x8 = torch.randn(8, 3, 224, 224)
    nets = {}
    for size in (160, 224):
        enc = trainable_encoder("mobilenet_v2", weights, torch.device("cpu"), size, None)
        net = FinetuneNet(enc, 20).to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(net.parameters(), 3e-4)
        nets[size] = (net, opt, torch.randn(32, 3, size, size).contiguous(memory_format=torch.channels_last), torch.randint(0, 2, (32, 20)).float())
    amp = _amp(torch.device("cpu"))

    def step(size):
        net, opt, x, y = nets[size]
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            loss = F.binary_cross_entropy_with_logits(net(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    variants = {"extract 224 px (frozen, batch 8)": lambda: frozen.encode_images(x8),
                "train 160 px (batch 32)": lambda: step(160), "train 224 px (batch 32)": lambda: step(224)}  # fmt: skip
    per = {"extract 224 px (frozen, batch 8)": 8, "train 160 px (batch 32)": 32, "train 224 px (batch 32)": 32}
    load = os.getloadavg()
    times = interleaved(variants, rounds)
    print_header("Training speed against frozen extraction (MobileNetV2, CPU)", f"precision {amp or 'fp32'}, {rounds} interleaved rounds")
    base = per["extract 224 px (frozen, batch 8)"] / median(times["extract 224 px (frozen, batch 8)"])
    rows = []
    for name, ts in times.items():
        ips = per[name] / median(ts)
        rows.append((name, f"{ips:.2f}", spread([per[name] / t for t in ts], ".2f"), f"{ips / base:.2f}"))
    print(md_table(["step", "images/s (median)", "spread", "ratio to extraction"], rows))
    print(f"\n- load average before {tuple(round(v, 1) for v in load)}, after {tuple(round(v, 1) for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
