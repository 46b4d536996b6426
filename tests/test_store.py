import h5py
import numpy as np
import pytest

from genrekit.errors import StoreError, StoreMismatchError
from genrekit.store import FeatureStore, StoreHeader, StoreWriter


def header(**kw) -> StoreHeader:
    base = dict(
        encoder={"family": "test", "name": "enc", "weights": "none"},
        preprocessing={"size": 32, "resize": "squash"},
        normalisation="none",
        modality="image",
        dim=4,
        dtype="float32",
        genres=("Drama", "Comedy"),
        config={"backbone": "enc"},
    )
    return StoreHeader(**{**base, **kw})


def write(path, ids, h=None, fails=()):
    w = StoreWriter(path, h or header())
    X = np.arange(len(ids) * 4, dtype=np.float32).reshape(-1, 4)
    Y = np.array([[1, i % 2] for i in range(len(ids))], np.uint8)
    w.write_part(ids, X, Y, [f"t{i}" for i in ids], [2000] * len(ids), failures=fails)
    return w


def test_round_trip(tmp_path):
    path = tmp_path / "s.h5"
    write(path, ["a", "b", "c"], fails=[("d", "missing file")]).finalize()
    store = FeatureStore(path)
    fs = store.load()
    assert list(fs.ids) == ["a", "b", "c"] and fs.X.dtype == np.float32 and fs.X.shape == (3, 4)
    assert fs.genres == ["Drama", "Comedy"] and fs.Y.tolist() == [[1, 0], [1, 1], [1, 0]]
    assert list(fs.titles) == ["ta", "tb", "tc"] and fs.split is None
    assert store.failures == [("d", "missing file")]
    batches = list(store.iter_batches(2))
    assert [len(b[0]) for b in batches] == [2, 1]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), fs.X)
    info = store.info()
    assert info["rows"] == 3 and info["encoder"]["name"] == "enc" and info["genre_counts"] == {"Drama": 3, "Comedy": 1}
    assert info["format_version"] == 1 and "created" in info and info["config"]["backbone"] == "enc"


def test_float16_store_loads_as_float32(tmp_path):
    path = tmp_path / "s.h5"
    write(path, ["a", "b"], header(dtype="float16")).finalize()
    fs = FeatureStore(path).load()
    assert fs.X.dtype == np.float32 and fs.X[1, 3] == 7.0


def test_mismatch_names_the_field(tmp_path):
    path = tmp_path / "s.h5"
    write(path, ["a"]).finalize()
    with pytest.raises(StoreMismatchError, match=r"preprocessing\.resize='squash'.*'letterbox'"):
        StoreWriter(path, header(preprocessing={"size": 32, "resize": "letterbox"}))
    with pytest.raises(StoreMismatchError, match=r"encoder\.weights"):
        FeatureStore(path).check_compatible(header(encoder={"family": "test", "name": "enc", "weights": "x"}))
    # Where the weights file lives is recorded but not compared.
    FeatureStore(path).check_compatible(
        header(encoder={"family": "test", "name": "enc", "weights": "none", "weights_path": "/elsewhere"})
    )


def test_half_written_store_is_never_taken_for_complete(tmp_path):
    path = tmp_path / "s.h5"
    write(path, ["a"])  # parts only: as after a crash
    with pytest.raises(StoreError, match="incomplete.*re-run"):
        FeatureStore(path)
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f.attrs["format_version"] = 1
    with pytest.raises(StoreError, match="incomplete"):
        FeatureStore(tmp_path / "bad.h5")
    with pytest.raises(StoreError, match="not a genrekit"):
        h5py.File(tmp_path / "other.h5", "w").close()
        FeatureStore(tmp_path / "other.h5")


def test_resume_and_extend_without_duplicates(tmp_path):
    path = tmp_path / "s.h5"
    write(path, ["a", "b"])
    w = write(path, ["b", "c"])  # "b" again, as a batch redone after a crash mid-flush would be
    assert w.done_ids == {"a", "b", "c"}
    w.finalize()
    w2 = StoreWriter(path, header())
    assert w2.done_ids == {"a", "b", "c"}
    w2.write_part(["d"], np.ones((1, 4)), np.zeros((1, 2)), ["td"], [1999])
    store = w2.finalize()
    assert list(store.ids) == ["a", "b", "c", "d"]
    assert not (tmp_path / "s.h5.parts").exists()


def test_split_is_stored_and_survives_extension(tmp_path):
    path = tmp_path / "s.h5"
    write(path, ["a", "b"]).finalize()
    FeatureStore(path).write_split({"a": "train", "b": "test"})
    w = StoreWriter(path, header())
    w.write_part(["c"], np.ones((1, 4)), np.zeros((1, 2)), ["tc"], [1999])
    assert list(w.finalize().split) == ["train", "test", ""]
    with pytest.raises(StoreError, match="train, val or test"):
        FeatureStore(path).write_split({"a": "dev"})
