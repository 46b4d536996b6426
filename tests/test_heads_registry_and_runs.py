"""A head is one registry entry (save format, trusted types, runner inputs); tampered run directories are one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import make_heads_run
from typer.testing import CliRunner

from genrekit.errors import ConfigError, UnknownNameError
from genrekit.heads import HEADS, HeadSpec
from genrekit.heads.base import MultiLabelHead
from genrekit.heads.saved import load_head
from genrekit.runs.leaderboard import HeadsConfig, run_heads
from genrekit_cli.main import app
from test_heads_runner import fake_text_tower, features, header

runner = CliRunner()


class CentroidHead(MultiLabelHead):
    """A head written for this test only: logistic scores on the direction from negatives to positives,
    starting from the genre prompt embeddings it is handed by the runner."""

    def __init__(self, prompt_embeddings=None, scale: float = 1.0):
        self.prompt_embeddings = prompt_embeddings
        self.scale = scale

    def fit(self, X, Y, X_val=None, Y_val=None):
        X, Y, _, _ = self._fit_inputs(X, Y, X_val, Y_val)
        W = np.stack([X[Y[:, j] == 1].mean(0) - X[Y[:, j] == 0].mean(0) for j in range(Y.shape[1])])
        self.used_prompts_ = self.prompt_embeddings is not None
        self.W_ = W + (0.0 if self.prompt_embeddings is None else 0.01 * np.asarray(self.prompt_embeddings))
        self.b_ = -np.median(X @ self.W_.T, axis=0)
        return self

    def predict_proba(self, X):
        X = self._check_X(X)
        return (1 / (1 + np.exp(-self.scale * (X @ self.W_.T + self.b_)))).astype(np.float32)

    def get_state(self):
        return {"n_features_in_": int(self.n_features_in_), "n_genres_": int(self.n_genres_), "used_prompts_": self.used_prompts_}, {
            "W_": self.W_, "b_": self.b_}  # fmt: skip

    def set_state(self, meta, arrays):
        self.n_features_in_, self.n_genres_, self.used_prompts_ = meta["n_features_in_"], meta["n_genres_"], meta["used_prompts_"]
        self.classes_ = [np.array([0, 1])] * self.n_genres_
        self.W_, self.b_ = arrays["W_"], arrays["b_"]
        return self


def test_a_new_head_is_one_registry_entry_through_run_save_and_load(tmp_path, monkeypatch):
    spec = HeadSpec("centroid", CentroidHead, "difference of class means", inputs={"prompt_embeddings": "prompt_embeddings"},
                    persist="npz", seed_param=None)  # fmt: skip
    monkeypatch.setitem(HEADS, "centroid", spec)
    fs = features()
    res = run_heads(fs, tmp_path / "runs", HeadsConfig(heads=("centroid", "logreg"), jobs=1), header=header(), text_encoder=fake_text_tower)
    assert set(res["heads"]) == {"centroid", "logreg"}
    assert res["heads"]["centroid"]["test"]["tuned"]["map_macro"] > 0.5  # chance: mean prevalence, ~0.28
    saved = load_head(tmp_path / "runs" / "centroid")
    assert saved.head.used_prompts_  # the runner handed it the input its entry asked for
    assert saved.info["standardised"] and (tmp_path / "runs" / "centroid" / "model.npz").is_file()
    P = saved.predict_proba(fs.X[:20])
    assert P.shape == (20, 4) and np.isfinite(P).all()


def test_a_registry_entry_is_checked_when_declared():
    with pytest.raises(UnknownNameError, match="runner input"):
        HeadSpec("x", CentroidHead, "", inputs={"prompt_embeddings": "prompts"})
    with pytest.raises(UnknownNameError, match="save format"):
        HeadSpec("x", CentroidHead, "", persist="pickle")
    with pytest.raises(ConfigError, match="trusted_types"):
        HeadSpec("x", CentroidHead, "")  # skops without the types it may hold


def test_skops_types_are_per_head(tmp_path):
    # A logreg file may not hold a forest's types: each entry trusts only its own.
    assert "sklearn.tree._tree.Tree" in HEADS["rf"].skops_types()
    assert "sklearn.tree._tree.Tree" not in HEADS["logreg"].skops_types()


def test_results_csv_carries_every_metric_of_results_json_and_the_baseline(tmp_path):
    import csv

    res = run_heads(features(), tmp_path / "runs", HeadsConfig(heads=("logreg", "knn"), jobs=1), header=header())
    rows = {r["entry"]: r for r in csv.DictReader((tmp_path / "runs" / "results.csv").open())}
    assert set(rows) == {"logreg", "knn", "baseline"}
    e = res["heads"]["logreg"]
    for k, v in e["test"]["tuned"].items():
        assert float(rows["logreg"][k]) == pytest.approx(v, nan_ok=True)
    for k, v in e["test"]["at_0.5"].items():
        assert float(rows["logreg"][f"{k}_at_0.5"]) == pytest.approx(v, nan_ok=True)
    for k, v in e["val"].items():
        assert float(rows["logreg"][f"val_{k}"]) == pytest.approx(v)
    b = res["baseline"]
    assert float(rows["baseline"]["f1_micro_at_0.5"]) == pytest.approx(b["test"]["at_0.5"]["f1_micro"])
    assert float(rows["baseline"]["val_map_macro"]) == pytest.approx(b["val"]["map_macro"])
    assert rows["baseline"]["f1_micro"] == ""  # no thresholds are tuned for the reference


# -- tampered run directories, through the CLI -----------------------------------------------------
@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    r = make_heads_run(tmp_path_factory.mktemp("tamper"), "test-tiny-cnn", ["logreg", "knn", "mlp"])
    return {**r, "image": r["images"][0]}


def _edit_json(name, fn):
    def edit(d):
        p = d / name
        rec = json.loads(p.read_text())
        fn(rec)
        p.write_text(json.dumps(rec))

    return edit


def _truncate(name):
    def edit(d):
        p = d / name
        p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])

    return edit


def _write(name, text):
    return lambda d: (d / name).write_text(text)


def _nan_array(name, key):
    def edit(d):
        p = d / name
        if name.endswith(".safetensors"):
            from safetensors.numpy import load_file, save_file

            arrays = load_file(str(p))
            arrays[key] = arrays[key].copy()
            arrays[key].flat[0] = np.nan
            save_file(arrays, str(p))
        else:
            with np.load(p) as z:
                arrays = {k: z[k].copy() for k in z.files}
            arrays[key] = arrays[key].astype(np.float32) if arrays[key].dtype.kind != "f" else arrays[key]
            arrays[key].flat[0] = np.inf
            np.savez(p, **arrays)

    return edit


def _nan_skops_coef(d):
    import skops.io as sio

    head = load_head(d).head
    head.model_.estimators_[0].coef_[0, 0] = np.nan
    sio.dump(head, d / "model.skops")


def _del(key):
    return lambda rec: rec.pop(key)


def _set(key, value):
    return lambda rec: rec.__setitem__(key, value)


CASES = [
    # (head dir, edit, words the one line must contain)
    ("logreg", _truncate("run.json"), "not readable JSON"),
    ("logreg", _write("run.json", "[1, 2]"), "JSON list"),
    ("logreg", _edit_json("run.json", _del("genres")), "'genres' is missing"),
    ("logreg", _edit_json("run.json", _set("genres", "Drama")), "'genres' is a str"),
    ("logreg", _edit_json("run.json", _set("head", "lgoreg")), "unknown head 'lgoreg'"),
    ("logreg", _edit_json("run.json", _set("thresholds", {"rule": "per-genre", "values": [float("nan")] * 50})), "values for"),
    ("logreg", _edit_json("run.json", lambda r: r["thresholds"]["values"].__setitem__(0, float("nan"))), "non-finite"),
    ("logreg", _edit_json("run.json", lambda r: r["thresholds"].pop("rule")), "lacks 'rule'"),
    ("logreg", _edit_json("run.json", _set("store_header", {"bogus": 1})), "'store_header'"),
    ("logreg", _truncate("model.skops"), "not a readable skops file"),
    ("logreg", lambda d: (d / "model.skops").unlink(), "model.skops is missing"),
    ("logreg", _nan_skops_coef, "coef_"),
    ("logreg", _truncate("scaler.npz"), "not a readable npz"),
    ("logreg", _nan_array("scaler.npz", "mean"), "'mean' holds non-finite"),
    ("knn", _truncate("model.npz"), "not a readable npz"),
    ("knn", _nan_array("model.npz", "X_"), "'X_' holds non-finite"),
    ("knn", _edit_json("run.json", _del("state")), "'state' is missing"),
    ("mlp", _nan_array("model.safetensors", "0.weight"), "'0.weight' holds non-finite"),
    ("mlp", _truncate("model.safetensors"), "not a readable safetensors"),
    ("mlp", _edit_json("run.json", _set("params", {"hidden": 7, "dropout": 0.5})), "do not fit"),
    ("mlp", _edit_json("run.json", _set("params", {"bogus": 1})), "'params' does not fit"),
    ("", _truncate("results.json"), "not readable JSON"),
    ("", _edit_json("results.json", _set("best", "../../etc")), "'best'"),
]


@pytest.mark.parametrize("command", ["predict", "evaluate"])
@pytest.mark.parametrize("head, edit, words", CASES, ids=[f"{h or 'RUNS'}-{w}" for h, _, w in CASES])
def test_a_tampered_run_directory_is_one_line(tiny_runs, tmp_path, head, edit, words, command):
    runs = tmp_path / "runs"
    shutil.copytree(tiny_runs["runs"], runs)
    target = runs / head if head else runs
    edit(target)
    args = ["predict", "--run", str(target), str(tiny_runs["image"])] if command == "predict" else [
        "evaluate", "--run", str(target), "--store", str(tiny_runs["store"])]  # fmt: skip
    res = runner.invoke(app, args)
    out = res.output.strip()
    assert res.exit_code == 1, out
    assert "Traceback" not in out and len(out.splitlines()) == 1, out
    assert words in out, out
