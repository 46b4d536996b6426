"""`genrekit report` (HTML for heads, fused and fine-tune runs) and `genrekit explain` (saliency maps)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import make_heads_run
from PIL import Image
from synthetic import synthetic_features
from test_fusion import FAST, two_modalities
from torch import nn
from typer.testing import CliRunner

from genrekit.backbones import create_encoder
from genrekit.evaluation.thresholds import fixed
from genrekit.features import join_features
from genrekit.heads.registry import create_head
from genrekit.heads.saved import SavedHead
from genrekit.inference.explain import ExplainConfig, build_explainer, explain_poster, head_module, write_explanations
from genrekit_cli.apps.report import build_report
from genrekit.runs.fused import FusionConfig, run_fused
from genrekit.runs.leaderboard import HeadsConfig, run_heads
from genrekit_cli.main import app

runner = CliRunner()
G4 = {"Drama": 0.45, "Comedy": 0.35, "Horror": 0.25, "Western": 0.2}
HEAD_FIGURES = ("per-genre", "pr", "roc", "threshold-global", "threshold-genre", "reliability", "confusion")
DATA_FIGURES = ("counts", "cooccurrence", "labels-per-item")


def figures(page: str) -> set[str]:
    return set(re.findall(r'data-figure="([^"]+)"', page))


def assert_self_contained(page: str) -> None:
    assert not re.search(r'(src|href)="(https?:)?//', page), "the report must not fetch anything"
    assert "<script" not in page


# -- report ------------------------------------------------------------------------------------
def test_report_of_a_heads_run_has_every_section_and_saved_predictions(tmp_path):
    fs = synthetic_features(n=360, dim=12, prevalence=G4, seed=1)
    res = run_heads(fs, tmp_path / "runs", HeadsConfig(heads=("logreg", "knn"), jobs=1, head_params=FAST, min_train_positives=5))
    with np.load(tmp_path / "runs" / "logreg" / "predictions.npz") as z:
        assert z["P_test"].shape == z["Y_test"].shape == (res["split"]["counts"]["test"], len(res["genres"]))
        assert len(z["ids_train"]) == len(z["Y_train"]) == res["split"]["counts"]["train"]
        assert set(z["ids_val"]).isdisjoint(z["ids_test"])
    page = build_report(tmp_path / "runs", heads=["knn"])
    assert_self_contained(page)
    found = figures(page)
    for h in ("logreg", "knn"):
        assert {f"{f}-{h}" for f in HEAD_FIGURES} <= found, found
    assert {"leaderboard", "rules-logreg", *DATA_FIGURES} <= found
    # Genres in the run's own order in the page's fact table.
    assert ", ".join(res["genres"]) in page


def test_report_refuses_a_head_it_does_not_know_and_a_non_run(tmp_path):
    fs = synthetic_features(n=200, dim=8, prevalence=G4, seed=2)
    run_heads(fs, tmp_path / "runs", HeadsConfig(heads=("logreg",), jobs=1, head_params=FAST, min_train_positives=5))
    from genrekit.errors import StoreError, UnknownNameError

    with pytest.raises(UnknownNameError):
        build_report(tmp_path / "runs", heads=["nope"])
    with pytest.raises(StoreError, match="results.json"):
        build_report(tmp_path / "runs" / "logreg")


def test_report_of_a_fused_run(tmp_path):
    joined = join_features(two_modalities(n=300), "outer")
    run_fused(joined, tmp_path / "fused", HeadsConfig(heads=("logreg",), jobs=1, head_params=FAST), FusionConfig(fusion="both", block_step=0.5))
    page = build_report(tmp_path / "fused")
    assert_self_contained(page)
    found = figures(page)
    assert "leaderboard" in found and {f"{f}-logreg" for f in HEAD_FIGURES} <= found and set(DATA_FIGURES) <= found
    assert "Late-fusion weights" in page and "test items that have every store" in page


def _finetune_run(d: Path, genres: list[str], with_predictions: bool) -> None:
    rng = np.random.default_rng(0)
    cells = {}
    for c, lr in (("bs16-lr1e-4", 1e-4), ("bs32-lr1e-5", 1e-5)):
        hist = [{"epoch": e, "train_loss": 0.7 / e, "val_loss": 0.6 / e + 0.01 * e, "val_map": 0.3 + 0.05 * e, "lr": lr, "seconds": 3.0} for e in range(1, 5)]
        metrics = {"map_macro": 0.4, "f1_micro": 0.5, "f1_macro": 0.3, "roc_auc_macro": 0.7, "hamming_loss": 0.2}
        cells[c] = {"config": {"batch_size": 16, "lr": lr}, "history": hist, "val": {"map_macro": 0.5},
                    "test": {"tuned": metrics, "at_0.5": metrics}, "last_epoch": 4, "last_lr": lr, "seconds": 12.0,
                    "thresholds": fixed(len(genres)).to_json()}  # fmt: skip
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({
        "kind": "finetune", "genres": genres, "cells": cells, "best": "bs16-lr1e-4",
        "wise_ft": {"alphas": [0.0, 0.5, 1.0], "val_map": [0.3, 0.45, 0.42], "chosen": 0.5},
    }))  # fmt: skip
    if with_predictions:
        arrays = {}
        for p, n in (("train", 80), ("val", 40), ("test", 40)):
            arrays[f"Y_{p}"] = (rng.random((n, len(genres))) < 0.4).astype(np.uint8)
            arrays[f"ids_{p}"] = np.array([f"{p}{i}" for i in range(n)])
        for p in ("val", "test"):
            arrays[f"P_{p}"] = np.clip(0.5 * arrays[f"Y_{p}"] + 0.5 * rng.random(arrays[f"Y_{p}"].shape), 0, 1).astype(np.float32)
        np.savez(d / "predictions.npz", **arrays)


@pytest.mark.parametrize("with_predictions", [False, True])
def test_report_of_a_finetune_run(tmp_path, with_predictions):
    genres = ["Drama", "Comedy", "Horror"]
    _finetune_run(tmp_path / "FT", genres, with_predictions)
    page = build_report(tmp_path / "FT")
    assert_self_contained(page)
    found = figures(page)
    assert {"leaderboard", "training-curves", "wise-ft"} <= found
    if with_predictions:
        assert {"pr-bs16-lr1e-4", "roc-bs16-lr1e-4", "reliability-bs16-lr1e-4", "confusion-bs16-lr1e-4", *DATA_FIGURES} <= found
    else:
        assert "saved no per-item probabilities" in page


# -- explain: the head as a torch module ---------------------------------------------------------
@pytest.mark.parametrize("name", ["logreg", "chain", "mlp", "softf1", "zeroshot"])
def test_head_module_gives_the_saved_heads_probabilities(name):
    fs = synthetic_features(n=240, dim=10, prevalence=G4, seed=3)
    params = {"logreg": {"Cs": (0.1,)}, "chain": {"Cs": (0.1,)}, "mlp": {"max_epochs": 5, "hidden": 8},
              "softf1": {"max_epochs": 5, "hidden": 0}, "zeroshot": {"prompt_embeddings": np.random.default_rng(0).normal(size=(4, 10))}}[name]  # fmt: skip
    head = create_head(name, **params).fit(fs.X[:160], fs.Y[:160], fs.X[160:200], fs.Y[160:200])
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    model = head if name == "zeroshot" else Pipeline([("scale", StandardScaler().fit(fs.X[:160])), ("head", head)])
    saved = SavedHead(name, model, list(fs.genres), fixed(4))
    mod = head_module(saved)
    with torch.no_grad():
        P = torch.sigmoid(mod(torch.from_numpy(fs.X[200:]))).numpy()
    np.testing.assert_allclose(P, saved.predict_proba(fs.X[200:]), atol=1e-5)
    assert head_module(SavedHead("knn", None, list(fs.genres), fixed(4))) is None


def test_an_ensemble_is_differentiable_through_its_differentiable_members():
    from genrekit.heads.ensemble import EnsembleModel

    fs = synthetic_features(n=240, dim=10, prevalence=G4, seed=4)
    fit = lambda name, **kw: SavedHead(name, create_head(name, **kw).fit(fs.X[:160], fs.Y[:160], fs.X[160:200], fs.Y[160:200]),
                                       list(fs.genres), fixed(4))  # fmt: skip
    members = {"logreg": fit("logreg", Cs=(0.1,)), "knn": fit("knn", ks=(5,))}
    saved = SavedHead("ensemble", EnsembleModel(members, {"logreg": 3, "knn": 1}), list(fs.genres), fixed(4))
    mod = head_module(saved)
    X = torch.from_numpy(fs.X[200:]).requires_grad_(True)
    logits = mod(X)
    np.testing.assert_allclose(torch.sigmoid(logits).detach().numpy(), saved.predict_proba(fs.X[200:]), atol=1e-5)  # exact output
    logits[:, 0].sum().backward()
    assert X.grad is not None and X.grad.abs().sum() > 0  # the gradient flows through logreg
    assert "logreg 75%" in mod.describe() and "knn enter as constants" in mod.describe()
    only_knn = SavedHead("ensemble", EnsembleModel({"knn": members["knn"]}, {"knn": 2}), list(fs.genres), fixed(4))
    assert head_module(only_knn) is None  # nothing to differentiate: occlusion


# -- explain: a model built to look at known quadrants ------------------------------------------
class QuadrantMask(nn.Module):
    def __init__(self):
        super().__init__()
        mask = torch.zeros(4, 8, 8)
        mask[0, :4, :4] = mask[1, :4, 4:] = mask[2, 4:, :4] = mask[3, 4:, 4:] = 1
        self.register_buffer("mask", mask)

    def forward(self, a):
        return a * self.mask


class QuadrantNet(nn.Module):
    """Genre g's evidence is the brightness of quadrant g (0 top-left, 1 top-right, 2 bottom-left,
    3 bottom-right): channel c of the 8x8 feature map is the image's brightness inside quadrant c
    only, and genre g's logit sums channel g. Grad-CAM and occlusion should both find quadrant g."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.fill_(3.0)
        self.pool = nn.AvgPool2d(4)
        self.quadrants = QuadrantMask()  # the last spatial layer

    def forward(self, x):
        return self.quadrants(self.pool(torch.relu(self.conv(x)))).sum(dim=(2, 3)) - 20.0


QUADRANT_GENRES = ["TopLeft", "TopRight", "BottomLeft", "BottomRight"]


def quadrant_mass(m: np.ndarray) -> np.ndarray:
    h, w = m.shape
    q = [m[: h // 2, : w // 2], m[: h // 2, w // 2 :], m[h // 2 :, : w // 2], m[h // 2 :, w // 2 :]]
    return np.array([x.sum() for x in q]) / max(m.sum(), 1e-12)


@pytest.fixture
def quadrant_run(tmp_path):
    rng = np.random.default_rng(0)
    poster = tmp_path / "poster.png"
    Image.fromarray(rng.integers(100, 256, (60, 40, 3), dtype=np.uint8)).save(poster)  # 40 wide, 60 high
    run = SimpleNamespace(kind="finetune", name="quadrants", path=tmp_path, genres=QUADRANT_GENRES, thresholds=fixed(4),
                          inputs=("image",), network=QuadrantNet().eval(), encoder=create_encoder("test-tiny-cnn"),
                          identity=lambda: {"kind": "finetune"})  # fmt: skip
    return run, poster


@pytest.mark.parametrize("method", ["gradcam", "occlusion"])
def test_maps_land_in_the_quadrant_that_holds_each_genres_evidence(quadrant_run, method):
    run, poster = quadrant_run
    ex = build_explainer(run)
    e = explain_poster(ex, str(poster), ExplainConfig(genres=tuple(QUADRANT_GENRES), method=method, occlusion_window=4))
    assert e.method == method
    for q, g in enumerate(QUADRANT_GENRES):
        m = e.maps[g]
        assert m.shape == (60, 40) and np.isfinite(m).all() and m.max() > 0
        mass = quadrant_mass(m)
        assert mass.argmax() == q and mass[q] > 0.6, (g, mass)
    # Different genres, different maps: distinctness well below 1.
    assert e.distinctness is not None and e.distinctness < 0.5
    assert set(e.sanity) == set(QUADRANT_GENRES) and "fine-tuned network" in e.sanity_detail


def test_progress_counts_every_step_and_a_raise_stops_the_work(quadrant_run):
    run, poster = quadrant_run
    ex = build_explainer(run)
    for method, config, steps in [("gradcam", ExplainConfig(top_k=3), 2 * 3),
                                  # a 4-px window with stride 4 on the 32-px input: 8 x 8 positions, 8 batches of 8, twice
                                  ("occlusion", ExplainConfig(top_k=3, method="occlusion", occlusion_window=4, occlusion_stride=4), 2 * 8)]:  # fmt: skip
        seen = []
        e = explain_poster(ex, poster.read_bytes(), config, progress=lambda d, t, s: seen.append((d, t, s)))
        assert [d for d, _, _ in seen] == list(range(steps + 1)) and {t for _, t, _ in seen} == {steps}, (method, seen)
        assert seen[-1][2] == "done" and e.method == method and e.path == "(upload)"

    class Stop(Exception):
        pass

    def stop_at_two(done, total, stage):
        if done == 2:
            raise Stop

    with pytest.raises(Stop):
        explain_poster(ex, str(poster), ExplainConfig(top_k=3), progress=stop_at_two)


def test_explain_writes_overlays_maps_and_a_summary(quadrant_run, tmp_path):
    run, poster = quadrant_run
    ex = build_explainer(run)
    e = explain_poster(ex, str(poster), ExplainConfig(top_k=2))
    summary = write_explanations([e], ex, tmp_path / "out", run.identity())
    assert (tmp_path / "out" / "poster.png").is_file()
    with np.load(tmp_path / "out" / "maps.npz") as z:
        assert sorted(z.files) == sorted(f"poster/{g}" for g in e.genres)
        assert all(z[k].shape == (60, 40) for k in z.files)
    rec = json.loads((tmp_path / "out" / "explain.json").read_text())["posters"][0]
    assert rec == json.loads(json.dumps(summary["posters"][0]))
    assert "mean_pairwise_spearman" in rec["distinctness"] and "mean_spearman" in rec["sanity_check"]
    assert len(rec["genres"]) == 2 and rec["genres"][0]["probability"] >= rec["genres"][1]["probability"]


# -- explain and report through the CLI on a real (tiny) image run ----------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return make_heads_run(tmp_path_factory.mktemp("tinycnn"), "test-tiny-cnn", ["logreg", "knn"])


def test_explain_cli_on_an_image_head_gives_maps_in_the_posters_pixel_grid(tiny_run, tmp_path):
    img = tiny_run["images"][0]
    res = runner.invoke(app, ["explain", "--run", str(tiny_run["runs"] / "logreg"), str(img), "--top-k", "2", "--out", str(tmp_path / "x")])
    assert res.exit_code == 0, res.output
    assert "genre distinctness" in res.output and "sanity" in res.output and "Grad-CAM" in res.output
    W, H = Image.open(img).size
    with np.load(tmp_path / "x" / "maps.npz") as z:
        maps = [z[k] for k in z.files]
    assert len(maps) == 2 and all(m.shape == (H, W) and np.isfinite(m).all() for m in maps)
    assert not np.allclose(maps[0], maps[1])
    # A head that is not differentiable is explained by occlusion, and says so.
    res = runner.invoke(app, ["explain", "--run", str(tiny_run["runs"] / "knn"), str(img), "--top-k", "1", "--out", str(tmp_path / "k"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["posters"][0]["method"] == "occlusion"


@pytest.mark.parametrize(
    "args, code, message",
    [(["--genres", "Drama", "--top-k", "2"], 1, "not both"), (["--genres", "Nope"], 1, "genre"), (["--method", "magic"], 1, "method")],
)
def test_explain_cli_bad_options_are_one_line(tiny_run, tmp_path, args, code, message):
    res = runner.invoke(app, ["explain", "--run", str(tiny_run["runs"] / "logreg"), str(tiny_run["images"][0]), *args, "--out", str(tmp_path)])
    assert res.exit_code == code and message in res.output and "Traceback" not in res.output


def test_report_cli_embeds_a_gallery_of_test_posters(tiny_run, tmp_path):
    out = tmp_path / "r.html"
    res = runner.invoke(app, ["report", str(tiny_run["runs"]), "--out", str(out)])
    assert res.exit_code == 0, res.output
    page = out.read_text()
    assert_self_contained(page)
    assert "Most confident wrong" in page and "Most confident right" in page
    assert len(re.findall(r'data-gallery="', page)) >= 2 and "data:image/jpeg;base64," in page
    res = runner.invoke(app, ["report", str(tiny_run["runs"]), "--out", str(tmp_path / "r.txt")])
    assert res.exit_code == 1 and ".html" in res.output
