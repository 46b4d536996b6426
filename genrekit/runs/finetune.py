"""Fine-tune the backbone of a store end to end: ``genrekit finetune``.

LP-FT (Kumar et al., ICLR 2022): the multi-label head starts from a linear probe fitted on the
store's cached features (or taken from the ``logreg`` head of a ``genrekit heads`` run), then the
whole network trains with BCE (or soft-F1), the backbone at a lower learning rate than the head.
A seeded grid of cells (batch size x learning rate x optimizer) is trained, each with early
stopping on validation mAP, ReduceLROnPlateau and its best checkpoint kept. The best cell (by
validation mAP) is then interpolated with the original weights (WiSE-FT, Wortsman et al., CVPR
2022) at several alphas, alpha chosen on validation. Thresholds are tuned on validation exactly as
the heads do, and test metrics carry the keys of ``genrekit heads``' results.json.

Layout of ``FT/``::

    results.json, results.csv   every cell (val mAP, test metrics, last epoch, last LR, seconds)
    split.csv                   when the split was made here (the store had none)
    cells/<cell>/checkpoint.safetensors  the last finished epoch: weights, optimizer, scheduler,
                                history and early-stopping state in ONE file (written atomically,
                                so a kill -9 leaves the previous epoch's or this one's, never a mix)
    cells/<cell>/best.safetensors        the best epoch's weights
    cells/<cell>/result.json    written when a cell is finished: a re-run skips the cell
    cells/<cell>/curve.png      training curve (loss, val mAP per epoch)
    backbone.safetensors        the chosen (WiSE-FT) backbone, keys of the registry's module, so
                                ``genrekit extract --backbone NAME --weights FT/backbone.safetensors``
    head.safetensors            the linear head (weight, bias)
    finetune.json               what the run is: backbone, weights sha256, preprocessing, genres,
                                thresholds, alpha; loaded by :mod:`genrekit.inference.finetuned`

Resuming: every epoch runs under its own seed (seed, cell, epoch), so an epoch re-run after a
kill draws the same shuffles and augmentations as the first time, and the restored weights,
optimizer and scheduler continue exactly where the checkpoint left them.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import math
import resource
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genrekit import __version__
from genrekit.atomic import atomic_open, atomic_write, atomic_write_json
from genrekit.backbones.base import resolve_precision
from genrekit.backbones.finetuned import (
    FinetuneNet,
    autocast_dtype,
    network_input,
    save_network,
    save_weights,
    trainable_encoder,
)
from genrekit.data.manifest import PARTS
from genrekit.data.split import read_split_file, split_warnings
from genrekit.errors import ConfigError, ManifestError, StoreError, UnreadableImageError
from genrekit.evaluation.metrics import macro_average_precision
from genrekit.evaluation.scorecard import score
from genrekit.evaluation.thresholds import RULES, Thresholds
from genrekit.extraction import read_images
from genrekit.rundir import FINETUNE_FILE, save_part_predictions
from genrekit.store import FeatureStore, StoreHeader
from genrekit.system import cpu_count

log = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "sgd", "rmsprop")
LOSSES = ("bce", "softf1")
GRID_KEYS = ("batch", "lr", "optimizer")
# The grid of the CLIP-vs-CNN study: batch 16/32/64 x lr 1e-3/1e-4/1e-5 x optimizer (--grid study).
STUDY_GRID: dict[str, tuple] = {"batch": (16, 32, 64), "lr": (1e-3, 1e-4, 1e-5), "optimizer": OPTIMIZERS}


@dataclass(frozen=True)
class FinetuneConfig:
    """Options of ``genrekit finetune``; each field is one CLI flag.

    Attributes:
        epochs: most epochs per cell (early stopping usually ends a cell sooner).
        grid: values per grid key (``batch``, ``lr``, ``optimizer``); every combination is a cell.
            The default is one cell, measured to beat the best frozen head of ``heads --all`` on
            the same last-layer store of the 6,000 shared posters in 18 minutes on 2 CPU cores
            (benchmarks/README.md); ``--grid study`` is the 27-cell grid of the CLIP study.
        image_size: training and inference resolution; ``None`` means the backbone's own (the
            size the store's features, and so the linear probe, were made at). Lower is cheaper,
            but a 160 px MobileNetV2 started from a 224 px probe lost to the frozen head
            (benchmarks/README.md).
        head_lr_mult: the head's learning rate over the backbone's (LP-FT: the probe is already
            good, the backbone should move less).
        lp_ft: start the head from a linear probe (else a seeded random init: plain fine-tuning).
        loss: ``bce`` or ``softf1`` (the sigmoid-F1 of the frozen-features study).
        weight_decay: of AdamW / SGD / RMSprop.
        patience: epochs without a better validation mAP before a cell stops.
        plateau_factor, plateau_patience: ReduceLROnPlateau on validation mAP.
        augment: ``poster`` (small shifts and zoom, colour jitter: titles and credits stay in
            frame) or ``none``.
        flip: also flip horizontally (off: posters carry text, which a flip turns into mirror writing).
        train_stages: train only the last N stages of a CNN (the stages ``--layers`` knows, e.g.
            MobileNetV2's six); the layers before them stay frozen, so the backward pass stops
            there (cheaper on CPU) and a small collection moves fewer weights. ``None``: every
            layer (also for backbones without listed stages, such as ViTs).
        freeze_bn: keep BatchNorm statistics as pretrained (small CPU batches give noisy
            statistics, and the probe was fitted on features made with the pretrained ones).
        wise_alphas: WiSE-FT mixing weights tried on validation (0 = the linear probe on the
            original backbone, 1 = the fine-tuned network).
        threshold, min_threshold_positives: the decision rule tuned on validation, as ``heads``.
        min_train_positives: genres with fewer training positives are dropped, as ``heads``.
        seed: seeds the split (when made here), the shuffles, augmentation and any random init.
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: torch CPU threads (``None``: every core).
        limit: only the first N items of each split part (quick looks, tests).
    """

    epochs: int = 8
    grid: Mapping[str, tuple] = field(default_factory=lambda: {"batch": (32,), "lr": (3e-4,), "optimizer": ("adamw",)})
    image_size: int | None = None
    head_lr_mult: float = 10.0
    lp_ft: bool = True
    loss: str = "bce"
    weight_decay: float = 1e-4
    patience: int = 2
    plateau_factor: float = 0.3
    plateau_patience: int = 0
    augment: str = "poster"
    flip: bool = False
    train_stages: int | None = 3
    freeze_bn: bool = True
    wise_alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    threshold: str = "per-genre"
    min_threshold_positives: int = 10
    min_train_positives: int = 10
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    limit: int | None = None

    def validate(self) -> None:
        if self.train_stages is not None and self.train_stages < 1:
            raise ConfigError(f"--train-stages must be at least 1 (or 0 for every layer), got {self.train_stages}")
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {self.epochs}")
        unknown = set(self.grid) - set(GRID_KEYS)
        if unknown:
            raise ConfigError(f"--grid key {sorted(unknown)[0]!r} is not one of {', '.join(GRID_KEYS)}")
        for k in GRID_KEYS:
            if not self.grid.get(k):
                raise ConfigError(f"--grid {k} needs at least one value")
        for o in self.grid["optimizer"]:
            if o not in OPTIMIZERS:
                raise ConfigError(f"--grid optimizer={o!r} is not one of {', '.join(OPTIMIZERS)}")
        if any(int(b) < 1 for b in self.grid["batch"]):
            raise ConfigError("--grid batch values must be at least 1")
        if any(not (float(v) > 0) for v in self.grid["lr"]):
            raise ConfigError("--grid lr values must be positive")
        if self.loss not in LOSSES:
            raise ConfigError(f"--loss {self.loss!r} is not one of {', '.join(LOSSES)}")
        if self.augment not in ("poster", "none"):
            raise ConfigError(f"--augment {self.augment!r} is not poster or none")
        if self.threshold not in RULES:
            raise ConfigError(f"--threshold {self.threshold!r} is not one of {', '.join(RULES)}")
        if not self.wise_alphas or any(not 0.0 <= a <= 1.0 for a in self.wise_alphas):
            raise ConfigError("--wise-alphas must be one or more numbers between 0 and 1")
        if self.image_size is not None and self.image_size < 16:
            raise ConfigError(f"--image-size must be at least 16, got {self.image_size}")
        if self.patience < 1 or self.plateau_patience < 0:
            raise ConfigError("--patience must be at least 1 and --plateau-patience at least 0")

    def cells(self) -> list[dict]:
        """Every grid combination, in a stable order, as ``{"batch", "lr", "optimizer"}``."""
        combos = itertools.product(*(self.grid[k] for k in GRID_KEYS))
        return [{"batch": int(b), "lr": float(lr), "optimizer": str(o)} for b, lr, o in combos]

    def to_json(self) -> dict:
        d = asdict(self)
        d["grid"] = {k: list(v) for k, v in self.grid.items()}
        d["wise_alphas"] = list(self.wise_alphas)
        return d


def parse_grid(items: Sequence[str]) -> dict[str, tuple]:
    """``["batch=16,32", "lr=1e-4"]`` (or ``["study"]``) as a grid over the default cell.

    Example:
        >>> parse_grid(["batch=16,32", "optimizer=sgd"])["batch"]
        (16, 32)
    """
    grid = dict(FinetuneConfig().grid)
    for item in items:
        if item.strip() == "study":
            grid.update(STUDY_GRID)
            continue
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or key not in GRID_KEYS or not values.strip():
            raise ConfigError(f"--grid {item!r} must be KEY=V1,V2 with KEY one of {', '.join(GRID_KEYS)}, or 'study'")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        try:
            grid[key] = tuple(int(v) for v in vals) if key == "batch" else tuple(float(v) for v in vals) if key == "lr" else tuple(v.lower() for v in vals)
        except ValueError:
            raise ConfigError(f"--grid {item!r}: {key} values must be {'integers' if key == 'batch' else 'numbers'}") from None
    return grid


def cell_name(cell: Mapping) -> str:
    return f"{cell['optimizer']}-b{cell['batch']}-lr{cell['lr']:g}"


@dataclass
class TrainEvent:
    """What the training loop reports: after each batch (``val_map`` None) and after each epoch."""

    cell: str
    cell_index: int
    cells: int
    epoch: int
    epochs: int
    done: int  # training images seen in this epoch
    total: int
    loss: float  # running mean training loss of the epoch
    images_per_s: float
    val_map: float | None = None
    lr: float | None = None


ProgressCb = Callable[[TrainEvent], None]


# -- the network (FinetuneNet, trainable_encoder: genrekit.backbones.finetuned) -------------------
def freeze_before_stages(backbone: nn.Module, stages: Sequence[str], n: int | None) -> int:
    """Freeze every parameter before the last ``n`` of ``stages`` (module names, shallow to deep).

    Parameters are registered in forward order in these CNNs, so everything up to the last
    parameter of the stage before the trained ones is frozen. Returns how many were frozen.
    """
    if not n or n >= len(stages):
        return 0
    boundary = stages[-n - 1] + "."
    params = list(backbone.named_parameters())
    last = max((i for i, (name, _) in enumerate(params) if name.startswith(boundary)), default=-1)
    for _, p in params[: last + 1]:
        p.requires_grad_(False)
    return last + 1


def _set_train(net: FinetuneNet, freeze_bn: bool) -> None:
    net.train()
    if freeze_bn:
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def soft_f1_loss(logits: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """1 - macro soft F1 over the batch (sigmoidF1), differentiable in the probabilities."""
    P = torch.sigmoid(logits)
    tp = (P * Y).sum(0)
    soft = 2 * tp / (P.sum(0) + Y.sum(0) + 1e-8)
    return 1 - soft.mean()


# -- data ----------------------------------------------------------------------------------------
@dataclass
class FinetuneData:
    """Decoded posters (uint8, resized once) and labels of the train / val / test parts."""

    images: dict[str, torch.Tensor]  # part -> (n, 3, S, S) uint8
    Y: dict[str, np.ndarray]  # part -> (n, G) uint8
    X: dict[str, np.ndarray]  # part -> cached store features (the linear probe's input)
    ids: dict[str, list[str]]
    genres: list[str]
    split_info: dict
    dropped: dict[str, str]


def image_paths(header: StoreHeader, ids: Sequence[str]) -> list[str]:
    """The poster of each store id, from the manifest the store was extracted from.

    Raises:
        StoreError: a text store, or a store without its manifest.
        ManifestError: a poster is no longer where the manifest says (names the first one).
    """
    if header.modality != "image":
        raise StoreError(
            f"the store holds {header.modality} features; finetune trains image backbones: pass a poster store "
            "made with `genrekit extract --backbone NAME --data MANIFEST` (e.g. mobilenet_v2, resnet50, ViT-B-32)"
        )
    source = header.manifest_source()
    if source is None:
        raise StoreError("the store does not record the manifest it was made from; re-extract it with `genrekit extract`")
    data = source.path
    manifest = source.read()
    by_id = {s.id: s.image for s in manifest.samples}
    paths = []
    for i in ids:
        p = by_id.get(i)
        if p is None:
            raise ManifestError(f"store item {i!r} has no poster in the manifest {data}; re-extract the store from the current manifest")
        if p.startswith(("http://", "https://")):
            raise ManifestError(f"store item {i!r} is a URL ({p}); download the posters first (`genrekit data download`)")
        if not Path(p).is_file():
            raise ManifestError(f"poster {p} (item {i!r}) is no longer where the manifest {data} says; put it back or re-extract")
        paths.append(p)
    return paths


def decode_images(paths: Sequence[str], preprocess, threads: int) -> torch.Tensor:
    """Read and resize every poster once, as uint8 (n, 3, S, S); augmentation works on these.

    Through :func:`genrekit.extraction.read_images`, the path every prediction takes, so the
    network trains on the pixels it will predict from.
    """
    pixels, _, failures = read_images(preprocess, paths, threads)
    if failures:
        i, reason = failures[0]
        raise UnreadableImageError(f"{paths[i]}: {reason}")
    return pixels


def prepare_data(store: FeatureStore, out: Path, config: FinetuneConfig, run: Path | None, preprocess) -> FinetuneData:
    """Split, genres and decoded posters; the split and genres of ``run`` when one is given."""
    from genrekit.runs.leaderboard import HeadsConfig, resolve_split, select_genres

    fs = store.load()
    ids = [str(i) for i in fs.ids]
    all_paths = dict(zip(ids, image_paths(store.header, ids)))  # every poster, checked before any work
    if run is not None:
        res = _run_results(run)
        split_src = res.get("split", {}).get("source")
        if split_src == "stratified":
            by_id = read_split_file(run / (res["split"].get("file") or "split.csv"))
            split = np.array([by_id.get(i, "") for i in ids], dtype=object)
        else:
            split = np.asarray(fs.split if fs.split is not None else [""] * len(ids), dtype=object)
        missing = [g for g in res["genres"] if g not in fs.genres]
        if missing:
            raise StoreError(f"the run {run} has genre {missing[0]!r}, which the store does not; pass the run made on this store")
        keep = [fs.genres.index(g) for g in res["genres"]]
        dropped = dict(res.get("dropped_genres", {}))
        split_info = {**res.get("split", {}), "from_run": str(run)}
    else:
        hc = HeadsConfig(seed=config.seed, min_train_positives=config.min_train_positives)
        split, source = resolve_split(fs, hc, out)
        keep, dropped = select_genres(fs.Y, split, fs.genres, hc)
        split_info = {"source": source, "file": "split.csv" if source == "stratified" else None}
    if not keep:
        raise StoreError("no genre has enough positives in train, val and test to fine-tune on")
    genres = [fs.genres[j] for j in keep]
    Y = fs.Y[:, keep].astype(np.uint8)
    rows = {p: np.flatnonzero(split == p) for p in PARTS}
    for p in PARTS:
        if not len(rows[p]):
            raise StoreError(f"the split has no {p} items; finetune needs train, val and test")
        if config.limit:
            rows[p] = rows[p][: config.limit]
    split_info["counts"] = {p: int(len(rows[p])) for p in PARTS}
    split_info["warnings"] = split_warnings(fs.Y, split, fs.genres)
    threads = config.threads or cpu_count()
    part_ids = {p: [ids[k] for k in rows[p]] for p in PARTS}
    paths = {p: [all_paths[i] for i in part_ids[p]] for p in PARTS}
    t0 = time.perf_counter()
    images = {p: decode_images(paths[p], preprocess, threads) for p in PARTS}
    log.info("decoded %d posters at %d px in %.1f s", sum(len(v) for v in images.values()), preprocess.size, time.perf_counter() - t0)
    return FinetuneData(
        images=images,
        Y={p: Y[rows[p]] for p in PARTS},
        X={p: fs.X[rows[p]].astype(np.float32) for p in PARTS},
        ids=part_ids,
        genres=genres,
        split_info=split_info,
        dropped=dropped,
    )


def _run_results(run: Path) -> dict:
    f = run / "results.json"
    if not f.is_file():
        raise StoreError(f"--run {run} has no results.json; pass the directory `genrekit heads` wrote")
    res = json.loads(f.read_text())
    if "genres" not in res or "heads" not in res:
        raise StoreError(f"--run {run} is not a `genrekit heads` run (no genres/heads in results.json)")
    return res


# -- the linear probe (LP of LP-FT) --------------------------------------------------------------
def linear_probe(data: FinetuneData, header: StoreHeader, run: Path | None, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Weights (G, D) and bias (G,) of a linear probe on the raw cached features, and its source.

    The logreg heads are trained on standardised features; the scaler is folded into the
    weights (w / scale, b - w . mean / scale), so the head reads the backbone's features directly.
    """
    from sklearn.pipeline import Pipeline

    if run is not None and (run / "logreg" / "run.json").is_file():
        from genrekit.heads.saved import load_head

        saved = load_head(run / "logreg")
        saved.check_features(header, "the store")
        model, source = saved.model, f"logreg head of {run}"
        cols, targets = saved.align(data.genres)
    else:
        from sklearn.preprocessing import StandardScaler

        from genrekit.heads.sklearn_heads import LogRegHead

        scaler = StandardScaler().fit(data.X["train"])
        head = LogRegHead(Cs=(0.001, 0.01)).fit(scaler.transform(data.X["train"]), data.Y["train"],
                                               scaler.transform(data.X["val"]), data.Y["val"])  # fmt: skip
        model, source = Pipeline([("scale", scaler), ("head", head)]), "logreg fitted on the store's train split"
        cols = targets = list(range(len(data.genres)))
    scaler = model[0] if isinstance(model, Pipeline) else None
    ovr = (model[-1] if isinstance(model, Pipeline) else model).model_
    W = np.zeros((len(data.genres), data.X["train"].shape[1]), np.float64)
    b = np.zeros(len(data.genres), np.float64)
    for c, j in zip(cols, targets):
        est = ovr.estimators_[c]
        if hasattr(est, "coef_"):
            W[j], b[j] = est.coef_[0], est.intercept_[0]
        else:  # a genre constant in train: sklearn's _ConstantPredictor
            p = float(np.clip(est.y_[0] if hasattr(est, "y_") else 0.5, 1e-4, 1 - 1e-4))
            b[j] = math.log(p / (1 - p))
    if scaler is not None:
        W = W / scaler.scale_[None, :]
        b = b - W @ scaler.mean_
    return W.astype(np.float32), b.astype(np.float32), source


# -- one cell ------------------------------------------------------------------------------------
class _Augment:
    """Poster-friendly augmentation on uint8 tensors (torchvision transforms v2): small shift and
    zoom (titles and credits stay in frame), colour jitter, flip only when asked."""

    def __init__(self, kind: str, flip: bool):
        from torchvision.transforms import v2

        ts = []
        if kind == "poster":
            ts += [v2.RandomAffine(degrees=0, translate=(0.04, 0.04), scale=(0.92, 1.06)), v2.ColorJitter(0.2, 0.2, 0.2)]
        if flip:
            ts.append(v2.RandomHorizontalFlip())
        self.t = v2.Compose(ts) if ts else None

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.t is None:
            return batch
        return torch.stack([self.t(x) for x in batch])  # per image: each poster its own draw


def _amp(device: torch.device):
    """The autocast dtype of training and its evaluation: bf16 where the hardware has it (GPU, or a
    CPU with AVX512-BF16/AMX), else fp16 on GPU; None means fp32."""
    return autocast_dtype(resolve_precision("auto", device))


@torch.no_grad()
def predict_logits(net: FinetuneNet, images: torch.Tensor, preprocess, device: torch.device, channels_last: bool, batch: int = 64) -> np.ndarray:
    """Logits of uint8 images, in eval mode, under the same autocast as training."""
    net.eval()
    amp = _amp(device)
    out = []
    for s in range(0, len(images), batch):
        x = network_input(preprocess, images[s : s + batch], device, channels_last)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out.append(net(x).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, net.head.out_features), np.float32)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _make_optimizer(net: FinetuneNet, cell: Mapping, config: FinetuneConfig) -> torch.optim.Optimizer:
    lr = cell["lr"]
    groups = [
        {"params": [p for p in net.backbone.parameters() if p.requires_grad], "lr": lr},
        {"params": list(net.head.parameters()), "lr": lr * config.head_lr_mult},
    ]
    wd = config.weight_decay
    if cell["optimizer"] == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=wd)
    if cell["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd)
    return torch.optim.RMSprop(groups, lr=lr, momentum=0.9, weight_decay=wd)


def _epoch_seed(seed: int, cell: str, epoch: int) -> int:
    return (seed * 1_000_003 + zlib.crc32(cell.encode()) * 101 + epoch) % (2**63)


def _state_tensors(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}


def save_checkpoint(path: Path, net: nn.Module, opt: torch.optim.Optimizer, sched, state: dict) -> None:
    """Weights, optimizer tensors and the JSON state (history, scheduler, early stopping) in one
    safetensors file, written atomically: no pickle, and never half of one epoch and half of another."""
    from safetensors.torch import save

    tensors = {f"model.{k}": v for k, v in _state_tensors(net).items()}
    osd = opt.state_dict()
    scalars: dict[str, dict] = {}
    for idx, st in osd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt.{idx}.{k}"] = v.detach().cpu().contiguous().clone()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    meta = {"state": json.dumps(state), "param_groups": json.dumps(osd["param_groups"]),
            "opt_scalars": json.dumps(scalars), "scheduler": json.dumps(sched.state_dict())}  # fmt: skip
    atomic_write(path, save(tensors, metadata=meta))


def load_checkpoint_into(path: Path, net: nn.Module, opt: torch.optim.Optimizer, sched) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    net.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for idx, sc in json.loads(meta["opt_scalars"]).items():
        state.setdefault(int(idx), {}).update(sc)
    opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    sched.load_state_dict(json.loads(meta["scheduler"]))
    return json.loads(meta["state"])


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def train_cell(
    net: FinetuneNet,
    init_state: Mapping[str, torch.Tensor],
    data: FinetuneData,
    preprocess,
    cell: Mapping,
    name: str,
    cell_dir: Path,
    config: FinetuneConfig,
    device: torch.device,
    channels_last: bool,
    progress: ProgressCb | None = None,
    position: tuple[int, int] = (1, 1),
) -> dict:
    """Train one grid cell from ``init_state`` (resuming from its checkpoint), keep its best epoch.

    Returns ``{"history", "last_epoch", "last_lr", "seconds", "best_epoch", "best_val_map", "stopped"}``;
    the best weights are in ``cell_dir/best.safetensors``.
    """
    cell_dir.mkdir(parents=True, exist_ok=True)
    ckpt, best_file = cell_dir / "checkpoint.safetensors", cell_dir / "best.safetensors"
    net.load_state_dict(dict(init_state))
    opt = _make_optimizer(net, cell, config)
    # eps=0: a reduction is never skipped as "too small" (the default 1e-8 would freeze lrs below it).
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=config.plateau_factor, patience=config.plateau_patience, eps=0.0)
    made_by = {"cell": dict(cell), **_cell_run_config(config)}
    state = {"epoch": 0, "history": [], "best_val_map": -1.0, "best_epoch": 0, "bad_epochs": 0, "seconds": 0.0,
             "stopped": "max epochs", "made_by": made_by}  # fmt: skip
    if ckpt.is_file():
        state = load_checkpoint_into(ckpt, net, opt, sched)
        if state.get("made_by") != json.loads(json.dumps(made_by)):
            raise ConfigError(f"{ckpt} was written with other options; re-run with the options that made it, or use another --out")
        log.info("%s: resuming after epoch %d", name, state["epoch"])
    aug = _Augment(config.augment, config.flip)
    Xtr, Ytr = data.images["train"], torch.from_numpy(data.Y["train"].astype(np.float32))
    n, bs = len(Xtr), int(cell["batch"])
    amp = _amp(device)
    loss_fn = F.binary_cross_entropy_with_logits if config.loss == "bce" else soft_f1_loss
    while state["epoch"] < config.epochs and state["bad_epochs"] < config.patience:
        epoch = state["epoch"] + 1
        t0 = time.perf_counter()
        _set_train(net, config.freeze_bn)
        total_loss, seen = 0.0, 0
        # Each epoch draws from its own seed: a resumed epoch repeats the same shuffle and augmentation.
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(_epoch_seed(config.seed, name, epoch))
            perm = torch.randperm(n)
            for s in range(0, n, bs):
                idx = perm[s : s + bs]
                x = network_input(preprocess, aug(Xtr[idx]), device, channels_last)
                y = Ytr[idx].to(device)
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    logits = net(x)
                loss = loss_fn(logits.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total_loss += float(loss.detach()) * len(idx)
                seen += len(idx)
                if progress:
                    el = time.perf_counter() - t0
                    progress(TrainEvent(name, *position, epoch, config.epochs, seen, n, total_loss / seen, seen / el if el else 0.0))
        train_s = time.perf_counter() - t0
        Z = predict_logits(net, data.images["val"], preprocess, device, channels_last)
        Yva = data.Y["val"]
        val_map = macro_average_precision(Yva, _sigmoid(Z))
        val_loss = float(F.binary_cross_entropy_with_logits(torch.from_numpy(Z), torch.from_numpy(Yva.astype(np.float32))))
        lr = float(opt.param_groups[0]["lr"])
        if val_map > state["best_val_map"] + 1e-6:
            state.update(best_val_map=val_map, best_epoch=epoch, bad_epochs=0)
            save_weights(best_file, _state_tensors(net))
        else:
            state["bad_epochs"] += 1
        sched.step(val_map)
        secs = time.perf_counter() - t0
        state["history"].append({"epoch": epoch, "train_loss": total_loss / max(seen, 1), "val_loss": val_loss, "val_map": val_map,
                                 "lr": lr, "seconds": secs, "train_images_per_s": n / train_s if train_s else 0.0})  # fmt: skip
        state["epoch"], state["seconds"] = epoch, state["seconds"] + secs
        if state["bad_epochs"] >= config.patience:
            state["stopped"] = f"early stopping: no better val mAP for {config.patience} epoch(s)"
        save_checkpoint(ckpt, net, opt, sched, state)
        log.info("%s epoch %d: loss %.4f, val mAP %.4f, lr %.2g", name, epoch, state["history"][-1]["train_loss"], val_map, lr)
        if progress:
            progress(TrainEvent(name, *position, epoch, config.epochs, n, n, total_loss / max(seen, 1), n / train_s if train_s else 0.0, val_map, lr))
    return {
        "history": state["history"],
        "last_epoch": state["epoch"],
        "last_lr": float(opt.param_groups[0]["lr"]),
        "seconds": state["seconds"],
        "best_epoch": state["best_epoch"],
        "best_val_map": state["best_val_map"],
        "stopped": state["stopped"],
    }


def plot_curve(history: Sequence[Mapping], path: Path, title: str) -> None:
    """Loss (train and val) and val mAP per epoch, as a PNG (matplotlib, Agg)."""
    try:
        import matplotlib
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'genrekit[finetune]'); no training curve for %s", path.parent.name)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(ep, [h["train_loss"] for h in history], "o-", label="train loss")
    ax.plot(ep, [h["val_loss"] for h in history], "s-", label="val loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(ep, [h["val_map"] for h in history], "^-", color="tab:green", label="val mAP")
    ax2.set_ylabel("val mAP")
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], loc="best", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


# -- WiSE-FT -------------------------------------------------------------------------------------
def interpolate(original: Mapping[str, torch.Tensor], finetuned: Mapping[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * original + alpha * finetuned`` for float tensors; others (counters) as fine-tuned.

    alpha 0 returns the original tensors themselves, so the original features come back exactly.
    """
    out = {}
    for k, v in finetuned.items():
        o = original[k]
        if alpha == 0.0:
            out[k] = o.clone()
        elif alpha == 1.0 or not v.is_floating_point():
            out[k] = v.clone()
        else:
            out[k] = torch.lerp(o.float(), v.float(), alpha).to(v.dtype)
    return out


# -- the run -------------------------------------------------------------------------------------
def _score(Y_val, P_val, Y_test, P_test, genres, config: FinetuneConfig) -> tuple[dict, dict, Thresholds, dict]:
    card = score(Y_val, P_val, Y_test, P_test, genres, config.threshold, config.min_threshold_positives, compare_rules=False)
    return card.val, card.test, card.thresholds, card.per_genre


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_finetune(
    store: str | Path,
    out: str | Path,
    config: FinetuneConfig = FinetuneConfig(),
    run: str | Path | None = None,
    progress: ProgressCb | None = None,
) -> dict:
    """Fine-tune the store's backbone over the grid, pick the best cell and WiSE-FT alpha, save it.

    Args:
        store: a poster store (``genrekit extract``); its manifest, split, genres, backbone,
            weights and preprocessing are what the run uses.
        out: the run directory (created; re-running the same command resumes it).
        config: grid, epochs, schedule, augmentation ...
        run: a ``genrekit heads`` run directory on this store: its split, genres and ``logreg``
            head (the linear probe) are used.
        progress: called with a :class:`TrainEvent` after every batch and every epoch.

    Returns:
        The results dict also written to ``out/results.json``.

    Example:
        >>> res = run_finetune("posters.h5", "ft/", FinetuneConfig(epochs=3))  # doctest: +SKIP
        >>> res["best"], res["final"]["test"]["tuned"]["map_macro"]
    """
    config.validate()
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = Path(run) if run is not None else None
    fstore = FeatureStore(store)
    header = fstore.header
    if header.modality != "image":
        image_paths(header, [])  # raises the text-store message
    enc = header.encoder
    weights = enc.get("weights_path") or enc.get("weights")
    if str(weights).startswith("file:"):
        raise StoreError(f"the store's weights file {weights[5:]} is not known on this machine; re-extract with --weights PATH")
    from genrekit.backbones.base import resolve_device

    device = resolve_device(config.device)
    if config.threads and device.type == "cpu":
        torch.set_num_threads(config.threads)
    # A multi-layer store (`extract --layers`, mobilenet_v2's default) trains through the same pooled
    # stage statistics it holds, so the linear probe fitted on the store fits the network's features.
    layers = enc["layers"].split(",") if enc.get("layers") else None
    encoder = trainable_encoder(enc["name"], weights, device, config.image_size, header.preprocessing.get("resize"), layers, enc.get("layer_stats"))
    if encoder.dim != header.dim:
        raise StoreError(f"the store's features are {header.dim}-d, but {enc['name']} rebuilt from its header gives {encoder.dim}-d; re-extract the store")
    if header.encoder.get("weights_sha256") and encoder.identity.get("weights_sha256") != header.encoder.get("weights_sha256"):
        raise StoreError(f"the weights file {weights} differs from the one the store was made with (weights_sha256)")
    preprocess = encoder.preprocess
    channels_last = encoder.spec.channels_last
    data = prepare_data(fstore, out, config, run, preprocess)
    W, b, probe_source = linear_probe(data, header, run, config.seed) if config.lp_ft else (None, None, "none (random init)")
    net = FinetuneNet(encoder, len(data.genres), l2=header.normalisation == "l2").to(device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    frozen = freeze_before_stages(net.source, encoder.spec.options.get("stages") or (), config.train_stages)
    if frozen:
        log.info("training the last %d stages of %s; %d parameter tensors before them stay frozen", config.train_stages, enc["name"], frozen)
    with torch.no_grad():
        if W is not None:
            net.head.weight.copy_(torch.from_numpy(W))
            net.head.bias.copy_(torch.from_numpy(b))
        else:
            g = torch.Generator().manual_seed(config.seed)
            nn.init.normal_(net.head.weight, std=0.01, generator=g)
            net.head.bias.zero_()
    init_state = _state_tensors(net)

    cells = config.cells()
    entries: dict[str, dict] = {}
    for k, cell in enumerate(cells, start=1):
        name = cell_name(cell)
        cdir = out / "cells" / name
        done_file = cdir / "result.json"
        if done_file.is_file():
            prev = json.loads(done_file.read_text())
            if prev.get("config") == cell and prev.get("run_config") == _cell_run_config(config):
                entries[name] = prev
                log.info("%s: finished in an earlier run, not re-run", name)
                continue
            raise ConfigError(f"{cdir} was trained with other options; use another --out or the options that made it")
        r = train_cell(net, init_state, data, preprocess, cell, name, cdir, config, device, channels_last, progress, (k, len(cells)))
        net.load_state_dict(_load_weights(cdir / "best.safetensors"))
        P_val = _sigmoid(predict_logits(net, data.images["val"], preprocess, device, channels_last))
        P_test = _sigmoid(predict_logits(net, data.images["test"], preprocess, device, channels_last))
        val, test, th, _ = _score(data.Y["val"], P_val, data.Y["test"], P_test, data.genres, config)
        entry = {"config": cell, "run_config": _cell_run_config(config), **r, "val": val, "test": test, "thresholds": th.to_json()}
        plot_curve(r["history"], cdir / "curve.png", f"{name}: best epoch {r['best_epoch']}, {r['stopped']}")
        atomic_write_json(done_file, entry)
        entries[name] = entry

    best = max(entries, key=lambda c: entries[c]["val"]["map_macro"])
    # WiSE-FT between the LP-FT start (original backbone + linear probe) and the best cell.
    ft_state = _load_weights(out / "cells" / best / "best.safetensors")
    curve = []
    for a in config.wise_alphas:
        net.load_state_dict(interpolate(init_state, ft_state, float(a)))
        curve.append(macro_average_precision(data.Y["val"], _sigmoid(predict_logits(net, data.images["val"], preprocess, device, channels_last))))
    chosen = float(config.wise_alphas[int(np.nanargmax(curve))])
    final_state = interpolate(init_state, ft_state, chosen)
    net.load_state_dict(final_state)
    P_val = _sigmoid(predict_logits(net, data.images["val"], preprocess, device, channels_last))
    P_test = _sigmoid(predict_logits(net, data.images["test"], preprocess, device, channels_last))
    val, test, th, per_genre = _score(data.Y["val"], P_val, data.Y["test"], P_test, data.genres, config)
    save_part_predictions(out, data.ids, data.Y, P_val, P_test)  # the report's curves and gallery

    # The saved backbone has the registry module's keys, so `extract --weights` loads it as is.
    atomic_write_json(out / FINETUNE_FILE, {
        **save_network(out, net),
        "kind": "finetune",
        "genrekit_version": __version__,
        "backbone": enc["name"],
        "original_encoder": dict(enc),
        "preprocessing": preprocess.to_dict(),
        "normalisation": header.normalisation,
        "genres": data.genres,
        "thresholds": th.to_json(),
        "best_cell": best,
        "wise_ft_alpha": chosen,
        "channels_last": channels_last,
        "precision": resolve_precision("auto", device),  # the autocast its validation and test scores were made in
    })  # fmt: skip
    results = {
        "kind": "finetune",
        "genrekit_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config.to_json(),
        "store": str(Path(store).resolve()),
        "features": {"n_items": int(len(fstore)), "dim": int(header.dim), "store_header": header.to_json()},
        "split": data.split_info,
        "genres": data.genres,
        "genre_counts": {p: dict(zip(data.genres, data.Y[p].sum(axis=0).tolist())) for p in PARTS},
        "dropped_genres": data.dropped,
        "linear_probe": probe_source,
        "device": str(device),
        "precision": resolve_precision("auto", device),
        "image_size": preprocess.size,
        "cells": entries,
        "best": best,
        "best_rule": "highest validation map_macro",
        "wise_ft": {"alphas": [float(a) for a in config.wise_alphas], "val_map": curve, "chosen": chosen},
        "final": {"cell": best, "alpha": chosen, "val": val, "test": test, "thresholds": th.to_json(), "per_genre": per_genre},
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        "wall_seconds": time.perf_counter() - t_start,
    }
    atomic_write_json(out / "results.json", results)
    write_csv(out / "results.csv", entries)
    return results


def _cell_run_config(config: FinetuneConfig) -> dict:
    """The options besides the cell's own that a finished cell depends on (a re-run must match)."""
    d = config.to_json()
    for k in ("grid", "wise_alphas", "threshold", "min_threshold_positives", "device", "threads"):
        d.pop(k)
    return d


CSV_KEYS = ("map_macro", "roc_auc_macro", "f1_micro", "f1_macro", "hamming_loss")


def write_csv(path: Path, entries: Mapping[str, Mapping]) -> None:
    cols = ["cell", "optimizer", "batch", "lr", "val_map_macro", *(f"test_{k}" for k in CSV_KEYS), "best_epoch", "last_epoch", "last_lr", "seconds"]
    with atomic_open(path, newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for name, e in entries.items():
            t = e["test"]["tuned"]
            w.writerow([name, e["config"]["optimizer"], e["config"]["batch"], e["config"]["lr"], e["val"]["map_macro"],
                        *(t[k] for k in CSV_KEYS), e["best_epoch"], e["last_epoch"], e["last_lr"], round(e["seconds"], 2)])  # fmt: skip
