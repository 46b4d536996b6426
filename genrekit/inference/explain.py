"""Per-genre saliency maps of a run's own encoder and head, with two honesty checks: ``genrekit explain``.

For each poster and each chosen genre, a map of where the evidence for that genre lies:

- **Grad-CAM** (pytorch-grad-cam) when the run is differentiable end to end: the frozen encoder,
  then the head rebuilt as a torch module from its saved parameters (``logreg``, ``chain``,
  ``mlp``, ``softf1``, ``zeroshot``; the standardisation in front of it), or a fine-tuned
  network. The target is the genre's logit; the layer is the encoder's last spatial feature map
  (a CNN's last convolutional block, or an open_clip ViT's last block with its patch tokens
  reshaped into a grid).
  An ``ensemble`` is differentiable through its differentiable members: its exact probability,
  as a logit, is the target, and members that are not differentiable (``rf``, ``svc``, ``knn``)
  enter as constants, so the map shows the evidence the differentiable members weigh.
- **Occlusion** otherwise, for heads that are not differentiable (``rf``, ``svc``, ``knn``, an
  ensemble of only those) or encoders without a spatial layer (``colorstats``): a patch at the
  input mean slides over the model input and the map is the drop in the genre's score. One
  forward pass per patch position scores every genre at once.

Both methods report progress between steps (one Grad-CAM pass, one batch of occluded copies)
through an optional callback, which may raise to stop the work (the server cancels an
explanation whose client left, and lets predictions run between steps).

Every explanation carries (a) the model-randomisation sanity check of Adebayo et al. (2018,
"Sanity checks for saliency maps"): the Spearman rank correlation of each map with the map the
same head gives on a randomly re-initialised encoder (near 1 means the map shows the image, not
what the model learnt), and (b) genre distinctness: the mean pairwise Spearman correlation of the
genres' maps on that poster (near 1 means the maps are the same whatever the genre).

Maps are returned in the poster's own pixel grid (undoing the run's resize, crop or letterbox);
the correlations are computed on the model's input grid, where the maps were made.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from genrekit.errors import ConfigError, UnknownNameError
from genrekit.rundir import refuse_nonfinite

log = logging.getLogger(__name__)

METHODS = ("auto", "gradcam", "occlusion")
DIFFERENTIABLE_HEADS = ("logreg", "chain", "mlp", "softf1", "zeroshot")
OCCLUSION_BATCH = 8  # occluded copies per forward pass: one progress step
Progress = Callable[[int, int, str], None]  # (steps done, steps in all, what comes next); may raise to stop


@dataclass(frozen=True)
class ExplainConfig:
    """Options of ``genrekit explain``; fields map to flags.

    Attributes:
        genres: genres to explain (``--genres A,B``); empty: the ``top_k`` most probable.
        top_k: how many of the most probable genres to explain when ``genres`` is empty.
        method: ``auto`` (Grad-CAM where the run is differentiable, else occlusion), ``gradcam``
            or ``occlusion``.
        occlusion_window: side of the occluding patch in model-input pixels (0: input size / 7).
        occlusion_stride: step between patch positions (0: half the window; the window itself
            makes 7 x 7 positions, four times fewer passes, as ``genrekit serve`` does).
        sanity_seed: seeds the randomly initialised encoder of the sanity check.
    """

    genres: tuple[str, ...] = ()
    top_k: int = 3
    method: str = "auto"
    occlusion_window: int = 0
    occlusion_stride: int = 0
    sanity_seed: int = 1

    def validate(self) -> None:
        if self.method not in METHODS:
            raise UnknownNameError("explanation method", self.method, METHODS)
        if not self.genres and self.top_k < 1:
            raise ConfigError(f"--top-k {self.top_k} must be at least 1")
        if self.occlusion_window < 0 or self.occlusion_stride < 0:
            raise ConfigError(f"occlusion window {self.occlusion_window} and stride {self.occlusion_stride} must be >= 0 (0: the default)")


@dataclass
class Explanation:
    """The maps of one poster and their checks.

    Attributes:
        path: the poster.
        size: (width, height) of the poster: every map is (height, width).
        genres: the genres explained, most probable first when chosen by ``top_k``.
        probabilities: the run's probability of each of ``genres``.
        predicted: whether the run's thresholds predict each of ``genres``.
        maps: genre -> float32 (height, width) map in [0, 1].
        method: ``gradcam`` or ``occlusion``, with the layer or patch used in ``method_detail``.
        sanity: genre -> Spearman correlation with the randomised-encoder map (None when one of
            the two maps is constant, e.g. all zero, where rank correlation is undefined).
        sanity_detail: what was randomised.
        distinctness: mean pairwise Spearman correlation of the genres' maps (None for one genre).
        pairs: ``"A|B"`` -> Spearman correlation of those two genres' maps.
    """

    path: str
    size: tuple[int, int]
    genres: list[str]
    probabilities: list[float]
    predicted: list[bool]
    maps: dict[str, np.ndarray]
    method: str
    method_detail: str
    sanity: dict[str, float | None]
    sanity_detail: str
    distinctness: float | None
    pairs: dict[str, float | None] = field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-ready record (the maps themselves go to maps.npz)."""
        vals = [v for v in self.sanity.values() if v is not None]
        return {
            "poster": self.path,
            "size": {"width": self.size[0], "height": self.size[1]},
            "method": self.method,
            "method_detail": self.method_detail,
            "genres": [
                {"genre": g, "probability": p, "predicted": d, "sanity_spearman": self.sanity.get(g)}
                for g, p, d in zip(self.genres, self.probabilities, self.predicted)
            ],
            "sanity_check": {
                "test": "model randomisation (Adebayo et al., 2018): Spearman correlation of each map with the "
                "same genre's map on a randomly initialised model; near 1 = the map does not depend on what was learnt",
                "randomised": self.sanity_detail,
                "mean_spearman": float(np.mean(vals)) if vals else None,
            },
            "distinctness": {
                "test": "mean pairwise Spearman correlation of the genres' maps on this poster; near 1 = the same map for every genre",
                "mean_pairwise_spearman": self.distinctness,
                "pairs": self.pairs,
            },
        }


# -- the head as a torch module ------------------------------------------------------------------
class _Standardise(nn.Module):
    def __init__(self, mean: np.ndarray, scale: np.ndarray):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean, np.float32)))
        self.register_buffer("scale", torch.as_tensor(np.asarray(scale, np.float32)))

    def forward(self, x):
        return (x - self.mean) / self.scale


def _logit(p: float) -> float:
    p = float(np.clip(p, 1e-6, 1 - 1e-6))
    return float(np.log(p / (1 - p)))


def _linear_from_ovr(ovr, n_features: int) -> nn.Linear:
    """One-vs-rest logistic regressions as one Linear layer (a constant genre: zero weights)."""
    lin = nn.Linear(n_features, len(ovr.estimators_))
    W = np.zeros((len(ovr.estimators_), n_features), np.float32)
    b = np.zeros(len(ovr.estimators_), np.float32)
    for j, est in enumerate(ovr.estimators_):
        if hasattr(est, "coef_"):
            W[j], b[j] = est.coef_[0], est.intercept_[0]
        else:  # sklearn's _ConstantPredictor for a genre with one class in train
            b[j] = _logit(float(np.ravel(est.predict_proba(np.zeros((1, n_features))))[-1]))
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(W))
        lin.bias.copy_(torch.from_numpy(b))
    return lin


class _ChainLogits(nn.Module):
    """scikit-learn's ClassifierChain as logits: each link sees the features and the earlier links'
    0/1 predictions (sklearn's default ``chain_method="predict"``), which are step functions, so
    they enter as constants and the gradient flows through the features only."""

    def __init__(self, chain, n_features: int):
        super().__init__()
        self.order = list(int(j) for j in chain.order_)
        self.n_features = n_features
        self.links = nn.ModuleList()
        for est in chain.estimators_:
            lin = nn.Linear(est.coef_.shape[1], 1)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(est.coef_.astype(np.float32)))
                lin.bias.copy_(torch.from_numpy(est.intercept_.astype(np.float32)))
            self.links.append(lin)

    def forward(self, x):
        outs, prev = [], []
        for lin in self.links:
            z = lin(torch.cat([x, *prev], dim=1) if prev else x)
            outs.append(z)
            prev.append((z > 0).to(x.dtype).detach())
        z = torch.cat(outs, dim=1)
        inv = np.empty(len(self.order), dtype=np.int64)
        inv[self.order] = np.arange(len(self.order))
        return z[:, torch.from_numpy(inv)]


class _ZeroShotLogits(nn.Module):
    def __init__(self, head):
        super().__init__()
        self.register_buffer("prompts", torch.as_tensor(np.asarray(head.prompts_, np.float32)))
        self.register_buffer("coef", torch.as_tensor(np.asarray(head.coef_, np.float32)))
        self.register_buffer("intercept", torch.as_tensor(np.asarray(head.intercept_, np.float32)))

    def forward(self, x):
        s = nn.functional.normalize(x, dim=1) @ nn.functional.normalize(self.prompts, dim=1).T
        return s * self.coef + self.intercept


class _EnsembleLogits(nn.Module):
    """An ensemble's exact probability as a logit (its sigmoid is the ensemble's output), with
    gradients through the differentiable members only: the others' probabilities are constants."""

    def __init__(self, ensemble, modules: dict[str, nn.Module]):
        super().__init__()
        total = sum(ensemble.weights.values())
        self.share = {n: w / total for n, w in ensemble.weights.items()}
        self.members = nn.ModuleDict(modules)
        self.constant = {n: m for n, m in ensemble.members.items() if n not in modules and self.share.get(n)}

    def forward(self, x):
        p = sum(self.share[n] * torch.sigmoid(m(x)) for n, m in self.members.items())
        if self.constant:
            z = x.detach().cpu().numpy()
            p = p + torch.from_numpy(sum(self.share[n] * np.asarray(m.predict_proba(z), np.float32) for n, m in self.constant.items()))
        return torch.logit(p.clamp(1e-6, 1 - 1e-6))

    def describe(self) -> str:
        through = ", ".join(f"{n} {self.share[n]:.0%}" for n in self.members)
        rest = f"; {', '.join(self.constant)} enter as constants (not differentiable)" if self.constant else ""
        return f"through the ensemble's differentiable members ({through} of its weight){rest}"


def head_module(saved) -> nn.Module | None:
    """A saved head (and its standardisation) as a torch module from features to genre logits.

    Returns ``None`` for heads that are not differentiable (``rf``, ``svc``, ``knn``, an ensemble
    with no differentiable member). Its sigmoid equals ``saved.predict_proba`` (tested).
    """
    from sklearn.pipeline import Pipeline

    from genrekit.heads.ensemble import ENSEMBLE

    if saved.name == ENSEMBLE:
        members = {n: head_module(m) for n, m in saved.model.members.items() if saved.model.weights.get(n)}
        members = {n: m for n, m in members.items() if m is not None}
        return _EnsembleLogits(saved.model, members).eval() if members else None
    if saved.name not in DIFFERENTIABLE_HEADS:
        return None
    head = saved.head
    d = int(head.n_features_in_)
    if saved.name == "logreg":
        core: nn.Module = _linear_from_ovr(head.model_, d)
    elif saved.name == "chain":
        core = _ChainLogits(head.model_, d)
    elif saved.name in ("mlp", "softf1"):
        core = copy.deepcopy(head.module_).float()
    else:
        core = _ZeroShotLogits(head)
    parts = []
    if isinstance(saved.model, Pipeline):
        sc = saved.model[0]
        parts.append(_Standardise(sc.mean_, sc.scale_))
    return nn.Sequential(*parts, core).eval()


# -- the scoring network: preprocessed image batch -> genre logits -------------------------------
class _Features(nn.Module):
    """An encoder's image tower as a float32 module, with the store's normalisation."""

    def __init__(self, encoder, l2: bool):
        super().__init__()
        self.encoder = copy.copy(encoder)  # a shallow copy whose module is a float32 deep copy
        self.backbone = None
        if encoder.module is not None:
            self.backbone = copy.deepcopy(encoder.module).float().requires_grad_(True)
            self.encoder.module = self.backbone
        self.encoder.cast_dtype, self.encoder.amp_dtype = None, None
        self.l2 = l2

    def forward(self, x):
        z = self.encoder._forward_images(x).float()
        return nn.functional.normalize(z, dim=1) if self.l2 else z


class ScoringNetwork(nn.Module):
    """image batch -> genre scores: logits for a differentiable head, probabilities for another one."""

    def __init__(self, features: nn.Module, head: nn.Module | Callable, differentiable: bool):
        super().__init__()
        self.features = features
        self.differentiable = differentiable
        if differentiable:
            self.head = head
        else:
            self._predict = head

    def forward(self, x):
        z = self.features(x)
        if self.differentiable:
            return self.head(z)
        return torch.from_numpy(np.asarray(self._predict(z.detach().cpu().numpy()), np.float32))

    def probabilities(self, x) -> np.ndarray:
        with torch.no_grad():
            out = self(x)
        return (torch.sigmoid(out) if self.differentiable else out).numpy()


def _randomised(module: nn.Module, seed: int) -> nn.Module:
    """A deep copy with every parameter re-drawn: each layer's own initialiser (reset_parameters,
    under a fixed seed), and for parameters no layer owns (CLIP's class and position embeddings),
    normal noise at that tensor's scale. Buffers reset where the layer defines how (BatchNorm)."""
    m = copy.deepcopy(module)
    covered: set[int] = set()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for sub in m.modules():
            if hasattr(sub, "reset_parameters") and callable(sub.reset_parameters):
                try:
                    sub.reset_parameters()
                except (TypeError, NotImplementedError):
                    continue
                covered.update(id(p) for p in sub.parameters(recurse=False))
        with torch.no_grad():
            for p in m.parameters():
                if id(p) not in covered:
                    p.normal_(0.0, float(p.detach().float().std()) if p.numel() > 1 else 0.02)
    return m


@dataclass
class Explainer:
    """The pieces of a run that the maps need: its network, the real and the randomised one."""

    network: ScoringNetwork
    randomised: ScoringNetwork | None
    randomised_detail: str
    preprocess: object
    load_pil: Callable[[str | bytes], Image.Image]
    genres: list[str]
    thresholds: object
    differentiable: bool
    spatial: bool
    source: str = "the run"  # the weights file, named when they give NaN or inf


def build_explainer(run, seed: int = 1) -> Explainer:
    """An :class:`Explainer` for a loaded run: a single image head, or any run with a ``network``
    (a fine-tuned model: an ``nn.Module`` from preprocessed images to genre logits).

    Raises :class:`ConfigError` for runs that do not read posters.
    """
    from genrekit.data.images import decode_image_bytes, load_image

    encoder = getattr(run, "encoder", None)
    inputs = getattr(run, "inputs", ("image",))
    if "image" in inputs and encoder is None:
        raise ConfigError(f"{run.path}: explain draws maps through one poster encoder and its head; this {run.kind} "
                          f"run combines {', '.join(inputs)}: explain its poster-only head (RUNS/image-<backbone>/<head>)")
    if "image" not in inputs or getattr(encoder, "preprocess", None) is None:
        raise ConfigError(f"{run.path}: explain draws maps on posters, but this run reads {', '.join(inputs)}")
    pre = encoder.preprocess

    def load_pil(source: str | bytes) -> Image.Image:
        if isinstance(source, (bytes, bytearray, memoryview)):
            return decode_image_bytes(bytes(source), draft=2 * pre.size)[0]
        return load_image(str(source), draft=2 * pre.size)

    network_module = getattr(run, "network", None)
    if network_module is not None:
        net = copy.deepcopy(network_module).float().eval().requires_grad_(True)
        scoring = ScoringNetwork(nn.Identity(), net, True)
        rnd = ScoringNetwork(nn.Identity(), _randomised(net, seed).eval(), True)
        return Explainer(scoring, rnd, "every weight of the fine-tuned network (full model randomisation)",
                         pre, load_pil, list(run.genres), run.thresholds, True, _has_spatial(net, pre.size), str(run.path))  # fmt: skip
    saved = run.saved
    l2 = saved.header.normalisation == "l2"
    features = _Features(encoder, l2).eval()
    hm = head_module(saved)
    differentiable = hm is not None
    head = hm if differentiable else saved.predict_proba
    scoring = ScoringNetwork(features, head, differentiable)
    if features.backbone is not None and any(True for _ in features.backbone.parameters()):
        rf = _Features(encoder, l2)
        rf.backbone = _randomised(features.backbone, seed)
        rf.encoder.module = rf.backbone
        rnd: ScoringNetwork | None = ScoringNetwork(rf.eval(), head, differentiable)
        detail = f"every weight of the {encoder.spec.name} encoder (the same {saved.name} head on top)"
    elif differentiable:
        rnd = ScoringNetwork(features, _randomised(hm, seed).eval(), True)
        detail = f"the {saved.name} head's weights ({encoder.spec.name} has no weights to randomise)"
    else:
        rnd, detail = None, f"nothing: {encoder.spec.name} has no weights and the {saved.name} head is not a torch module"
    spatial = features.backbone is not None and _has_spatial(features, pre.size)
    return Explainer(scoring, rnd, detail, pre, load_pil, list(run.genres), run.thresholds, differentiable, spatial, saved.source or str(run.path))


# -- which layer Grad-CAM reads ---------------------------------------------------------------
def _vit_grid(module: nn.Module) -> tuple[nn.Module, int] | None:
    """An open_clip ViT's last block (its first LayerNorm, as pytorch-grad-cam's docs use) and grid side."""
    for sub in module.modules():
        tr = getattr(sub, "transformer", None)
        if hasattr(sub, "conv1") and hasattr(sub, "class_embedding") and tr is not None and hasattr(tr, "resblocks"):
            g = sub.grid_size
            return tr.resblocks[-1].ln_1, int(g[0] if isinstance(g, (tuple, list)) else g)
    return None


def _last_spatial_layer(module: nn.Module, size: int) -> nn.Module | None:
    """The module whose (B, C, h, w) output, h and w > 1, is produced last in a forward pass."""
    found: list[nn.Module] = []
    hooks = []

    def hook(mod, _inp, out):
        if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-1] > 1 and out.shape[-2] > 1:
            found.append(mod)

    for sub in module.modules():
        if sub is not module:
            hooks.append(sub.register_forward_hook(hook))
    try:
        with torch.no_grad():
            module(torch.zeros(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
    return found[-1] if found else None


def _has_spatial(module: nn.Module, size: int) -> bool:
    return _vit_grid(module) is not None or _last_spatial_layer(module, size) is not None


def _target_layer(network: ScoringNetwork, size: int) -> tuple[nn.Module, Callable | None, str]:
    vit = _vit_grid(network)
    if vit is not None:
        layer, g = vit

        def tokens_to_grid(t: torch.Tensor) -> torch.Tensor:
            # (B, 1 + g*g, C) or (1 + g*g, B, C) tokens -> (B, C, g, g), class token dropped.
            if t.shape[1] != g * g + 1:
                t = t.transpose(0, 1)
            return t[:, 1:, :].reshape(t.shape[0], g, g, t.shape[2]).permute(0, 3, 1, 2)

        return layer, tokens_to_grid, f"last transformer block (patch tokens as a {g}x{g} grid)"
    layer = _last_spatial_layer(network.features if not isinstance(network.features, nn.Identity) else network.head, size)
    if layer is None:
        raise ConfigError("this encoder has no spatial feature map for Grad-CAM; use --method occlusion")
    name = next((n for n, m in network.named_modules() if m is layer), type(layer).__name__)
    return layer, None, f"last spatial layer {name}"


# -- the maps ------------------------------------------------------------------------------
def _gradcam(network: ScoringNetwork, x: torch.Tensor, cols: Sequence[int], step: Callable[[str], None]) -> tuple[np.ndarray, str]:
    """(len(cols), H, W) Grad-CAM maps on the model-input grid, each in [0, 1]; one step per genre."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer, reshape, detail = _target_layer(network, x.shape[-1])
    maps = []
    with GradCAM(model=network, target_layers=[layer], reshape_transform=reshape) as cam:
        for j in cols:
            step("Grad-CAM")
            maps.append(cam(input_tensor=x, targets=[ClassifierOutputTarget(int(j))])[0])
    describe = getattr(getattr(network, "head", None), "describe", None)
    through = f", {describe()}" if describe else ""
    return np.stack(maps).astype(np.float32), f"Grad-CAM (pytorch-grad-cam) on the genre's logit, {detail}{through}"


def _occlusion_positions(size: int, window: int, stride: int) -> tuple[int, int, list[tuple[int, int]]]:
    w = window or max(2, size // 7)
    stride = stride or max(1, w // 2)
    starts = list(range(0, size - w + 1, stride))
    if starts[-1] != size - w:
        starts.append(size - w)  # the last row and column of patches reach the edge
    return w, stride, [(t, left) for t in starts for left in starts]


def _occlusion(network: ScoringNetwork, x: torch.Tensor, cols: Sequence[int], window: int, stride: int,
               step: Callable[[str], None]) -> tuple[np.ndarray, str]:  # fmt: skip
    """(len(cols), H, W) occlusion maps: the drop in each genre's score when a patch is set to the
    input mean (0 after normalisation), averaged over the patches covering each pixel. One forward
    pass per patch position scores every genre; one step per batch of ``OCCLUSION_BATCH`` copies."""
    size = x.shape[-1]
    w, stride, positions = _occlusion_positions(size, window, stride)
    cols = [int(j) for j in cols]
    with torch.no_grad():
        base = network(x)[0, cols].numpy()
        drop = np.zeros((len(cols), size, size), np.float64)
        count = np.zeros((size, size), np.float64)
        for k in range(0, len(positions), OCCLUSION_BATCH):
            step("occlusion")
            chunk = positions[k : k + OCCLUSION_BATCH]
            xb = x.repeat(len(chunk), 1, 1, 1)
            for i, (t, left) in enumerate(chunk):
                xb[i, :, t : t + w, left : left + w] = 0.0
            scores = network(xb)[:, cols].numpy()
            for i, (t, left) in enumerate(chunk):
                drop[:, t : t + w, left : left + w] += (base - scores[i])[:, None, None]
                count[t : t + w, left : left + w] += 1
    maps = np.clip(drop / np.maximum(count, 1), 0, None)  # evidence for the genre: where hiding it lowers the score
    peak = maps.reshape(len(cols), -1).max(axis=1)
    maps = maps / np.where(peak > 0, peak, 1)[:, None, None]
    space = "logit" if network.differentiable else "probability"
    detail = f"occlusion, {w}x{w} patch at the input mean, stride {stride} ({len(positions)} positions), drop in the genre's {space}"
    return maps.astype(np.float32), detail


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    from scipy.stats import spearmanr

    a, b = np.ravel(a), np.ravel(b)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def to_input_grid(m: np.ndarray, pre, size: tuple[int, int]) -> np.ndarray:
    """A map on the model's (s, s) input grid, back on the poster's (height, width) pixel grid.

    Undoes the preprocessing's resize: ``squash`` stretches back; ``center-crop`` puts the map
    where the crop came from (what was cut off gets 0: the model never saw it); ``letterbox``
    drops the padding.
    """
    W, H = size
    s = pre.size
    img = Image.fromarray(np.asarray(m, np.float32), mode="F")
    if pre.resize == "squash":
        out = img.resize((W, H), Image.Resampling.BILINEAR)
    elif pre.resize == "center-crop":
        short = round(s / pre.crop_pct)
        scale = short / min(W, H)
        nw, nh = max(s, round(W * scale)), max(s, round(H * scale))
        canvas = Image.new("F", (nw, nh), 0.0)
        canvas.paste(img, ((nw - s) // 2, (nh - s) // 2))
        out = canvas.resize((W, H), Image.Resampling.BILINEAR)
    else:  # letterbox
        scale = s / max(W, H)
        nw, nh = max(1, round(W * scale)), max(1, round(H * scale))
        left, top = (s - nw) // 2, (s - nh) // 2
        out = img.crop((left, top, left + nw, top + nh)).resize((W, H), Image.Resampling.BILINEAR)
    return np.clip(np.nan_to_num(np.asarray(out, np.float32)), 0.0, None)


def explain_poster(ex: Explainer, source: str | bytes, config: ExplainConfig = ExplainConfig(), progress: Progress | None = None) -> Explanation:
    """Maps, probabilities and both checks for one poster (a file path, or the file's bytes).

    ``progress(done, total, stage)`` is called before each step (and once at the end); it may
    raise to stop the work, and the exception propagates.

    Example:
        >>> ex = build_explainer(load_run("runs/logreg"))  # doctest: +SKIP
        >>> e = explain_poster(ex, "poster.jpg", ExplainConfig(top_k=3))
        >>> e.maps["Drama"].shape == (e.size[1], e.size[0]), e.distinctness
    """
    config.validate()
    img = ex.load_pil(source)  # the poster the maps are drawn on (its size)
    x = ex.preprocess.normalise(ex.preprocess.load(source)[None])  # the pixels predict feeds the network
    P = refuse_nonfinite(ex.network.probabilities(x), ex.source)[0]
    if config.genres:
        unknown = [g for g in config.genres if g not in ex.genres]
        if unknown:
            raise UnknownNameError("genre", unknown[0], ex.genres, hint=f"this run's genres: {', '.join(ex.genres)}")
        cols = [ex.genres.index(g) for g in config.genres]
    else:
        cols = [int(j) for j in np.argsort(-P, kind="stable")[: config.top_k]]
    method = config.method
    if method == "auto":
        method = "gradcam" if ex.differentiable and ex.spatial else "occlusion"
    if method == "gradcam" and not (ex.differentiable and ex.spatial):
        why = "the head is not differentiable" if not ex.differentiable else "the encoder has no spatial feature map"
        raise ConfigError(f"Grad-CAM does not apply to this run: {why}; use --method occlusion (or auto)")

    networks = [ex.network] + ([ex.randomised] if ex.randomised is not None else [])
    per_network = len(cols) if method == "gradcam" else -(-len(_occlusion_positions(x.shape[-1], config.occlusion_window, config.occlusion_stride)[2]) // OCCLUSION_BATCH)
    total, done = per_network * len(networks), 0

    def step(stage: str) -> None:
        nonlocal done
        if progress is not None:
            progress(done, total, stage)
        done += 1

    def maps_of(net: ScoringNetwork) -> tuple[np.ndarray, str]:
        if method == "gradcam":
            return _gradcam(net, x, cols, step)
        return _occlusion(net, x, cols, config.occlusion_window, config.occlusion_stride, step)

    M, detail = maps_of(ex.network)
    genres = [ex.genres[j] for j in cols]
    sanity: dict[str, float | None] = {g: None for g in genres}
    if ex.randomised is not None:
        R, _ = maps_of(ex.randomised)
        sanity = {g: _spearman(M[k], R[k]) for k, g in enumerate(genres)}
    if progress is not None:
        progress(total, total, "done")
    pairs = {f"{genres[a]}|{genres[b]}": _spearman(M[a], M[b]) for a in range(len(cols)) for b in range(a + 1, len(cols))}
    known = [v for v in pairs.values() if v is not None]
    decided = ex.thresholds.apply(P[None, :])[0]
    return Explanation(
        path=source if isinstance(source, str) else "(upload)",
        size=img.size,
        genres=genres,
        probabilities=[float(P[j]) for j in cols],
        predicted=[bool(decided[j]) for j in cols],
        maps={g: to_input_grid(M[k], ex.preprocess, img.size) for k, g in enumerate(genres)},
        method=method,
        method_detail=detail,
        sanity=sanity,
        sanity_detail=ex.randomised_detail,
        distinctness=float(np.mean(known)) if known else None,
        pairs=pairs,
    )


# -- writing -------------------------------------------------------------------------------
# The overlay figure is bounded in pixels whatever the poster's shape or the number of genres: each
# panel's aspect ratio is clipped (a 1 x 5000 strip is drawn stretched in a tall panel, not as a
# 13000-inch figure), panels wrap into rows, and the whole figure is scaled to fit OVERLAY_MAX_FIG_PX.
OVERLAY_DPI = 100
OVERLAY_PANEL_IN = 2.6  # inches per panel side (width)
OVERLAY_ASPECT = (0.25, 4.0)  # the most extreme height / width a panel is drawn with
OVERLAY_COLS = 6
OVERLAY_MAX_PX = 512  # the poster is drawn from a copy at most this many pixels a side
OVERLAY_MAX_FIG_PX = 4000  # the figure's width and height, at most, in pixels


def overlay_layout(size: tuple[int, int], panels: int) -> tuple[float, float, int, int, str]:
    """Figure width and height (inches), columns, rows and the imshow aspect for ``panels`` panels of
    a ``size = (width, height)`` poster; never more than :data:`OVERLAY_MAX_FIG_PX` pixels a side."""
    w, h = max(1, size[0]), max(1, size[1])
    ratio = h / w
    clipped = min(max(ratio, OVERLAY_ASPECT[0]), OVERLAY_ASPECT[1])
    cols = min(panels, OVERLAY_COLS)
    rows = -(-panels // cols)
    width = OVERLAY_PANEL_IN * cols + 0.8
    height = (OVERLAY_PANEL_IN * clipped + 0.6) * rows + 0.4
    scale = min(1.0, OVERLAY_MAX_FIG_PX / OVERLAY_DPI / max(width, height))
    # "equal" keeps the poster's shape where the panel has it; "auto" stretches a clipped one to its panel.
    return width * scale, height * scale, cols, rows, "equal" if clipped == ratio else "auto"


def overlay_figure(e: Explanation, image: Image.Image, path: Path) -> Path:
    """The poster, then one heat map per genre over it, titled with the genre's probability, and
    a colour scale: each map is scaled to its own maximum (1 = where the genre's evidence peaks)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from genrekit.atomic import atomic_open

    n = len(e.genres) + 1
    width_in, height_in, cols, rows, aspect = overlay_layout(image.size, n)
    # Drawn from a bounded copy: a 10000 x 10000 poster is shown at panel resolution, not decoded again per panel.
    shown = image.copy()
    shown.thumbnail((OVERLAY_MAX_PX, OVERLAY_MAX_PX))
    # File names and genres are the user's text: never parsed as mathtext ("$x$" stays "$x$").
    with matplotlib.rc_context({"text.parse_math": False, "figure.constrained_layout.use": True}):
        fig, grid = plt.subplots(rows, cols, figsize=(width_in, height_in), dpi=OVERLAY_DPI, squeeze=False)
        for ax in grid.ravel()[n:]:
            ax.axis("off")
        axes = grid.ravel()[:n]
        axes[0].imshow(shown, aspect=aspect)
        axes[0].set_title(Path(e.path).name[:28], fontsize=10)
        im = None
        for ax, g, p, d, s in zip(axes[1:], e.genres, e.probabilities, e.predicted, (e.sanity[g] for g in e.genres)):
            ax.imshow(shown, aspect=aspect)
            peak = max(float(e.maps[g].max()), 1e-6)
            heat = Image.fromarray(np.asarray(e.maps[g] / peak, np.float32), mode="F").resize(shown.size, Image.BILINEAR)
            im = ax.imshow(np.asarray(heat), cmap="jet", alpha=0.5, vmin=0, vmax=1, aspect=aspect)
            sc = "n/a" if s is None else f"{s:.2f}"
            ax.set_title(f"{g}{'*' if d else ''} p={p:.2f}\nvs random: rho={sc}", fontsize=10)
        for ax in axes:
            ax.axis("off")
        if im is not None:
            bar = fig.colorbar(im, ax=list(axes), shrink=0.8, pad=0.02)
            bar.set_label("share of the map's peak", fontsize=10)
            bar.ax.tick_params(labelsize=9)
        dist = "n/a" if e.distinctness is None else f"{e.distinctness:.2f}"
        fig.suptitle(f"{e.method}; genre maps mean pairwise rho={dist} (* = predicted)", fontsize=10)
        with atomic_open(path, "wb") as fh:
            fig.savefig(fh, format="png", dpi=OVERLAY_DPI)
        plt.close(fig)
    return path


def overlay_png(e: Explanation, image: Image.Image, genre: str, max_side: int = 320) -> bytes:
    """One genre's heat map blended over the poster as PNG bytes (``serve``'s page shows these).

    The map is scaled to its own maximum, as in :func:`overlay_figure`, with matplotlib's ``jet``.
    """
    import io

    from matplotlib import colormaps

    img = image.convert("RGB")
    scale = min(1.0, max_side / max(img.size))
    size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
    img = img.resize(size, Image.BILINEAR)
    m = e.maps[genre]
    m = m / max(float(m.max()), 1e-6)
    m = np.asarray(Image.fromarray((m * 255).astype(np.uint8)).resize(size, Image.BILINEAR), np.float32) / 255
    heat = colormaps["jet"](m)[..., :3] * 255
    blend = (0.5 * np.asarray(img, np.float32) + 0.5 * heat).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(blend).save(buf, "PNG", optimize=False)
    return buf.getvalue()


def write_explanations(explanations: Sequence[Explanation], ex: Explainer, out: str | Path, run_identity: dict) -> dict:
    """Write ``<poster>.png`` per poster, ``maps.npz`` (key ``"<poster>/<genre>"``) and ``explain.json``."""
    from genrekit.atomic import atomic_open, atomic_write_json

    from genrekit.atomic import refuse_overwrite

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arrays, records, used = {}, [], set()
    posters = {f"the poster {e.path}": e.path for e in explanations}
    for e in explanations:
        stem, k = Path(e.path).stem, 1
        while stem in used or any(Path(p).resolve() == (out / f"{stem}.png").resolve() for p in posters.values()):
            k += 1  # never an overlay over a poster explained (explain poster.png --out .)
            stem = f"{Path(e.path).stem}-{k}"
        used.add(stem)
        refuse_overwrite(out / f"{stem}.png", posters, "--out")
        png = overlay_figure(e, ex.load_pil(e.path), out / f"{stem}.png")
        rec = e.summary()
        rec["overlay"] = png.name
        for g in e.genres:
            arrays[f"{stem}/{g}"] = e.maps[g]
            next(r for r in rec["genres"] if r["genre"] == g)["map"] = f"maps.npz:{stem}/{g}"
        records.append(rec)
    with atomic_open(out / "maps.npz", "wb") as fh:
        np.savez_compressed(fh, **arrays)
    summary = {"run": run_identity, "maps": "maps.npz: one float32 (height, width) array per poster and genre, in [0, 1]",
               "posters": records}  # fmt: skip
    atomic_write_json(out / "explain.json", summary)
    return summary


__all__ = ["ExplainConfig", "Explainer", "Explanation", "build_explainer", "explain_poster", "head_module", "overlay_png",
           "to_input_grid", "write_explanations"]
