"""`genrekit store merge`: stores of one encoder made on different machines become one."""

from __future__ import annotations

import csv
import shutil

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from genrekit.data.vocab import VocabConfig
from genrekit.errors import StoreError, StoreMismatchError
from genrekit.extraction import ExtractConfig, extract
from genrekit.store import FeatureStore, merge_stores
from genrekit_cli.main import app


def _half(manifest, rows, name):
    with open(manifest, newline="") as f:
        all_rows = list(csv.DictReader(f))
    out = manifest.with_name(name)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(all_rows[0]))
        w.writeheader()
        w.writerows(all_rows[k] for k in rows)
    return out


def _store(manifest, out, genres=None, **kw):
    vocab = VocabConfig(genres=tuple(genres.split(","))) if genres else VocabConfig()
    return extract(ExtractConfig(backbone="test-tiny-cnn", data=str(manifest), out=str(out), workers=0,
                                 batch_size=4, precision="fp32", vocab=vocab, **kw)).store  # fmt: skip


@pytest.fixture
def halves(collection, tmp_path):
    # rows 0-15 on one machine, 10-23 on another: ids s010-s015 on both
    a = _store(_half(collection, range(16), "a.csv"), tmp_path / "a.h5", genres="Drama,Comedy,Horror,Action")
    b = _store(_half(collection, range(10, 24), "b.csv"), tmp_path / "b.h5", genres="Action,Comedy,Drama,Horror")
    full = _store(collection, tmp_path / "full.h5", genres="Drama,Comedy,Horror,Action")
    return a, b, full


def test_merge_equals_one_extraction_and_keeps_duplicates_once(halves, tmp_path):
    a, b, full = halves
    res = CliRunner().invoke(app, ["store", "merge", a, b, "--out", str(tmp_path / "all.h5")])
    assert res.exit_code == 0, res.output
    m, f = FeatureStore(tmp_path / "all.h5").load(), FeatureStore(full).load()
    assert len(m.ids) == len(set(m.ids)) == 24
    om, of = np.argsort(m.ids), np.argsort(f.ids)
    np.testing.assert_array_equal(m.ids[om], f.ids[of])
    np.testing.assert_allclose(m.X[om], f.X[of], atol=1e-5)
    gm = [m.genres.index(g) for g in f.genres]
    np.testing.assert_array_equal(m.Y[om][:, gm], f.Y[of])  # genres aligned by name


def test_merge_refuses_another_encoder_naming_the_field(collection, halves, tmp_path):
    a, _, _ = halves
    other = _store(collection, tmp_path / "letterbox.h5", resize="letterbox")
    with pytest.raises(StoreMismatchError, match="preprocessing.resize"):
        merge_stores([a, other], tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists()


def test_merge_refuses_one_id_with_two_embeddings_naming_it(halves, tmp_path):
    a, b, _ = halves
    tampered = tmp_path / "b2.h5"
    shutil.copy(b, tampered)
    with h5py.File(tampered, "a") as f:
        ids = [i.decode() if isinstance(i, bytes) else i for i in f["ids"][()]]
        f["embeddings"][ids.index("s012")] += 0.5
    with pytest.raises(StoreMismatchError, match="'s012' has different embeddings"):
        merge_stores([a, tampered], tmp_path / "x.h5")


def test_merge_refuses_an_existing_output_and_a_single_store(halves, tmp_path):
    a, b, _ = halves
    with pytest.raises(StoreError, match="exists"):
        merge_stores([a, b], a)
    with pytest.raises(StoreError, match="at least two"):
        merge_stores([a], tmp_path / "x.h5")
    res = CliRunner().invoke(app, ["store", "merge", a, b, "--out", a])
    assert res.exit_code == 1 and "Traceback" not in res.output
