"""Hostile input, tried as an attacker would: every case ends in a clear one-line refusal or a right
answer, never a crash, a silently wrong output, a lost file or unbounded memory.

Cases are grouped by the class of defect they guard against (crash, resources, silently wrong, data
loss, unclear message, relative paths); the README's reliability section counts them.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from genrekit_cli.main import app

runner = CliRunner()

# Genres and file names a person may type: rich markup and matplotlib mathtext among them.
ODD_GENRES = ["Drama[/i]", "$\\foo$", "Horror", "[bold]Action"]


def cli(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(res, *needles: str, code: int = 1) -> None:
    """A refusal: the exit code, no traceback, and the message names what it should."""
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    for n in needles:
        assert n in res.output, (n, res.output)


def make_odd_collection(root: Path, n: int = 60, seed: int = 0) -> Path:
    """``n`` small images whose genres and some file names are markup and mathtext."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        labels = [g for g in ODD_GENRES if rng.random() < 0.4] or [ODD_GENRES[i % len(ODD_GENRES)]]
        name = f"$\\x{i}$[b].png" if i % 5 == 0 else f"{i:03d}.png"
        colour = np.array([60 + 150 * ("Horror" in labels), 40 + 120 * ("Drama[/i]" in labels), 200 - 150 * ("$\\foo$" in labels)])
        Image.fromarray(np.clip(colour + rng.normal(0, 25, (48, 32, 3)), 0, 255).astype(np.uint8)).save(root / "img" / name)
        rows.append({"id": f"s{i:03d}", "title": f"Film [/i]{i}", "year": 1990 + i, "genres": "|".join(labels), "plot": "x", "image": f"img/{name}"})
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root / "labels.csv"


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    """A collection with odd genres and file names, its tiny store, and a logreg run on it."""
    root = tmp_path_factory.mktemp("odd")
    manifest = make_odd_collection(root / "col")
    store, runs = root / "tiny.h5", root / "runs"
    res = cli("extract", "--data", manifest, "--backbone", "test-tiny-cnn", "--weights", "none", "--out", store, "--device", "cpu")
    assert res.exit_code == 0, res.output
    res = cli("heads", "--store", store, "--head", "logreg", "--head", "mlp", "--head", "ensemble", "--out", runs, "--min-positives", "3", "--jobs", "1")
    assert res.exit_code == 0, res.output
    assert "Drama[/i]" in res.output and "[bold]Action" in res.output
    return {"root": root, "manifest": manifest, "store": store, "runs": runs, "out": res.output,
            "odd_image": root / "col" / "img" / "$\\x0$[b].png"}  # fmt: skip


# -- crash: user text reaching rich or matplotlib --------------------------------------------------
def test_crash_markup_genres_are_printed_literally_by_data_inspect_and_clean(odd, tmp_path):
    res = cli("data", "inspect", odd["manifest"])
    assert res.exit_code == 0, res.output
    assert "Drama[/i]" in res.output and "[bold]Action" in res.output
    res = cli("data", "clean", odd["manifest"], "--out", tmp_path / "clean.csv")
    assert res.exit_code == 0, res.output
    assert "[bold]Action, Drama[/i]" in res.output


def test_crash_markup_and_mathtext_in_predict_explain_and_report(odd, tmp_path):
    res = cli("predict", "--run", odd["runs"] / "logreg", odd["odd_image"])
    assert res.exit_code == 0, res.output
    assert "[bold]Action" in res.output and "$\\foo$" in res.output
    res = cli("explain", "--run", odd["runs"] / "logreg", odd["odd_image"], "--genres", "$\\foo$,Drama[/i]", "--out", tmp_path / "x")
    assert res.exit_code == 0, res.output
    assert "$\\x0$[b].png" in res.output and "Drama[/i]" in res.output
    res = cli("report", odd["runs"], "--out", tmp_path / "r.html")
    assert res.exit_code == 0, res.output


# -- resources: figures bounded in pixels whatever the input's shape ----------------------------------
@pytest.mark.parametrize("size", [(1, 5000), (5000, 1), (1, 1), (20000, 30000)])
@pytest.mark.parametrize("panels", [1, 3, 40])
def test_resources_overlay_layout_is_bounded_for_any_shape(size, panels):
    from genrekit.inference.explain import OVERLAY_DPI, OVERLAY_MAX_FIG_PX, overlay_layout

    w, h, cols, rows, _ = overlay_layout(size, panels)
    assert 0 < w * OVERLAY_DPI <= OVERLAY_MAX_FIG_PX and 0 < h * OVERLAY_DPI <= OVERLAY_MAX_FIG_PX
    assert cols * rows >= panels


def test_resources_explain_of_a_one_pixel_wide_strip_draws_a_bounded_figure(odd, tmp_path):
    strip = tmp_path / "strip.png"
    Image.new("RGB", (1, 5000), (200, 10, 10)).save(strip)  # ~100 bytes; its overlay was once 23 GB
    res = cli("explain", "--run", odd["runs"] / "logreg", strip, "--top-k", "2", "--out", tmp_path / "x")
    assert res.exit_code == 0, res.output
    w, h = Image.open(tmp_path / "x" / "strip.png").size
    assert w <= 4000 and h <= 4000, (w, h)
    with np.load(tmp_path / "x" / "maps.npz") as z:
        assert all(z[k].shape == (5000, 1) for k in z.files)  # the maps keep the poster's own pixel grid


def test_resources_report_grids_are_bounded_for_a_run_with_hundreds_of_genres():
    import base64
    import io

    from genrekit_cli.apps import report

    rng = np.random.default_rng(0)
    n = 300
    Y, P = (rng.random((40, n)) < 0.3).astype(int), rng.random((40, n))
    genres = [f"g{j}" for j in range(n)]
    for png in (report.fig_curves(Y, P, genres, "pr", "h"), report.fig_confusion(Y, P > 0.5, genres, "h"),
                report.fig_threshold_per_genre(Y, P, Y, P, genres, [0.5] * n, "h")):  # fmt: skip
        w, h = Image.open(io.BytesIO(base64.b64decode(png))).size
        assert w <= 1200 and h <= 2500, (w, h)


# -- silently wrong: NaN or inf out of a run ------------------------------------------------------
def test_silently_wrong_a_run_whose_weights_give_nan_is_refused_naming_the_file(odd, tmp_path):
    import shutil

    from safetensors.numpy import load_file, save_file

    run = tmp_path / "runs"
    shutil.copytree(odd["runs"], run)
    weights = run / "mlp" / "model.safetensors"
    arrays = load_file(str(weights))
    w = arrays["0.weight"]  # finite, but +3e38 and -3e38 side by side: inf - inf = NaN in the first layer
    arrays["0.weight"] = np.where(np.indices(w.shape).sum(0) % 2 == 0, 3e38, -3e38).astype(w.dtype)
    save_file(arrays, str(weights))
    image = sorted((odd["root"] / "col" / "img").glob("0*.png"))[0]
    for args in (["predict", "--run", run / "mlp", image], ["predict", "--run", run / "mlp", image, "--json"],
                 ["evaluate", "--run", run / "mlp", "--store", odd["store"]],
                 ["explain", "--run", run / "mlp", image, "--out", tmp_path / "x"]):  # fmt: skip
        res = cli(*args)
        one_line_error(res, "model.safetensors", "non-finite")
        assert "nan" not in res.output.replace("non-finite", "").lower().replace("(nan or inf)", ""), res.output
    assert not (tmp_path / "x").exists()
    # The library refuses too (serve answers through predict_items, never with null probabilities).
    from genrekit.errors import StoreError
    from genrekit.inference import Item, load_run, predict_items

    with pytest.raises(StoreError, match="non-finite"):
        predict_items(load_run(run / "mlp"), [Item(str(image), image=str(image))])


def test_silently_wrong_merge_refuses_different_genre_lists_unless_told_to_intersect(collection, tmp_path):
    from test_store_merge import _half, _store

    from genrekit.store import FeatureStore

    a = _store(_half(collection, range(12), "a.csv"), tmp_path / "a.h5", genres="Drama,Comedy,Horror")
    b = _store(_half(collection, range(12, 24), "b.csv"), tmp_path / "b.h5", genres="Horror,Action,Drama,Comedy")
    res = cli("store", "merge", a, b, "--out", tmp_path / "m.h5")
    one_line_error(res, "different genres", "Action", "--genres intersect")
    assert not (tmp_path / "m.h5").exists()
    res = cli("store", "merge", a, b, "--out", tmp_path / "m.h5", "--genres", "intersect")
    assert res.exit_code == 0, res.output
    m, full = FeatureStore(tmp_path / "m.h5").load(), FeatureStore(_store(collection, tmp_path / "full.h5", genres="Drama,Comedy,Horror,Action")).load()
    assert sorted(m.genres) == ["Comedy", "Drama", "Horror"]  # Action is unknown for a's items: dropped, not negative
    row = {i: k for k, i in enumerate(full.ids)}
    g3 = ("Drama", "Comedy", "Horror")
    np.testing.assert_array_equal(m.Y[:, [m.genres.index(g) for g in g3]],
                                  full.Y[[row[i] for i in m.ids]][:, [full.genres.index(g) for g in g3]])
    res = cli("store", "merge", a, b, "--out", tmp_path / "n.h5", "--genres", "union")
    assert res.exit_code == 2  # a usage error: union would need an "unknown" label the store cannot hold


def test_silently_wrong_merge_refuses_an_input_that_lists_one_id_twice(collection, tmp_path):
    import h5py
    from test_store_merge import _half, _store

    a = _store(_half(collection, range(12), "a.csv"), tmp_path / "a.h5", genres="Drama,Comedy,Horror,Action")
    b = _store(_half(collection, range(12, 24), "b.csv"), tmp_path / "b.h5", genres="Drama,Comedy,Horror,Action")
    with h5py.File(b, "r+") as f:
        f["ids"][1] = f["ids"][0]
    res = cli("store", "merge", a, b, "--out", tmp_path / "m.h5")
    one_line_error(res, "b.h5", "more than once", "s012")
    assert not (tmp_path / "m.h5").exists()
    one_line_error(cli("store", "merge", a, tmp_path / "." / "a.h5", "--out", tmp_path / "m.h5"), "given twice")


# -- data loss: outputs never replace a file genrekit did not write for that purpose ------------------
def test_data_loss_evaluate_outputs_never_replace_a_run_file_or_a_users_file(odd, tmp_path):
    run = odd["runs"] / "logreg"
    npz = run / "predictions.npz"
    before = npz.read_bytes()
    for extra in ([], ["--force"]):  # a run's own file: refused even with --force
        res = cli("evaluate", "--run", run, "--store", odd["store"], "--json", npz, *extra)
        one_line_error(res, "--json", "would overwrite the run")
    assert npz.read_bytes() == before
    other = odd["runs"] / "mlp" / "predictions.npz"  # another run's file: not an evaluate JSON
    res = cli("evaluate", "--run", run, "--store", odd["store"], "--json", other)
    one_line_error(res, "--json", "--force")
    readme = tmp_path / "README.md"
    readme.write_text("# my notes\n")
    for flag in ("--json", "--predictions"):
        res = cli("evaluate", "--run", run, "--store", odd["store"], flag, readme)
        one_line_error(res, flag, "--force")
        assert readme.read_text() == "# my notes\n"
    # genrekit's own outputs are replaced on a re-run; --force replaces anything else.
    for _ in range(2):
        res = cli("evaluate", "--run", run, "--store", odd["store"], "--json", tmp_path / "ev.json", "--predictions", tmp_path / "p.csv")
        assert res.exit_code == 0, res.output
    res = cli("evaluate", "--run", run, "--store", odd["store"], "--json", readme, "--force")
    assert res.exit_code == 0 and '"per_genre"' in readme.read_text()


@pytest.mark.parametrize("command", ["report", "split", "clean", "clean-removed"])
def test_data_loss_file_outputs_refuse_a_users_file_without_force(odd, tmp_path, command):
    readme = tmp_path / "README.md"
    readme.write_text("# my notes\n")
    args = {"report": ["report", odd["runs"], "--out", readme],
            "split": ["data", "split", odd["manifest"], "--out", readme],
            "clean": ["data", "clean", odd["manifest"], "--out", readme],
            "clean-removed": ["data", "clean", odd["manifest"], "--out", tmp_path / "c.csv", "--removed", readme]}[command]  # fmt: skip
    one_line_error(cli(*args), "README.md", "--force")
    assert readme.read_text() == "# my notes\n"
    if command != "report":  # its own earlier output is replaced
        first = tmp_path / "own.csv"
        args = [a if a != readme else first for a in args]
        assert cli(*args).exit_code == 0 and cli(*args).exit_code == 0


def test_data_loss_folder_outputs_refuse_a_users_folder_and_never_write_over_a_poster(odd, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("# my notes\n")
    poster = mine / "p.png"
    Image.new("RGB", (32, 48), (10, 200, 10)).save(poster)
    before = poster.read_bytes()
    one_line_error(cli("explain", "--run", odd["runs"] / "logreg", poster, "--out", mine), "--out", "--force")
    one_line_error(cli("heads", "--store", odd["store"], "--head", "logreg", "--out", mine), "--out", "--force")
    one_line_error(cli("data", "demo", "--out", mine, "--n", "4"), "--out", "--force")
    res = cli("explain", "--run", odd["runs"] / "logreg", poster, "--out", mine, "--force")
    assert res.exit_code == 0, res.output
    assert poster.read_bytes() == before and (mine / "p-2.png").is_file()  # the overlay beside the poster, not over it
    assert (mine / "README.md").read_text() == "# my notes\n"
    res = cli("explain", "--run", odd["runs"] / "logreg", poster, "--out", mine)  # now explain's folder: no --force needed
    assert res.exit_code == 0, res.output


# -- unclear: every file a run reads is checked like run.json (one line naming the file and field) ----
def _edited_copy(odd, tmp_path, rel: str, text: str | bytes) -> Path:
    import shutil

    run = tmp_path / "runs"
    shutil.copytree(odd["runs"], run)
    target = run / rel
    target.write_bytes(text.encode() if isinstance(text, str) else text)
    return run


ENSEMBLE_EDITS = [
    ("{}", "'genres' is missing"),
    ('{"genres": ["Horror"], "thresholds": {"rule": "global", "values": [0.5]}, "members": 5}', "'members' is a int"),
    ('{"genres": ["Horror"], "thresholds": {"rule": "global", "values": [0.5]}, "members": {"logreg": {}}}', "'dir' is missing"),
    ('{"genres": ["Horror"], "thresholds": {"rule": "global", "values": [0.5]}, "members": {"logreg": {"dir": "../logreg", "weight": NaN}}}',
     "members.logreg.weight"),
    ("[" * 100000, "not readable JSON"),
]


@pytest.mark.parametrize("text, message", ENSEMBLE_EDITS)
def test_unclear_an_edited_ensemble_json_is_named_with_its_field(odd, tmp_path, text, message):
    run = _edited_copy(odd, tmp_path, "ensemble/ensemble.json", text)
    one_line_error(cli("predict", "--run", run / "ensemble", odd["odd_image"]), "ensemble.json", message)


RESULTS_EDITS = [
    ('{"heads": 5}', "'heads' is not an object"),
    ('{"heads": {"logreg": 5}, "best": "logreg"}', "entry 'logreg' is not an object"),
    ('{"heads": {"logreg": {"test": 1}}, "best": "logreg"}', "'logreg.test' is a int"),
    ('{"heads": {"logreg": {}}, "best": "logreg", "genres": ["a"]}', "'test' is missing"),
    ('{"heads": {"logreg": {}}, "best": "logreg", "genres": 7}', "'genres'"),
    ("[" * 100000, "not readable JSON"),
]


@pytest.mark.parametrize("text, message", RESULTS_EDITS)
def test_unclear_an_edited_results_json_is_named_by_report_leaderboard_and_predict(odd, tmp_path, text, message):
    run = _edited_copy(odd, tmp_path, "results.json", text)
    one_line_error(cli("report", run, "--out", tmp_path / "r.html"), "results.json", message)
    if "'test' is missing" not in message:  # the leaderboard and predict need fewer fields than the report
        one_line_error(cli("leaderboard", run), "results.json", message)
        one_line_error(cli("predict", "--run", run, odd["odd_image"]), "results.json", message)


@pytest.mark.parametrize("edit, message", [("nan", "'P_test'"), ("drop", "'Y_val' is missing"), ("shape", "'P_val'"), ("garbage", "not a readable npz")])
def test_unclear_an_edited_predictions_npz_is_named_by_report(odd, tmp_path, edit, message):
    import io

    with np.load(odd["runs"] / "logreg" / "predictions.npz") as z:
        arrays = {k: z[k] for k in z.files}
    if edit == "nan":
        arrays["P_test"] = arrays["P_test"].copy()
        arrays["P_test"][0, 0] = np.nan
    elif edit == "drop":
        del arrays["Y_val"]
    elif edit == "shape":
        arrays["P_val"] = arrays["P_val"][:, :1]
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    run = _edited_copy(odd, tmp_path, "logreg/predictions.npz", b"garbage" if edit == "garbage" else buf.getvalue())
    one_line_error(cli("report", run, "--out", tmp_path / "r.html", "--head", "logreg"), "predictions.npz", message)


FINETUNE_EDITS = [
    ('del r["weights_sha256"]', "'weights_sha256' is missing"),
    ('r["preprocessing"] = "x"', "'preprocessing' is a str"),
    ('r["genres"] = 5', "'genres' is a int"),
    ('r["thresholds"]["values"] = [float("nan")] * len(r["genres"])', "'thresholds.values'"),
    ('r["format"] = "abc"', "'format' is a str"),
    ('r["preprocessing"]["size"] = 10**9', "'preprocessing.size'"),
]


@pytest.mark.parametrize("edit, message", FINETUNE_EDITS)
def test_unclear_an_edited_finetune_json_is_named_with_its_field(tmp_path, edit, message):
    from genrekit.backbones.finetuned import check_record
    from genrekit.errors import StoreError

    r = {"format": 1, "weights_sha256": "0" * 64, "head_sha256": "0" * 64, "backbone": "test-tiny-cnn",
         "preprocessing": {"size": 32}, "genres": ["Drama", "Horror"], "thresholds": {"rule": "global", "values": [0.5, 0.5]}}  # fmt: skip
    check_record(r, tmp_path)
    exec(edit)
    with pytest.raises(StoreError, match="finetune.json") as e:
        check_record(r, tmp_path)
    assert message in str(e.value)


def test_unclear_a_folder_given_as_a_store_is_called_a_folder(odd, tmp_path):
    (tmp_path / "store.h5").mkdir()
    for args in (["store", "info", tmp_path / "store.h5"], ["evaluate", "--run", odd["runs"] / "logreg", "--store", tmp_path / "store.h5"]):
        one_line_error(cli(*args), "is a folder, not a store file")


def _rows_csv(path: Path, header: str, rows: list[str], encoding: str = "utf-8") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding=encoding)
    return path


def test_unclear_utf16_manifests_are_read_or_named_and_duplicate_columns_refused(odd, tmp_path):
    image = sorted((odd["root"] / "col" / "img").glob("0*.png"))[0]
    rows = [f"s1,Drama,{image}", f"s2,Horror,{image}"]
    res = cli("data", "inspect", _rows_csv(tmp_path / "u16.csv", "id,genres,image", rows, "utf-16"), "--no-images")
    assert res.exit_code == 0 and "│ Horror │" in res.output, res.output  # a byte-order mark: read as UTF-16
    res = cli("data", "inspect", _rows_csv(tmp_path / "u16le.csv", "id,genres,image", rows, "utf-16-le"), "--no-images")
    one_line_error(res, "UTF-16", "save it as UTF-8")
    res = cli("data", "inspect", _rows_csv(tmp_path / "dup.csv", "id,genres,image,genres", [f"s1,Drama,{image},Horror"]), "--no-images")
    one_line_error(res, "'genres' more than once")


def test_unclear_mixed_genre_separators_are_warned_about_once(odd, tmp_path):
    image = sorted((odd["root"] / "col" / "img").glob("0*.png"))[0]
    m = _rows_csv(tmp_path / "mix.csv", "id,genres,image", [f"s1,Drama|Horror,{image}", f's2,"Comedy, Action",{image}', f"s3,Drama,{image}"])
    res = cli("data", "inspect", m, "--no-images")
    assert res.exit_code == 0, res.output
    assert res.output.count("mixes separators") == 1 and "row 3" in res.output
    res = cli("data", "inspect", m, "--no-images", "--genre-sep", "|")  # said explicitly: no warning
    assert "mixes separators" not in res.output


def test_unclear_manifest_warnings_are_printed_once(odd, tmp_path, caplog):
    image = sorted((odd["root"] / "col" / "img").glob("0*.png"))[0]
    m = _rows_csv(tmp_path / "dupid.csv", "id,genres,image", [f"s1,Drama,{image}", f"s1,Horror,{image}", f"s3,Drama,{image}"])
    res = cli("data", "inspect", m, "--no-images")
    assert res.exit_code == 0, res.output
    shown = res.output.count("repeat an earlier id") + sum("repeat an earlier id" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert shown == 1, (res.output, caplog.records)


def test_unclear_file_uris_are_local_paths(odd, tmp_path):
    from urllib.parse import quote

    image = sorted((odd["root"] / "col" / "img").glob("0*.png"))[0]
    m = _rows_csv(tmp_path / "uri.csv", "id,genres,image", [f"s1,Drama,file://{quote(str(image))}", f"s2,Horror,file://localhost{quote(str(image))}"])
    res = cli("data", "inspect", m)
    assert res.exit_code == 0 and "images: all readable" in res.output, res.output


def test_unclear_a_long_plot_is_not_echoed_back(tmp_path):
    plot = "A sheriff rides into a town that has forgotten the law. " * 2000  # ~110 KB
    res = cli("zeroshot", "--plot", plot, "--backbone", "test-tiny-text")
    assert res.exit_code == 0, res.output
    assert len(res.output) < 5000 and "characters)" in res.output
    res = cli("zeroshot", "--plot", plot, "--backbone", "test-tiny-text", "--json")
    assert res.exit_code == 0 and len(res.output) < 20000


FUSION_EDITS = [
    ("late/logreg/fusion.json", lambda r: r.pop("stores"), "'stores' is missing"),
    ("late/logreg/fusion.json", lambda r: r.update(heads=5), "malformed"),
    ("late/logreg/fusion.json", lambda r: r["heads"].update({k: "../../../../../etc" for k in r["heads"]}), "points outside the run"),
    ("late/logreg/fusion.json", lambda r: r.update(weights={k: float("nan") for k in r["weights"]}), "'weights'"),
    ("early/logreg/run.json", lambda r: r["fusion"].update(scaling="../../../../../../etc/passwd"), "points outside the run"),
]


@pytest.mark.parametrize("rel, edit, message", FUSION_EDITS, ids=["no-stores", "heads-int", "heads-outside", "weights-nan", "scaling-outside"])
def test_unclear_an_edited_fused_run_is_named_with_its_file(tmp_path, tmp_path_factory, rel, edit, message):
    import json
    import shutil

    from genrekit.errors import StoreError
    from genrekit.inference import load_run

    src = _fused_run(tmp_path_factory)
    run = tmp_path / "runs"
    shutil.copytree(src, run)
    rec = json.loads((run / rel).read_text())
    edit(rec)
    (run / rel).write_text(json.dumps(rec))
    with pytest.raises(StoreError, match=rel.split("/")[-1]) as e:
        load_run(run / rel.rsplit("/", 1)[0])
    assert message in str(e.value)


_FUSED: dict = {}


def _fused_run(tmp_path_factory) -> Path:
    """One small fused run (posters + titles), built once for the edits above."""
    if "runs" not in _FUSED:
        from test_fused_runs import poster_and_title_stores

        root = tmp_path_factory.mktemp("fusedodd")
        _, posters, titles = poster_and_title_stores(root, 120)
        res = cli("heads", "--store", posters, "--store", titles, "--head", "logreg", "--out", root / "runs", "--min-positives", "5", "--jobs", "1")
        assert res.exit_code == 0, res.output
        _FUSED["runs"] = root / "runs"
    return _FUSED["runs"]
