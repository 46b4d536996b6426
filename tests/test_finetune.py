"""`genrekit finetune`: the loop learns, stops and resumes exactly; WiSE-FT; the saved run and backbone."""

from __future__ import annotations

import csv
import json
import random
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from conftest import SHARED
from typer.testing import CliRunner

from genrekit.backbones import create_encoder
from genrekit.errors import ConfigError, ManifestError, StoreError
from genrekit.extraction import ExtractConfig, extract
from genrekit.inference.loaded import Item, load_run, predict_items
from genrekit.backbones.finetuned import FinetuneNet
from genrekit.runs.finetune import FinetuneConfig, interpolate, parse_grid, run_finetune
from genrekit.store import FeatureStore
from genrekit_cli.main import app

runner = CliRunner()
TINY = dict(image_size=None, threads=1, wise_alphas=(0.0, 1.0), augment="none")


def _separable(root, n=90, seed=0):
    """Posters whose genres are visible: red -> Action, green -> Comedy, blue -> Drama (any mix)."""
    rng = random.Random(seed)
    rows = ["id,image,genres"]
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        on = [rng.random() < 0.5 for _ in range(3)]
        if not any(on):
            on[i % 3] = True
        colour = tuple(rng.randint(170, 255) if b else rng.randint(0, 70) for b in on)
        Image.new("RGB", (24, 36), colour).save(root / "img" / f"{i}.png")
        rows.append(f"m{i},img/{i}.png,{'|'.join(g for g, b in zip(('Action', 'Comedy', 'Drama'), on) if b)}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    manifest = _separable(root)
    extract(ExtractConfig(backbone="test-tiny-cnn", data=str(manifest), out=str(root / "s.h5")))
    return root / "s.h5"


@pytest.fixture(scope="module")
def learnt(store, tmp_path_factory):
    """Plain fine-tuning (random head) of the tiny CNN: must learn the colour rule."""
    out = tmp_path_factory.mktemp("learnt") / "ft"
    cfg = FinetuneConfig(epochs=6, lp_ft=False, patience=6, grid=parse_grid(["lr=3e-3", "batch=16"]), **TINY)
    return out, run_finetune(store, out, cfg)


def test_the_loop_learns_a_separable_task(learnt):
    out, res = learnt
    cell = res["cells"][res["best"]]
    h = cell["history"]
    assert h[-1]["train_loss"] < h[0]["train_loss"] - 0.05
    assert cell["val"]["map_macro"] > 0.9
    assert res["final"]["test"]["tuned"]["map_macro"] > 0.9
    # The same keys as `genrekit heads` results.json, and the table of cells.
    heads_keys = {"f1_micro", "f1_macro", "map_macro", "roc_auc_macro", "hamming_loss"}
    assert heads_keys <= set(cell["test"]["tuned"]) and heads_keys <= set(cell["test"]["at_0.5"])
    assert res["kind"] == "finetune" and sorted(res["genres"]) == ["Action", "Comedy", "Drama"]
    assert {"epoch", "train_loss", "val_loss", "val_map", "lr", "seconds"} <= set(h[0])
    assert res["wise_ft"]["alphas"] == [0.0, 1.0] and res["wise_ft"]["chosen"] in (0.0, 1.0)
    assert (out / "cells" / res["best"] / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "results.csv").read_text().splitlines()[0].startswith("cell,optimizer,batch,lr,val_map_macro")
    assert json.loads((out / "results.json").read_text())["best"] == res["best"]


def test_lp_ft_starts_from_the_logreg_head_of_a_heads_run(store, tmp_path):
    from genrekit.runs.leaderboard import HeadsConfig, run_heads

    fs = FeatureStore(store)
    heads = run_heads(fs.load(), tmp_path / "runs", HeadsConfig(heads=("logreg",), baseline=False, jobs=1), header=fs.header)
    res = run_finetune(store, tmp_path / "ft", FinetuneConfig(epochs=1, **TINY), run=tmp_path / "runs")
    assert res["linear_probe"].startswith("logreg head of") and res["genres"] == heads["genres"]
    assert res["split"]["counts"] == heads["split"]["counts"]
    # alpha 0 = the original backbone with the probe folded into one linear layer: the head's own scores.
    assert res["wise_ft"]["val_map"][0] == pytest.approx(heads["heads"]["logreg"]["val"]["map_macro"], abs=1e-4)


def test_early_stopping_and_plateau_fire(store, tmp_path):
    # A learning rate too small to change anything: val mAP never improves after epoch 1.
    cfg = FinetuneConfig(epochs=8, patience=2, plateau_factor=0.5, plateau_patience=0, grid=parse_grid(["lr=1e-12"]), **TINY)
    res = run_finetune(store, tmp_path / "ft", cfg)
    cell = res["cells"][res["best"]]
    assert cell["last_epoch"] == 3 and cell["best_epoch"] == 1 and cell["stopped"].startswith("early stopping")
    lrs = [h["lr"] for h in cell["history"]]
    assert lrs == pytest.approx([1e-12, 1e-12, 5e-13])  # halved after each epoch without improvement
    assert cell["last_lr"] == pytest.approx(2.5e-13)


def test_resume_after_a_kill_equals_an_uninterrupted_run(store, tmp_path):
    cfg = FinetuneConfig(epochs=3, patience=3, grid=parse_grid(["lr=1e-3,3e-4"]), **{**TINY, "augment": "poster"})
    full = run_finetune(store, tmp_path / "a", cfg)

    class Killed(BaseException):
        pass

    def kill_in_second_cell(ev):
        if ev.cell_index == 2 and ev.epoch == 2 and ev.val_map is not None:
            raise Killed  # after epoch 2's checkpoint was written

    with pytest.raises(Killed):
        run_finetune(store, tmp_path / "b", cfg, progress=kill_in_second_cell)
    with pytest.raises(ConfigError, match="other options"):  # a resumed run must repeat the options
        run_finetune(store, tmp_path / "b", replace(cfg, head_lr_mult=3.0))
    first = tmp_path / "b" / "cells" / "adamw-b32-lr0.001" / "result.json"
    before = first.stat().st_mtime_ns
    seen = []
    resumed = run_finetune(store, tmp_path / "b", cfg, progress=lambda ev: seen.append((ev.cell_index, ev.epoch)))
    assert first.stat().st_mtime_ns == before  # the finished cell was not re-run
    assert {e for _, e in seen} == {3} and {c for c, _ in seen} == {2}  # only the last epoch of cell 2 ran

    def strip(res):
        return {c: [{k: v for k, v in h.items() if k not in ("seconds", "train_images_per_s")} for h in e["history"]] for c, e in res["cells"].items()}

    assert strip(resumed) == strip(full)
    assert resumed["final"]["test"] == full["final"]["test"] and resumed["wise_ft"] == full["wise_ft"]
    assert (tmp_path / "a" / "backbone.safetensors").read_bytes() == (tmp_path / "b" / "backbone.safetensors").read_bytes()


def test_finetune_trains_through_the_multi_layer_features_of_the_default_store(store, tmp_path):
    """A `--layers all` store (mobilenet_v2's default) fine-tunes through the same pooled stage
    statistics: at alpha 0 the network is the frozen multi-layer probe, and the saved backbone
    extracts with `--layers all` to the network's own features."""
    from genrekit.runs.leaderboard import HeadsConfig, run_heads

    manifest = store.parent / "labels.csv"
    multi = tmp_path / "all.h5"
    extract(ExtractConfig(backbone="test-tiny-cnn", data=str(manifest), out=str(multi), layers="all"))
    fs = FeatureStore(multi)
    assert fs.header.encoder["layers"] == "2,4" and fs.header.dim == 2 * (8 + 16)
    heads = run_heads(fs.load(), tmp_path / "runs", HeadsConfig(heads=("logreg",), baseline=False, jobs=1), header=fs.header)
    res = run_finetune(multi, tmp_path / "ft", FinetuneConfig(epochs=2, **TINY), run=tmp_path / "runs")
    assert res["features"]["dim"] == 48 and res["linear_probe"].startswith("logreg head of")
    assert res["wise_ft"]["val_map"][0] == pytest.approx(heads["heads"]["logreg"]["val"]["map_macro"], abs=1e-4)
    run = load_run(tmp_path / "ft")
    assert run.identity()["layers"] == "2,4"
    paths = [str(store.parent / "img" / f"{i}.png") for i in range(4)]
    preds, failures = predict_items(run, [Item(p, image=p) for p in paths])
    assert len(preds) == 4 and not failures
    out = tmp_path / "ft.h5"
    extract(ExtractConfig(backbone="test-tiny-cnn", weights=str(tmp_path / "ft" / "backbone.safetensors"), data=str(manifest),
                          out=str(out), layers="all", limit=4, precision="fp32"))  # fp32 like the network, on a bf16 CPU too  # fmt: skip
    x = torch.stack([run.encoder.load_image(p) for p in paths])
    with torch.no_grad():
        feats = run.network.features(x).numpy()
    got = FeatureStore(out).load()
    np.testing.assert_allclose(got.X[[list(got.ids).index(f"m{i}") for i in range(4)]], feats, rtol=1e-4, atol=1e-5)


def test_wise_ft_at_alpha_0_gives_the_original_features_exactly():
    enc = create_encoder("test-tiny-cnn", precision="fp32")
    x = torch.randn(4, 3, 32, 32)
    original = enc.encode_images(x)
    train_enc = create_encoder("test-tiny-cnn", precision="fp32")
    net = FinetuneNet(train_enc, 3)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    tuned = {k: (v + 0.1 * torch.randn_like(v)) if v.is_floating_point() else v for k, v in start.items()}
    net.load_state_dict(interpolate(start, tuned, 0.0))
    with torch.no_grad():
        np.testing.assert_array_equal(net.eval().features(x).numpy(), original)
    net.load_state_dict(interpolate(start, tuned, 0.5))
    with torch.no_grad():
        assert not np.allclose(net.eval().features(x).numpy(), original)


def test_the_run_predicts_and_its_backbone_round_trips_through_extract(learnt, store, tmp_path):
    out, res = learnt
    run = load_run(out, precision="fp32")  # compared with the fp32 network below (a bf16 CPU would pick bf16)
    assert run.kind == "finetune" and run.inputs == ("image",) and run.genres == res["genres"]
    header = FeatureStore(store).header
    images = [row.split(",")[1] for row in (store.parent / "labels.csv").read_text().splitlines()[1:4]]
    paths = [str(store.parent / p) for p in images]
    preds, failures = predict_items(run, [Item(p, image=p) for p in paths] + [Item("gone", image=str(tmp_path / "gone.jpg"))])
    assert len(preds) == 3 and [f[0] for f in failures] == ["gone"]
    assert run.identity()["weights_sha256"] == json.loads((out / "finetune.json").read_text())["weights_sha256"]
    # The network maps a preprocessed batch to logits; encoder.load_image is its preprocessing.
    x = torch.stack([run.encoder.load_image(p) for p in paths])
    with torch.no_grad():
        P = torch.sigmoid(run.network(x)).numpy()
    P_run, ok, _ = run.predict_proba([Item(p, image=p) for p in paths])
    np.testing.assert_allclose(P, P_run, rtol=1e-5, atol=1e-6)

    ft_store = tmp_path / "ft.h5"
    extract(ExtractConfig(backbone="test-tiny-cnn", weights=str(out / "backbone.safetensors"), data=str(store.parent / "labels.csv"), out=str(ft_store), precision="fp32"))
    fs = FeatureStore(ft_store)
    assert fs.header.encoder["weights_sha256"] == run.identity()["weights_sha256"]
    assert fs.header.encoder["weights_sha256"] != header.encoder.get("weights_sha256")
    with torch.no_grad():
        feats = run.network.features(x).numpy()
    got = fs.load()
    rows = [list(got.ids).index(f"m{i}") for i in range(3)]
    np.testing.assert_allclose(got.X[rows], feats, rtol=1e-4, atol=1e-5)


def test_cli_finetune_and_predict(learnt, store, tmp_path):
    out, _ = learnt
    poster = store.parent / "img" / "0.png"
    res = runner.invoke(app, ["predict", "--run", str(out), str(poster), "--json"])
    assert res.exit_code == 0, res.output
    preds = json.loads(res.stdout)["predictions"]
    assert len(preds) == 1 and preds[0]["item"] == str(poster)
    text = runner.invoke(app, ["predict", "--run", str(out), str(poster)])
    assert text.exit_code == 0 and "predicted: the genres at or above their threshold" in text.stdout


def test_cli_finetune_prints_the_table_and_writes_the_run(store, tmp_path):
    out = tmp_path / "ft"
    args = ["finetune", "--store", str(store), "--out", str(out), "--epochs", "1", "--image-size", "0", "--augment", "none",
            "--wise-alphas", "0,1", "--threads", "1"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "val mAP" in res.stdout and "WiSE-FT val mAP by alpha" in res.stdout and "peak RSS" in res.stdout
    assert load_run(out).kind == "finetune"
    again = runner.invoke(app, args)  # everything finished: nothing is re-trained, same table
    assert again.exit_code == 0 and json.loads((out / "results.json").read_text())["cells"]["adamw-b32-lr0.0003"]["last_epoch"] == 1


def test_refuses_text_stores_missing_posters_and_bad_grids(store, tmp_path):
    with pytest.raises(ConfigError, match="--grid"):
        parse_grid(["colour=red"])
    with pytest.raises(ConfigError, match="optimizer"):
        FinetuneConfig(grid=parse_grid(["optimizer=lbfgs"])).validate()
    assert len(FinetuneConfig(grid=parse_grid(["study"])).cells()) == 27
    root = tmp_path / "moved"
    manifest = _separable(root, n=30)
    extract(ExtractConfig(backbone="test-tiny-cnn", data=str(manifest), out=str(root / "s.h5")))
    (root / "img" / "7.png").unlink()
    with pytest.raises(ManifestError, match=r"7\.png"):
        run_finetune(root / "s.h5", tmp_path / "ft", FinetuneConfig(epochs=1, **TINY))
    text = tmp_path / "plots.csv"
    text.write_text("id,plot,genres\n" + "".join(f"t{i},a story number {i},Drama\n" for i in range(6)))
    extract(ExtractConfig(backbone="test-tiny-text", data=str(text), out=str(tmp_path / "t.h5"), modality="text"))
    res = runner.invoke(app, ["finetune", "--store", str(tmp_path / "t.h5"), "--out", str(tmp_path / "ft2")])
    assert res.exit_code == 1 and "text features" in res.output and "Traceback" not in res.output
    with pytest.raises(StoreError, match="image backbones"):
        run_finetune(tmp_path / "t.h5", tmp_path / "ft3", FinetuneConfig(**TINY))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_finetune_on_gpu(store, tmp_path):
    res = run_finetune(store, tmp_path / "ft", FinetuneConfig(epochs=2, device="cuda", **TINY))
    assert res["device"].startswith("cuda") and res["peak_gpu_mb"] > 0
    assert load_run(tmp_path / "ft", device="cuda").kind == "finetune"


POSTERS = SHARED / "data" / "movie_posters"


def _real_poster_variants(root, n=18):
    """Real posters as users send them: as collected (182x268 JPEG), upload-size (6x: 1092x1608,
    re-encoded JPEG) and odd sizes (a landscape PNG, a greyscale JPEG of odd width); an id,split CSV."""
    rows = [r for r in csv.DictReader((POSTERS / "labels.csv").open())][:n]
    (root / "img").mkdir(parents=True, exist_ok=True)
    lines, split = ["id,image,genres"], ["id,split"]
    for k, r in enumerate(rows):
        src = POSTERS / r["image"]
        if k % 3 == 0:
            path = src
        else:
            img = Image.open(src).convert("RGB")
            if k % 3 == 1:
                path = root / "img" / f"{k}.jpg"
                img.resize((img.width * 6, img.height * 6), Image.Resampling.BICUBIC).save(path, quality=90)
            elif k % 2:
                path = root / "img" / f"{k}.png"
                img.resize((301, 157), Image.Resampling.BICUBIC).save(path)
            else:
                path = root / "img" / f"{k}.jpg"
                img.convert("L").resize((171, 253)).save(path, quality=85)
        lines.append(f"p{k},{path},{'A' if k % 2 else 'B'}")
        split.append(f"p{k},{'train' if k < 10 else 'val' if k < 14 else 'test'}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    (root / "split.csv").write_text("\n".join(split) + "\n")
    return root / "labels.csv", root / "split.csv"


@pytest.mark.skipif(not (POSTERS / "labels.csv").is_file(), reason="../shared/data/movie_posters is not here")
def test_finetune_trains_on_the_pixels_prediction_feeds_the_network(tmp_path):
    """Fine-tuning decodes its posters through the path every prediction takes: on real posters,
    upload-size and odd-size ones included, the network's training input equals its prediction
    input exactly (it used to differ by up to 33/255 per pixel on upload-size posters)."""
    from genrekit.runs.finetune import prepare_data

    manifest, split = _real_poster_variants(tmp_path)
    store = tmp_path / "s.h5"
    extract(ExtractConfig(backbone="test-tiny-cnn", data=str(manifest), out=str(store), split=str(split)))
    cfg = FinetuneConfig(epochs=1, image_size=224, threads=1, wise_alphas=(0.0, 1.0), augment="none",
                         min_train_positives=1, min_threshold_positives=1)  # fmt: skip
    run_finetune(store, tmp_path / "ft", cfg)
    run = load_run(tmp_path / "ft")
    pre = run.encoder.preprocess
    assert pre.size == 224 and pre.decoder == "torchvision"
    data = prepare_data(FeatureStore(store), tmp_path / "ft", cfg, None, pre)  # what training holds, per part
    paths = dict(row.split(",")[:2] for row in manifest.read_text().splitlines()[1:])
    seen = []
    hook = run.network.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    try:
        for part in ("train", "val", "test"):
            ids = data.ids[part]
            trained = pre.normalise(data.images[part])
            for source in ([paths[i] for i in ids], [open(paths[i], "rb").read() for i in ids]):  # paths, and bytes (uploads)
                seen.clear()
                _, ok, failures = run.predict_proba([Item(i, image=s) for i, s in zip(ids, source)])
                assert not failures and ok == list(range(len(ids)))
                predicted = torch.cat(seen).contiguous()
                assert predicted.shape == trained.shape
                std = torch.tensor(pre.std).view(1, 3, 1, 1)
                diff = ((predicted - trained).abs() * std * 255).amax(dim=(1, 2, 3))  # per poster, in 1/255 steps
                assert torch.equal(predicted, trained), f"{part}: training and prediction pixels differ by up to {diff.tolist()} /255"
    finally:
        hook.remove()


def test_a_finetune_run_saves_per_item_probabilities_and_reports_like_a_heads_run(learnt):
    import re

    from genrekit_cli.apps.report import build_report

    out, res = learnt
    with np.load(out / "predictions.npz") as z:
        assert z["P_test"].shape == z["Y_test"].shape == (res["split"]["counts"]["test"], len(res["genres"]))
        assert len(z["ids_train"]) == len(z["Y_train"]) == res["split"]["counts"]["train"]
    page = build_report(out)
    facts = dict(re.findall(r"<tr><th>([^<]+)</th><td>([^<]*)</td></tr>", page))
    assert facts["encoder"].startswith("test-tiny-cnn") and "fine-tuned" in facts["encoder"]
    assert facts["genres (order used everywhere)"] != "-"
    best = res["best"]
    found = set(re.findall(r'data-figure="([^"]+)"', page))
    assert {f"pr-{best}", f"threshold-genre-{best}", f"confusion-{best}", "counts", "cooccurrence"} <= found, found
    assert "data-gallery=" in page  # the store's posters are on disk: the gallery is there
