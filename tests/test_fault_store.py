"""Hostile and careless use of feature stores: tampered files, a full disk, two writers, other genre orders.

Every case goes through the CLI where a user would meet it and asserts one clear line, no traceback.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_collection, write_manifest
from genrekit.errors import StoreError, StoreMismatchError
from genrekit.store import FeatureStore, StoreHeader, StoreWriter
from genrekit_cli.main import app

runner = CliRunner()
GENRES = ("Drama", "Comedy")


def header(**kw) -> StoreHeader:
    base = dict(encoder={"family": "test", "name": "enc", "weights": "none"}, preprocessing={"size": 32},
                normalisation="none", modality="image", dim=4, dtype="float32", genres=GENRES, config={})  # fmt: skip
    return StoreHeader(**{**base, **kw})


def good_store(path: Path, n: int = 30) -> Path:
    w = StoreWriter(path, header())
    rng = np.random.default_rng(0)
    ids = [f"i{k}" for k in range(n)]
    w.write_part(ids, rng.standard_normal((n, 4)), np.array([[1, k % 2] for k in range(n)]), ids, [2000] * n,
                 failures=[("gone", "missing file")])  # fmt: skip
    w.finalize()
    return path


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def flat(res) -> str:
    return " ".join(res.output.split())  # rich wraps long lines at the terminal width


def one_line_error(res) -> str:
    lines = [ln for ln in res.output.splitlines() if ln.strip() and "━" not in ln]  # progress bars aside
    assert res.exit_code == 1, res.output
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert "Traceback" not in res.output and "GENREKIT_DEBUG" not in res.output, res.output  # a known error, not a crash
    return lines[0]


# -- tampered stores ----------------------------------------------------------------------------
def _replace(f, name, data):
    del f[name]
    f[name] = data


def _external_link(f, path):
    other = path.with_name("other.h5")
    with h5py.File(other, "w") as o:
        o["emb"] = np.zeros((30, 4), np.float32)
    del f["embeddings"]
    f["embeddings"] = h5py.ExternalLink(other.name, "/emb")


def _virtual(f, path):
    other = path.with_name("src.h5")
    with h5py.File(other, "w") as o:
        o["emb"] = np.zeros((30, 4), np.float32)
    layout = h5py.VirtualLayout(shape=(30, 4), dtype=np.float32)
    layout[:] = h5py.VirtualSource(other.name, "emb", shape=(30, 4))
    del f["embeddings"]
    f.create_virtual_dataset("embeddings", layout)


def _nan_row(f, path):
    X = f["embeddings"][()]
    X[3, 1] = np.nan
    _replace(f, "embeddings", X)


TAMPERED = {
    "no ids": (lambda f, p: f.__delitem__("ids"), "no /ids dataset", "all"),
    "no embeddings": (lambda f, p: f.__delitem__("embeddings"), "no /embeddings dataset", "all"),
    "labels as text": (lambda f, p: _replace(f, "labels", np.array([["1", "0"]] * 30, dtype=h5py.string_dtype())), "/labels should be", "all"),
    "embeddings as int": (lambda f, p: _replace(f, "embeddings", np.zeros((30, 4), np.int64)), "/embeddings should be", "all"),
    "embeddings float64": (lambda f, p: _replace(f, "embeddings", np.zeros((30, 4), np.float64)), "float16 or float32", "all"),
    "embeddings 1-d": (lambda f, p: _replace(f, "embeddings", np.zeros(30, np.float32)), "/embeddings should be a 2-d", "all"),
    "wrong dim": (lambda f, p: _replace(f, "embeddings", np.zeros((30, 5), np.float32)), "attribute dim says 4", "all"),
    "labels short": (lambda f, p: _replace(f, "labels", np.zeros((29, 2), np.uint8)), "/labels has 29 rows", "all"),
    "titles short": (lambda f, p: _replace(f, "meta/title", np.array(["x"] * 3, dtype=h5py.string_dtype())), "/meta/title has 3 rows", "all"),
    "labels columns": (lambda f, p: _replace(f, "labels", np.zeros((30, 3), np.uint8)), "/genres names 2", "all"),
    "bad encoder JSON": (lambda f, p: f.attrs.__setitem__("encoder", "{not json"), "attribute encoder is not valid JSON", "all"),
    "encoder JSON list": (lambda f, p: f.attrs.__setitem__("encoder", "[1, 2]"), "should be a JSON object", "all"),
    "no dim": (lambda f, p: f.attrs.__delitem__("dim"), "lacks the attribute(s) dim", "all"),
    "dim not a number": (lambda f, p: f.attrs.__setitem__("dim", "four"), "dim 'four' is not an integer", "all"),
    "format not a number": (lambda f, p: f.attrs.__setitem__("format_version", "one"), "format_version 'one'", "all"),
    "duplicate genres": (lambda f, p: _replace(f, "genres", np.array(["Drama", "Drama"], dtype=object)), "'Drama' more than once", "all"),
    "genres a group": (lambda f, p: (f.__delitem__("genres"), f.create_group("genres/x")), "/genres should be a dataset", "all"),
    "failures differ": (lambda f, p: _replace(f, "failures/reasons", np.array([], dtype=h5py.string_dtype())), "/failures/ids and /failures/reasons", "all"),
    "external link": (_external_link, "external link to other.h5", "all"),
    "virtual dataset": (_virtual, "/embeddings is a virtual dataset", "all"),
    "NaN embedding": (_nan_row, "non-finite embeddings (NaN or infinity), e.g. id 'i3'", "load"),
    "labels not 0/1": (lambda f, p: _replace(f, "labels", np.full((30, 2), 7, np.uint8)), "values other than 0 and 1", "load"),
    "duplicate ids": (lambda f, p: _replace(f, "ids", np.array(["same"] * 30, dtype=object)), "an id more than once", "load"),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_tampered_store_is_one_clear_line_in_every_command(tmp_path, case):
    edit, message, where = TAMPERED[case]
    path = good_store(tmp_path / "s.h5")
    with h5py.File(path, "a") as f:
        edit(f, path)
    commands = [("heads", "--store", path, "--all", "--out", tmp_path / "runs"),
                ("evaluate", "--run", tmp_path / "no-run", "--store", path)]  # the store is read before the run
    if where == "all":
        commands.append(("store", "info", path))
    for args in commands:
        line = one_line_error(cli(*args))
        assert message in line and "s.h5" in line, (case, args, line)
    assert not (tmp_path / "runs").exists()


def test_non_finite_embeddings_are_recorded_as_failures_not_stored(tmp_path):
    w = StoreWriter(tmp_path / "s.h5", header())
    X = np.ones((3, 4))
    X[1, 2] = np.inf
    w.write_part(["a", "b", "c"], X, np.ones((3, 2)), ["", "", ""], [None] * 3)
    store = w.finalize()
    assert list(store.ids) == ["a", "c"] and np.isfinite(store.load().X).all()
    assert store.failures == [("b", "non-finite embedding (NaN or infinity) from the encoder")]


def test_duplicate_genre_names_are_refused_when_writing(tmp_path):
    with pytest.raises(StoreError, match="duplicates 'Drama'"):
        StoreWriter(tmp_path / "s.h5", header(genres=("Drama", "Comedy", "Drama")))
    assert not any(tmp_path.iterdir())


# -- a full disk ------------------------------------------------------------------------------------
def _extract(collection, out, *extra):
    return cli("extract", "--backbone", "test-tiny-cnn", "--data", collection, "--out", out, "--workers", "0", *extra)


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_finalizing_is_one_line_and_a_rerun_finishes_without_encoding(collection, tmp_path, monkeypatch):
    out = tmp_path / "st" / "s.h5"
    monkeypatch.setattr(h5py.Dataset, "__setitem__", _disk_full)
    line = one_line_error(_extract(collection, out))
    assert "no space left on device" in line and "re-run the same command" in line
    assert sorted(p.name for p in out.parent.iterdir()) == ["s.h5.lock", "s.h5.parts"]  # no temporary store left
    monkeypatch.undo()
    res = _extract(collection, out)
    assert res.exit_code == 0, res.output
    assert "24 rows (0 encoded now, 24 already done)" in flat(res)
    assert len(FeatureStore(out).load().ids) == 24 and not (out.parent / "s.h5.parts").exists()


def test_disk_full_while_writing_a_part_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "s.h5"
    w = StoreWriter(path, header())
    w.write_part(["a"], np.ones((1, 4)), np.ones((1, 2)), [""], [None])

    def half_written(fh, **arrays):
        fh.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", half_written)
    with pytest.raises(StoreError, match="no space left on device.*s.h5.parts/.*re-run"):
        w.write_part(["b"], np.ones((1, 4)), np.ones((1, 2)), [""], [None])
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "s.h5.parts").iterdir()) == ["header.json", "part-00000001.npz"]
    w = StoreWriter(path, header())
    assert w.done_ids == {"a"}
    w.write_part(["b"], np.ones((1, 4)), np.ones((1, 2)), [""], [None])
    assert list(w.finalize().ids) == ["a", "b"]


@pytest.mark.slow
def test_real_full_tmpfs_no_segfault_and_rerun_after_freeing_space(tmp_path):
    """A real ENOSPC from HDF5 (a 256 KiB tmpfs): h5py crashes the process at exit after such an error."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        script = textwrap.dedent(f"""
            import numpy as np
            from genrekit.store import StoreHeader, StoreWriter
            from genrekit.errors import StoreError
            h = StoreHeader({{"name": "enc"}}, {{}}, "none", "image", 64, "float32", ("Drama", "Comedy"), {{}})
            ids = [f"i{{k}}" for k in range(300)]
            w = StoreWriter("{mnt}/s.h5", h)
            if not w.done_ids:
                w.write_part(ids, np.random.rand(300, 64), np.zeros((300, 2)), ids, [1] * 300)
            try:
                print(len(w.finalize()), "rows; encoded", 0 if len(w.done_ids) == 300 else 300)
            except StoreError as e:
                print("error:", e)
        """)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]  # not -11: no segfault
        assert r.stdout.startswith("error:") and "no space left on device" in r.stdout and len(r.stdout.splitlines()) == 1
        assert sorted(p.name for p in mnt.iterdir()) == ["s.h5.parts"]  # the temporary store is gone
        subprocess.run(["mount", "-o", "remount,size=4m", str(mnt)], check=True)
        r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0 and r.stdout.strip() == "300 rows; encoded 0", (r.stdout, r.stderr[-2000:])
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# -- two writers ------------------------------------------------------------------------------------
HOLD = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0); os.write(fd, str(os.getpid()).encode())
print("locked", flush=True)
sys.stdin.read()
"""


def test_second_extract_on_one_store_is_refused_naming_the_pid(collection, tmp_path):
    out = tmp_path / "s.h5"
    assert _extract(collection, out, "--limit", "12").exit_code == 0
    before = out.read_bytes()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out) + ".lock"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = one_line_error(_extract(collection, out))
        assert f"is being written by another process (pid {holder.pid})" in line
        assert out.read_bytes() == before and not (tmp_path / "s.h5.parts").exists()  # nothing lost, nothing half-done
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    res = _extract(collection, out)
    assert res.exit_code == 0 and "24 rows (12 encoded now, 12 already done)" in flat(res), res.output


def test_the_lock_is_released_when_an_extraction_fails(collection, tmp_path):
    out = tmp_path / "s.h5"
    one_line_error(cli("extract", "--backbone", "test-tiny-cnn", "--data", tmp_path / "missing.csv", "--out", out))
    bad = write_manifest(tmp_path / "m.csv", [{"id": "a", "genres": "Drama", "image": "nope.jpg"}])
    assert _extract(bad, out).exit_code == 0  # the same process takes the lock again


# -- extending a store ------------------------------------------------------------------------------
def test_a_successful_extract_leaves_no_lock_file(collection, tmp_path):
    out = tmp_path / "s.h5"
    assert _extract(collection, out, "--limit", "12").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("s.h5")) == ["s.h5"]
    assert _extract(collection, out).exit_code == 0  # and the next writer takes a fresh one
    assert not (tmp_path / "s.h5.lock").exists()


def test_extending_without_weights_uses_the_stores_recorded_checkpoint(collection, tmp_path):
    import torch

    from genrekit.backbones.testing import tiny_cnn

    ckpt = tmp_path / "tiny.pt"
    torch.manual_seed(7)
    torch.save(tiny_cnn().state_dict(), ckpt)
    out = tmp_path / "s.h5"
    assert _extract(collection, out, "--weights", ckpt, "--limit", "12").exit_code == 0
    res = _extract(collection, out)  # no --weights: the store's checkpoint, not the backbone's default
    assert res.exit_code == 0 and "24 rows (12 encoded now, 12 already done)" in flat(res), res.output
    assert FeatureStore(out).header.encoder["weights_sha256"]
    ckpt.rename(tmp_path / "moved.pt")  # the checkpoint gone: say which file, and how to pass it
    line = one_line_error(_extract(collection, tmp_path / "s.h5", "--limit", "30"))
    assert "tiny.pt" in line and "--weights PATH" in line


def test_extending_with_the_same_genres_in_another_order_aligns_by_name(tmp_path):
    a = make_collection(tmp_path / "a", n=24, seed=0)
    out = tmp_path / "s.h5"
    assert _extract(a, out).exit_code == 0
    stored = FeatureStore(out).genres
    # A second collection whose genre frequencies give another column order.
    rows = [{"id": f"b{k}", "genres": g, "image": str(tmp_path / "a" / "img" / "000.jpg")}
            for k, g in enumerate(list(reversed(stored)) * 3 + [stored[-1]] * 5)]  # fmt: skip
    b = write_manifest(tmp_path / "b.csv", rows)
    res = _extract(b, out)
    assert res.exit_code == 0, res.output
    fs = FeatureStore(out).load()
    assert fs.genres == stored
    by_id = dict(zip(fs.ids, fs.Y))
    for r in rows:
        assert [fs.genres[j] for j in np.flatnonzero(by_id[r["id"]])] == [r["genres"]]


def test_another_vocabulary_names_the_genres_and_a_flag_that_exists(tmp_path):
    path = good_store(tmp_path / "s.h5")
    with pytest.raises(StoreMismatchError) as e:
        StoreWriter(path, header(genres=("Drama", "Horror")))
    msg = str(e.value)
    assert "only in the store: Comedy" in msg and "only in this run: Horror" in msg and "--genres Drama,Comedy" in msg
    help_text = cli("extract", "--help").output
    assert "--genres" in help_text and "--out" in help_text


# -- outputs never replace inputs ---------------------------------------------------------------------
def test_outputs_refuse_to_overwrite_their_inputs(collection, tmp_path):
    store = good_store(tmp_path / "s.h5")
    run = tmp_path / "runs" / "logreg"
    run.mkdir(parents=True)
    (run / "run.json").write_text("{}")
    before = store.read_bytes()
    cases = [
        (("evaluate", "--run", run, "--store", store, "--json", store), "--json", "the store being evaluated"),
        (("evaluate", "--run", run, "--store", store, "--predictions", store), "--predictions", "the store being evaluated"),
        (("evaluate", "--run", run, "--store", store, "--json", run / "run.json"), "--json", "the run"),
        (("evaluate", "--run", tmp_path / "runs", "--store", store, "--predictions", run / "run.json"), "--predictions", "the run"),
        (("heads", "--store", store, "--all", "--out", store), "--out", "the store"),
        (("extract", "--backbone", "test-tiny-cnn", "--data", collection, "--out", collection), "--out", "the manifest"),
    ]
    for args, flag, what in cases:
        line = one_line_error(cli(*args))
        assert f"{flag} " in line and f"would overwrite {what}" in line, (args, line)
    assert store.read_bytes() == before and (run / "run.json").read_text() == "{}"
    assert collection.read_text().startswith("id,title")


def test_store_temporaries_are_created_fresh_not_through_a_planted_link(tmp_path):
    target = tmp_path / "victim.txt"
    target.write_text("keep me")
    path = tmp_path / "s.h5"
    w = StoreWriter(path, header())
    (tmp_path / "s.h5.tmp").symlink_to(target)  # the old fixed temporary names
    (tmp_path / "s.h5.parts").mkdir()
    (tmp_path / "s.h5.parts" / ".tmp-00000001.npz").symlink_to(target)
    w.write_part(["a"], np.ones((1, 4)), np.ones((1, 2)), [""], [None])
    w.finalize()
    assert target.read_text() == "keep me" and len(FeatureStore(path)) == 1

