"""Text encoders in the heads: zero-shot on plots (genre descriptions), chain order from a text tower, a text store end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SHARED, make_collection
from typer.testing import CliRunner

from genrekit.errors import ConfigError, UnknownNameError
from genrekit.runs.leaderboard import HeadsConfig, run_heads
from synthetic import synthetic_features
from genrekit.heads.zeroshot import GENRE_DESCRIPTIONS, TEXT_TEMPLATES, build_prompt_embeddings, genre_prompt_embeddings
from genrekit_cli.main import app

runner = CliRunner()


def recording_encoder(seen: list[str]):
    def encode(texts):
        seen.extend(texts)
        return np.stack([np.random.default_rng(sum(map(ord, t))).standard_normal(8) for t in texts]).astype(np.float32)

    return encode


def test_plots_are_compared_with_genre_descriptions_and_other_genres_with_templates():
    seen: list[str] = []
    E = genre_prompt_embeddings(recording_encoder(seen), ["Western", "Mecha"], "text")
    assert E.shape == (2, 8)
    np.testing.assert_allclose(np.linalg.norm(E, axis=1), 1.0, rtol=1e-5)
    assert seen[0] == GENRE_DESCRIPTIONS["Western"]
    assert seen[1:] == [t.format("mecha") for t in TEXT_TEMPLATES]
    # The description alone makes the Western embedding; posters keep their templates.
    alone = build_prompt_embeddings(recording_encoder([]), ["Western"], ("{}",), {"Western": GENRE_DESCRIPTIONS["Western"]})
    np.testing.assert_allclose(E[0], alone[0], rtol=1e-5)
    seen.clear()
    genre_prompt_embeddings(recording_encoder(seen), ["Western"], "image")
    assert GENRE_DESCRIPTIONS["Western"] not in seen and "a poster of a western movie." in seen


def test_zeroshot_cli_classifies_plots_with_a_text_encoder():
    plots = ["A sheriff hunts an outlaw across the desert.", "Two teenagers fall in love in Paris. " * 40]
    res = runner.invoke(app, ["zeroshot", "--plot", plots[0], "--plot", plots[1], "--backbone", "test-tiny-text",
                              "--weights", "none", "--genres", "Western,Romance,Horror", "--pick", "1", "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    preds = json.loads(res.stdout)["predictions"]
    # The long plot is windowed, not truncated or dropped; each item is named by its first words, never echoed whole.
    from genrekit.inference.predict import text_name

    assert [p["item"] for p in preds] == [text_name(t) for t in plots] == [plots[0], text_name(plots[1])]
    assert preds[1]["item"].endswith(f"({len(plots[1]):,} characters)")
    for p in preds:
        assert set(p["probabilities"]) == {"Western", "Romance", "Horror"} and len(p["predicted"]) == 1
    assert "random weights" in res.stderr  # test-tiny-text --weights none: noise, and it says so


def test_zeroshot_plot_scores_are_calibrated_multilabel_probabilities_not_a_softmax():
    from genrekit.heads.zeroshot import TEXT_THRESHOLD

    plots = ["A sheriff hunts an outlaw across the desert.", "Two teenagers fall in love in Paris."]
    res = runner.invoke(app, ["zeroshot", "--plot", plots[0], "--plot", plots[1], "--backbone", "test-tiny-text", "--weights", "none", "--json"])
    assert res.exit_code == 0, res.output
    for p in json.loads(res.stdout)["predictions"]:
        probs = np.array(list(p["probabilities"].values()))
        assert ((probs > 0.001) & (probs < 0.999)).all()  # no 1.00 / 0.00 split of one unit between genres
        assert abs(probs.sum() - 1.0) > 0.05  # each genre on its own: they need not sum to one
        rows = p["genres"]
        assert p["predicted"][0] == rows[0]["genre"]  # every plot keeps its most probable genre
        assert [r["genre"] for r in rows[1:] if r["predicted"]] == [r["genre"] for r in rows[1:] if r["probability"] >= TEXT_THRESHOLD]
        assert {r["threshold"] for r in rows} == {TEXT_THRESHOLD}


@pytest.mark.parametrize(
    "args,message",
    [
        (["poster.jpg", "--plot", "A plot."], "one of them"),
        ([], "one of them"),
        (["--plot", "A plot.", "--backbone", "test-tiny-cnn"], "no text tower"),
        (["--plot", "  "], "non-empty"),
    ],
)
def test_zeroshot_cli_errors_are_one_line(args, message):
    res = runner.invoke(app, ["zeroshot", *args])
    assert res.exit_code == 1 and message in res.output and "Traceback" not in res.output


def test_chain_order_from_another_encoders_text_tower(tmp_path):
    fs = synthetic_features(300, 16, prevalence={"Drama": 0.5, "Comedy": 0.3, "Horror": 0.2, "Western": 0.15}, seed=1)
    cfg = HeadsConfig(heads=("chain",), jobs=1, baseline=False, chain_encoder="test-tiny-text", head_params={"chain": {"Cs": (0.1,)}})
    res = run_heads(fs, tmp_path / "r", cfg, header=None)
    assert res["chain_order"]["source"] == "text similarity (test-tiny-text)"
    assert sorted(res["chain_order"]["genres"]) == sorted(res["genres"]) and res["chain_order"]["genres"][0] == "Drama"
    with pytest.raises(UnknownNameError, match="did you mean: minilm"):
        HeadsConfig(chain_encoder="minilmm").validate()
    with pytest.raises(ConfigError, match="no text tower"):
        run_heads(fs, tmp_path / "r2", HeadsConfig(heads=("chain",), jobs=1, chain_encoder="test-tiny-cnn"), header=None)


def test_a_text_store_trains_zeroshot_and_chain_from_its_own_text_tower(tmp_path):
    manifest = make_collection(tmp_path / "col", n=120)
    lines = manifest.read_text().splitlines()
    # Empty plots are listed as failures, never embedded as empty strings.
    lines[1] = ",".join(c if k != 4 else "" for k, c in enumerate(lines[1].split(",")))
    manifest.write_text("\n".join(lines) + "\n")
    store = tmp_path / "plots.h5"
    res = runner.invoke(app, ["extract", "--modality", "text", "--backbone", "test-tiny-text", "--weights", "none",
                              "--data", str(manifest), "--out", str(store)])  # fmt: skip
    assert res.exit_code == 0, res.output
    out = tmp_path / "runs"
    res = runner.invoke(app, ["heads", "--store", str(store), "--head", "zeroshot", "--head", "chain", "--jobs", "1",
                              "--min-positives", "5", "--out", str(out), "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert set(results["heads"]) == {"zeroshot", "chain"} and results["features"]["n_items"] == 119
    assert results["chain_order"]["source"] == "text similarity"
    assert results["features"]["store_header"]["modality"] == "text"


@pytest.mark.slow
def test_minilm_zero_shot_beats_chance_on_the_shared_plots():
    from sklearn.metrics import roc_auc_score

    from genrekit.backbones import create_encoder
    from genrekit.data.manifest import read_manifest
    from genrekit.heads.zeroshot import cosine_scores

    path = SHARED / "data" / "imdb_plots" / "plots.csv"
    if not path.is_file():
        pytest.skip("../shared/data/imdb_plots is not here")
    samples = read_manifest(path).samples[:400]
    genres = [g for g in GENRE_DESCRIPTIONS if sum(g in s.genres for s in samples) >= 10]
    enc = create_encoder("minilm")
    S = cosine_scores(enc.encode_texts([s.plot for s in samples]), genre_prompt_embeddings(enc.encode_texts, genres, "text"))
    Y = np.array([[g in s.genres for g in genres] for s in samples])
    assert roc_auc_score(Y, S, average="macro") > 0.7
