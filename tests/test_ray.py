"""Extraction on a real local Ray instance (2 CPUs, no GPU) equals local extraction.

Each Ray run starts a fresh actor pool (a new Python process that imports torch): 20-30 s on this
2-core machine. One Ray run stays in the default suite; the rest are marked slow.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from genrekit.errors import ConfigError
from genrekit.extraction import ExtractConfig, extract
from genrekit.store import FeatureStore
from genrekit_cli.main import app

from conftest import make_collection

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'genrekit[ray]'")


@pytest.fixture(scope="module")
def local_ray():
    from genrekit.extraction.ray_engine import init_ray

    init_ray(None, num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def bad_collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("raycol")
    manifest = make_collection(root, n=30)
    (root / "img" / "007.jpg").unlink()  # missing
    data = (root / "img" / "011.jpg").read_bytes()
    (root / "img" / "011.jpg").write_bytes(data[: len(data) // 3])  # truncated
    (root / "img" / "013.jpg").write_bytes(b"not an image at all")
    return manifest


def cfg(manifest, out, **kw):
    return ExtractConfig(**{"backbone": "test-tiny-cnn", "data": str(manifest), "out": str(out), "batch_size": 4,
                            "precision": "fp32", **kw})


def _same_store(a, b):
    A, B = FeatureStore(a), FeatureStore(b)
    fa, fb = A.load(), B.load()
    order = np.argsort(fb.ids)
    assert sorted(fa.ids) == sorted(fb.ids)
    np.testing.assert_allclose(fa.X[np.argsort(fa.ids)], fb.X[order], atol=1e-5)
    np.testing.assert_array_equal(fa.Y[np.argsort(fa.ids)], fb.Y[order])
    assert sorted(A.failures) == sorted(B.failures)
    assert A.header.diff(B.header) == []


def test_ray_extraction_equals_local(local_ray, bad_collection, tmp_path):
    local = extract(cfg(bad_collection, tmp_path / "local.h5", workers=0))
    on_ray = extract(cfg(bad_collection, tmp_path / "ray.h5", engine="ray", workers=1))
    assert on_ray.rows == local.rows == 27 and len(on_ray.failures) == 3
    _same_store(local.store, on_ray.store)
    reasons = dict(FeatureStore(on_ray.store).failures)
    assert "missing" in reasons["s007"] or "no such" in reasons["s007"].lower()


@pytest.mark.slow  # a fresh actor pool per run: about 30 s here
def test_an_interrupted_ray_run_resumes_without_duplicates(local_ray, bad_collection, tmp_path, monkeypatch):
    import genrekit.extraction.core as core

    ref = extract(cfg(bad_collection, tmp_path / "ref.h5", workers=0))
    out = tmp_path / "ray.h5"
    monkeypatch.setattr(core, "FLUSH_ROWS", 4)
    real = core.PartSink.flush
    calls = {"n": 0}

    def die_after_two_parts(self):
        real(self)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the driver dies with two parts on disk

    monkeypatch.setattr(core.PartSink, "flush", die_after_two_parts)
    with pytest.raises(KeyboardInterrupt):
        extract(cfg(bad_collection, out, engine="ray"))
    assert not out.exists() and len(list((tmp_path / "ray.h5.parts").glob("part-*.npz"))) == 2
    monkeypatch.setattr(core.PartSink, "flush", real)
    again = extract(cfg(bad_collection, out, engine="ray"))
    assert again.skipped > 0 and again.skipped + again.encoded + len(again.failures) == 30  # nothing done twice
    ids = list(FeatureStore(out).ids)
    assert len(ids) == len(set(ids)) == 27
    _same_store(ref.store, out)


@pytest.mark.slow
def test_text_store_on_ray(local_ray, bad_collection, tmp_path):
    local = extract(cfg(bad_collection, tmp_path / "l.h5", backbone="test-tiny-text", modality="text"))
    on_ray = extract(cfg(bad_collection, tmp_path / "r.h5", backbone="test-tiny-text", modality="text", engine="ray"))
    _same_store(local.store, on_ray.store)


def test_without_ray_the_engine_fails_in_one_line(bad_collection, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r"pip install 'genrekit\[ray\]'"):
        extract(cfg(bad_collection, tmp_path / "x.h5", engine="ray"))
    res = CliRunner().invoke(app, ["extract", "--backbone", "test-tiny-cnn", "--data", str(bad_collection),
                                   "--out", str(tmp_path / "x.h5"), "--engine", "ray"])
    assert res.exit_code == 1 and "genrekit[ray]" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x.h5").exists()


def test_unknown_engine_is_refused(bad_collection, tmp_path):
    with pytest.raises(ConfigError, match="--engine 'spark'"):
        extract(cfg(bad_collection, tmp_path / "x.h5", engine="spark"))
