"""Titles as a text field, fused runs used through load_run (predict / evaluate --store / --data), the ensemble head."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synthetic import synthetic_features
from typer.testing import CliRunner

from conftest import write_manifest

from genrekit.data.manifest import Sample, sample_text
from genrekit.errors import StoreMismatchError
from genrekit.extraction import ExtractConfig, embed_texts, encoder_from_header, extract
from genrekit.heads.ensemble import greedy_selection
from genrekit.heads.saved import load_head
from genrekit.inference import Item, evaluate_manifest, evaluate_stores, load_run, predict_items
from genrekit.runs.leaderboard import HeadsConfig, run_heads
from genrekit.store import FeatureStore
from genrekit_cli.main import app

runner = CliRunner()
GENRES = ["Comedy", "Horror", "Action"]
FAST = {"logreg": {"Cs": (0.1,)}}


def collection(root: Path, n: int, seed: int = 0, plots: bool = True) -> Path:
    """Posters coloured by genre, titles naming a genre word and carrying Kaggle's "(Year)" suffix."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    words = {"Comedy": "Laughs", "Horror": "Blood", "Action": "Fury"}
    rows = []
    for i in range(n):
        labels = [g for g in GENRES if rng.random() < 0.4] or [GENRES[i % 3]]
        colour = np.array([60 + 150 * ("Comedy" in labels), 40 + 120 * ("Action" in labels), 200 - 150 * ("Horror" in labels)])
        Image.fromarray(np.clip(colour + rng.normal(0, 40, (48, 32, 3)), 0, 255).astype(np.uint8)).save(root / "img" / f"{i:03d}.jpg")
        title = f"{' '.join(words[g] for g in labels)} {i} ({1950 + i % 60})"
        rows.append({"id": f"s{i:03d}", "title": title, "year": 1950 + i % 60, "genres": "|".join(labels),
                     "plot": f"A {' and '.join(labels).lower()} story." if plots and i % 2 else "", "image": f"img/{i:03d}.jpg"})  # fmt: skip
    return write_manifest(root / "labels.csv", rows)


def poster_and_title_stores(root: Path, n: int) -> tuple[Path, Path, Path]:
    """A collection of ``n`` items and its tiny poster and title stores: (manifest, posters, titles)."""
    manifest = collection(root / "a", n)
    posters, titles = root / "posters.h5", root / "titles.h5"
    extract(ExtractConfig(backbone="test-tiny-cnn", weights="none", data=str(manifest), out=str(posters), device="cpu"))
    extract(ExtractConfig(backbone="test-tiny-text", weights="none", data=str(manifest), out=str(titles), device="cpu",
                          modality="text", text_field="title"))  # fmt: skip
    return manifest, posters, titles


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    root = tmp_path_factory.mktemp("fused")
    manifest, posters, titles = poster_and_title_stores(root, 180)
    runs = root / "runs"
    res = runner.invoke(app, ["heads", "--store", str(posters), "--store", str(titles), "--head", "logreg", "--head", "knn",
                              "--head", "ensemble", "--out", str(runs), "--min-positives", "5", "--jobs", "1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    other = collection(root / "b", 40, seed=1)
    p2, t2 = root / "p2.h5", root / "t2.h5"
    extract(ExtractConfig(backbone="test-tiny-cnn", weights="none", data=str(other), out=str(p2), device="cpu"))
    extract(ExtractConfig(backbone="test-tiny-text", weights="none", data=str(other), out=str(t2), device="cpu",
                          modality="text", text_field="title"))  # fmt: skip
    return {"root": root, "manifest": manifest, "posters": posters, "titles": titles, "runs": runs, "other": other, "p2": p2, "t2": t2}


# -- titles ---------------------------------------------------------------------------------------
def test_title_text_drops_the_year_suffix_and_other_columns_are_fields():
    s = Sample("1", ("Drama",), title="Toy Story (1995)", plot=" ", extra={"tagline": "To infinity"})
    assert sample_text(s, "title") == "Toy Story" and sample_text(s, "plot") is None
    assert sample_text(s, "tagline") == "To infinity" and sample_text(s, "nope") is None
    assert sample_text(Sample("2", (), title="Sherlock (2010-2017)"), "title") == "Sherlock"


def test_title_store_records_its_field_and_embeds_titles_without_the_year(fused):
    store = FeatureStore(fused["titles"])
    assert store.header.preprocessing["field"] == "title" and len(store) == 180  # every row has a title
    res = runner.invoke(app, ["store", "info", str(fused["titles"])])
    assert res.exit_code == 0 and "field: title" in res.output
    fs = store.load()
    enc = encoder_from_header(store.header)
    np.testing.assert_allclose(fs.X[:2], embed_texts(enc, store.header, _titles(fused, fs.ids[:2])), atol=1e-5)


def _titles(fused, ids):
    rows = {r["id"]: r for r in csv.DictReader(open(fused["manifest"], encoding="utf-8"))}
    return [rows[i]["title"].rsplit(" (", 1)[0] for i in ids]


def test_title_store_never_extends_a_plot_store(fused, tmp_path):
    plots = tmp_path / "plots.h5"
    base = dict(backbone="test-tiny-text", weights="none", data=str(fused["manifest"]), out=str(plots), device="cpu", modality="text")
    extract(ExtractConfig(**base, limit=20))
    assert FeatureStore(plots).header.preprocessing["field"] == "plot"
    with pytest.raises(StoreMismatchError, match="preprocessing.field"):
        extract(ExtractConfig(**base, text_field="title"))


# -- fused runs ----------------------------------------------------------------------------------
def test_fused_run_loads_its_best_fused_head_and_reads_both_modalities(fused):
    run = load_run(fused["runs"])
    res = json.loads((fused["runs"] / "results.json").read_text())
    assert run.kind == "fused" and run.name == f"{res['best']['part']}/{res['best']['entry']}"
    assert run.inputs == ("image", "title")
    ident = run.identity()
    assert {s["input"] for s in ident["stores"].values()} == {"image", "title"}
    assert "ensemble" in res["single"]["image-test-tiny-cnn"]["heads"] and "ensemble" in res["early"]["heads"]
    assert load_run(fused["runs"] / "late" / "logreg").name == "late/logreg"
    assert load_run(fused["runs"] / "early" / "knn").name == "early/knn"


@pytest.mark.parametrize("which", ["early/logreg", "late/logreg", "best"])
def test_predict_evaluate_store_and_evaluate_data_give_the_same_probabilities(fused, tmp_path, which):
    path = fused["runs"] if which == "best" else fused["runs"] / which
    rows = list(csv.DictReader(open(fused["other"], encoding="utf-8")))[:6]
    root = Path(fused["other"]).parent
    args = ["predict", "--run", str(path), "--json", *(str(root / r["image"]) for r in rows)]
    for r in rows:
        args += ["--title", r["title"].rsplit(" (", 1)[0]]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    predicted = {Path(p["item"]).stem: p["probabilities"] for p in json.loads(res.output)["predictions"]}
    a, b = tmp_path / "store.csv", tmp_path / "data.csv"
    res = runner.invoke(app, ["evaluate", "--run", str(path), "--store", str(fused["t2"]), "--store", str(fused["p2"]), "--predictions", str(a)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["evaluate", "--run", str(path), "--data", str(fused["other"]), "--predictions", str(b), "--json", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    by_store = {r["id"]: r for r in csv.DictReader(a.open())}
    by_data = {r["id"]: r for r in csv.DictReader(b.open())}
    assert set(by_store) == set(by_data) and len(by_store) == 40
    for r in rows:
        stem = Path(r["image"]).stem
        for g, p in predicted[stem].items():
            assert float(by_store[r["id"]][g]) == pytest.approx(p, abs=2e-5)
            assert float(by_data[r["id"]][g]) == pytest.approx(p, abs=2e-5)
    scores = json.loads((tmp_path / "s.json").read_text())
    assert scores["items"] == 40 and scores["run"]["kind"] == "fused"


def test_missing_modality_falls_back_as_in_training_and_says_so(fused):
    for part in ("early/logreg", "late/logreg"):
        run = load_run(fused["runs"] / part)
        items = [Item("t", texts={"title": "Blood 3"}), Item("nothing")]
        preds, failures = predict_items(run, items)
        assert [p.item for p in preds] == ["t"] and failures[0][0] == "nothing"
        assert "no image given" in run.fallbacks(items[:1])[0][1]
        if part.startswith("late"):
            # Late fusion without a poster is the title store's own head.
            title_head = load_head(fused["runs"] / "text-test-tiny-text" / "logreg")
            enc = encoder_from_header(title_head.header)
            P = title_head.predict_proba(embed_texts(enc, title_head.header, ["Blood 3"]))
            mine, theirs = title_head.align(run.genres)
            assert dict(preds[0].ranked)[run.genres[theirs[0]]] == pytest.approx(float(P[0, mine[0]]), abs=1e-5)
    res = runner.invoke(app, ["predict", "--run", str(fused["runs"]), "--title", "Fury 9"])
    assert res.exit_code == 0 and "fallback" in res.output


def test_an_unreadable_poster_is_one_failure_keyed_by_its_item(fused, tmp_path):
    """Every run kind names a failure by its item: a fused run used to report an unreadable poster
    twice, once under its path and once under the item's name with a false reason."""
    broken = tmp_path / "0.jpg"  # as serve stores an upload: a temporary name, not the item's
    broken.write_bytes(b"not a jpeg")
    reason = "not an image (unrecognised format)"
    for part in ("", "early/logreg", "late/logreg"):
        run = load_run(fused["runs"] / part)
        items = [Item("broken.jpg", image=str(broken)), Item("bytes.jpg", image=b"not a jpeg"),
                 Item("with a title", image=str(broken), texts={"title": "Blood 3"})]  # fmt: skip
        preds, failures = predict_items(run, items)
        assert [p.item for p in preds] == ["with a title"]
        assert failures == [("broken.jpg", reason), ("bytes.jpg", reason), ("with a title", f"{reason} (predicted from its other inputs)")]
    pytest.importorskip("fastapi")
    pytest.importorskip("multipart")
    from fastapi.testclient import TestClient

    from genrekit_cli.apps.serve import ServeConfig, create_app

    cfg = ServeConfig(run=str(fused["runs"]))
    poster = fused["manifest"].parent / "img" / "000.jpg"
    with TestClient(create_app(load_run(cfg.run), cfg)) as c:
        files = [("image", ("broken.jpg", b"not a jpeg", "image/jpeg")), ("image", ("good.jpg", poster.read_bytes(), "image/jpeg"))]
        r = c.post("/api/predict/batch", files=files, data={"title": ["", "Fury 9"]})
        assert r.status_code == 200, r.text
        assert [p["item"] for p in r.json()["predictions"]] == ["good.jpg"]
        assert r.json()["failures"] == [{"item": "broken.jpg", "reason": reason}]


def test_a_plot_store_in_place_of_the_title_store_is_refused_naming_the_field(fused, tmp_path):
    plots = tmp_path / "plots2.h5"
    extract(ExtractConfig(backbone="test-tiny-text", weights="none", data=str(fused["other"]), out=str(plots), device="cpu", modality="text"))
    run = load_run(fused["runs"] / "late" / "logreg")
    with pytest.raises(StoreMismatchError, match="preprocessing.field='title'.*'plot'"):
        evaluate_stores(run, [fused["p2"], plots])


def test_evaluate_data_works_for_a_single_head_too(fused):
    run = load_run(fused["runs"] / "image-test-tiny-cnn" / "logreg")
    ev = evaluate_manifest(run, fused["other"])
    assert ev.results["items"] == 40 and ev.P.shape == (40, len(run.genres))


# -- the ensemble head ---------------------------------------------------------------------------
def test_greedy_selection_is_deterministic_and_never_below_its_best_member():
    from genrekit.evaluation.metrics import macro_average_precision

    rng = np.random.default_rng(0)
    Y = (rng.random((200, 4)) < 0.3).astype(np.uint8)
    probas = {f"m{k}": np.clip(Y * rng.uniform(0.0, 0.5) + rng.random((200, 4)) * 0.8, 0, 1) for k in range(5)}
    w1, s1, curve = greedy_selection(Y, probas)
    w2, s2, _ = greedy_selection(Y, probas)
    assert w1 == w2 and s1 == s2
    assert s1 >= max(macro_average_precision(Y, p) for p in probas.values()) - 1e-12
    assert s1 == max(curve) and set(w1) <= set(probas)
    # Two identical members: ties go to the first.
    w, _, _ = greedy_selection(Y, {"a": probas["m0"], "b": probas["m0"]}, rounds=1)
    assert w == {"a": 1}


def test_ensemble_is_a_leaderboard_entry_saved_without_pickle(tmp_path):
    fs = synthetic_features(400, 16, prevalence=[0.4, 0.3, 0.2, 0.15], signal=1.5, noise=1.0, seed=3)
    res = run_heads(fs, tmp_path, HeadsConfig(heads=("logreg", "knn", "ensemble"), head_params=FAST, jobs=1), text_encoder=None)
    e = res["heads"]["ensemble"]
    assert list(res["heads"])[-1] == "ensemble" and e["head"] == "ensemble"
    assert e["val"]["map_macro"] >= max(res["heads"][h]["val"]["map_macro"] for h in ("logreg", "knn")) - 1e-12
    rec = json.loads((tmp_path / "ensemble" / "ensemble.json").read_text())
    assert set(rec["members"]) <= {"logreg", "knn"} and sorted(p.name for p in (tmp_path / "ensemble").iterdir()) == ["ensemble.json", "predictions.npz"]
    saved = load_head(tmp_path / "ensemble")
    split = np.array([r["split"] for r in csv.DictReader((tmp_path / "split.csv").open())])
    P = saved.predict_proba(fs.X[split == "test"])
    members = {n: load_head(tmp_path / n).predict_proba(fs.X[split == "test"]) for n in rec["members"]}
    total = sum(m["weight"] for m in rec["members"].values())
    np.testing.assert_allclose(P, sum(rec["members"][n]["weight"] * members[n] for n in members) / total, atol=1e-6)
    if res["best"] == "ensemble":
        assert load_head(tmp_path).name == "ensemble"
    none = run_heads(fs, tmp_path / "b", HeadsConfig(heads=("logreg", "knn"), head_params=FAST, jobs=1))
    assert "ensemble" not in none["heads"]
