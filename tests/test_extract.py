import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import genrekit.data.images as images
from genrekit.errors import ConfigError, ManifestError, StoreMismatchError
from genrekit.extraction import ExtractConfig, extract
from genrekit.store import FeatureStore
from genrekit.system import glibc

from conftest import make_collection, write_manifest


def cfg(manifest, out, **kw):
    # fp32: these tests compare stores made with different batch boundaries exactly.
    return ExtractConfig(**{"backbone": "test-tiny-cnn", "data": str(manifest), "out": str(out), "workers": 0,
                            "batch_size": 4, "precision": "fp32", **kw})


def test_extraction_is_deterministic_and_labelled(collection, tmp_path):
    r1 = extract(cfg(collection, tmp_path / "a.h5"))
    r2 = extract(cfg(collection, tmp_path / "b.h5", batch_size=7, workers=1))
    assert r1.rows == r2.rows == 24 and r1.encoded == 24 and not r1.failures
    a, b = FeatureStore(r1.store).load(), FeatureStore(r2.store).load()
    assert list(a.ids) == [f"s{i:03d}" for i in range(24)]
    np.testing.assert_allclose(a.X, b.X, rtol=1e-4, atol=1e-5)
    assert a.genres[0] in ("Drama", "Comedy", "Horror", "Action") and a.Y.sum() > 24
    cfg_stored = FeatureStore(r1.store).attrs["config"]
    assert cfg_stored["backbone"] == "test-tiny-cnn" and cfg_stored["resize"] == "squash"


def test_rerun_recomputes_nothing(collection, tmp_path):
    extract(cfg(collection, tmp_path / "a.h5", limit=10))
    r = extract(cfg(collection, tmp_path / "a.h5"))
    assert (r.skipped, r.encoded, r.rows) == (10, 14, 24)
    r = extract(cfg(collection, tmp_path / "a.h5"))
    assert (r.skipped, r.encoded, r.rows) == (24, 0, 24)


def test_crash_mid_run_resumes_to_the_same_store(collection, tmp_path, monkeypatch):
    import genrekit.extraction.core as ex

    ref = FeatureStore(extract(cfg(collection, tmp_path / "ref.h5")).store).load()
    monkeypatch.setattr(ex, "FLUSH_ROWS", 4)  # flush every batch
    calls = {"n": 0}
    real = ex.Encoder.encode_images

    def crash_on_third(self, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, batch)

    monkeypatch.setattr(ex.Encoder, "encode_images", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        extract(cfg(collection, tmp_path / "s.h5"))
    assert not (tmp_path / "s.h5").exists() and (tmp_path / "s.h5.parts").is_dir()
    r = extract(cfg(collection, tmp_path / "s.h5"))
    assert (r.skipped, r.encoded) == (8, 16)
    got = FeatureStore(r.store).load()
    assert list(got.ids) == list(ref.ids)
    np.testing.assert_allclose(got.X, ref.X, rtol=1e-4, atol=1e-5)


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, genrekit.extraction as ex
    ex.FLUSH_ROWS = 4
    ex.extract(ex.ExtractConfig(backbone="test-tiny-cnn", data=sys.argv[1], out=sys.argv[2], workers=0, batch_size=4,
                                precision="fp32"))
    """
)


def test_kill_9_at_random_moments_then_rerun(tmp_path):
    manifest = make_collection(tmp_path / "col", n=120)
    ref = FeatureStore(extract(cfg(manifest, tmp_path / "ref.h5")).store).load()
    out = tmp_path / "k.h5"
    rng = np.random.default_rng(1)
    env = {**os.environ, "PYTHONPATH": os.path.dirname(__file__)}
    parts = tmp_path / "k.h5.parts"
    for _ in range(3):
        before = len(list(parts.glob("part-*"))) if parts.exists() else 0
        p = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(manifest), str(out)], env=env)
        deadline = time.time() + 60
        while time.time() < deadline and (not parts.exists() or len(list(parts.glob("part-*"))) <= before):
            time.sleep(0.01)
        time.sleep(float(rng.uniform(0, 0.2)))  # somewhere in the middle of encoding or writing a part
        p.send_signal(signal.SIGKILL)
        p.wait()
    r = extract(cfg(manifest, out))
    assert 0 < r.skipped <= 120  # the killed runs did work, and it was kept
    got = FeatureStore(r.store).load()
    assert len(set(got.ids)) == len(got.ids) == 120
    assert list(got.ids) == list(ref.ids)
    np.testing.assert_allclose(got.X, ref.X, rtol=1e-4, atol=1e-5)


def test_unreadable_inputs_are_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    d = tmp_path / "bad"
    d.mkdir()
    ok = Image.new("RGB", (40, 60), (10, 200, 30))
    ok.save(d / "ok.jpg")
    ok.convert("L").save(d / "grey.png")
    ok.convert("CMYK").save(d / "cmyk.jpg")
    ok.convert("P").save(d / "palette.gif")
    rgba = ok.convert("RGBA")
    rgba.putalpha(0)
    rgba.save(d / "alpha.png")
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("this is not an image")
    (d / "trunc.jpg").write_bytes((d / "ok.jpg").read_bytes()[:300])
    Image.new("L", (200, 200)).save(d / "bomb.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 10_000)
    names = ["ok.jpg", "grey.png", "cmyk.jpg", "palette.gif", "alpha.png", "empty.jpg", "text.jpg", "trunc.jpg",
             "bomb.png", "missing.jpg"]
    manifest = write_manifest(tmp_path / "m.csv", [{"id": n, "genres": "Drama", "image": f"bad/{n}"} for n in names])
    r = extract(cfg(manifest, tmp_path / "s.h5"))
    reasons = dict(r.failures)
    assert r.rows == 5 and set(FeatureStore(r.store).ids) == set(names[:5])
    assert reasons["empty.jpg"].startswith("empty file")
    assert reasons["text.jpg"].startswith("not an image")
    assert reasons["trunc.jpg"].startswith("truncated")
    assert reasons["bomb.png"].startswith("decompression bomb")
    assert reasons["missing.jpg"] == "missing file"
    assert dict(FeatureStore(r.store).failures) == reasons
    # Fully transparent pixels become white, not black.
    x = images.load_image(str(d / "alpha.png"))
    assert x.mode == "RGB" and x.getpixel((0, 0)) == (255, 255, 255)
    # Failures are not retried on a re-run; nothing is recomputed.
    assert extract(cfg(manifest, tmp_path / "s.h5")).encoded == 0


def test_text_modality_lists_empty_plots_as_missing(tmp_path):
    rows = [{"id": "a", "genres": "Drama", "plot": "A long sad story."}, {"id": "b", "genres": "Comedy", "plot": " "},
            {"id": "c", "genres": "Comedy", "plot": "Jokes."}]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    r = extract(cfg(manifest, tmp_path / "t.h5", backbone="test-tiny-text", modality="text"))
    store = FeatureStore(r.store)
    assert list(store.ids) == ["a", "c"] and store.failures == [("b", "no plot (empty or missing)")]
    assert store.header.modality == "text" and store.header.preprocessing["window_tokens"] == 64


def test_clip_store_is_l2_normalised_and_refuses_other_options(collection, tmp_path):
    r = extract(cfg(collection, tmp_path / "c.h5", backbone="test-tiny-clip"))
    X = FeatureStore(r.store).load().X
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(StoreMismatchError, match="resize"):
        extract(cfg(collection, tmp_path / "c.h5", backbone="test-tiny-clip", resize="letterbox"))
    with pytest.raises(StoreMismatchError, match=r"encoder\.family=.open_clip"):
        extract(cfg(collection, tmp_path / "c.h5"))


def test_bad_options_are_refused(collection, tmp_path):
    with pytest.raises(ConfigError, match="modality"):
        extract(cfg(collection, tmp_path / "x.h5", modality="audio"))
    with pytest.raises(ConfigError, match="text encoder"):
        extract(cfg(collection, tmp_path / "x.h5", backbone="test-tiny-text"))


def test_bf16_is_recorded_and_close_to_fp32(collection, tmp_path):
    r32 = extract(cfg(collection, tmp_path / "a.h5"))
    r16 = extract(cfg(collection, tmp_path / "b.h5", precision="bf16"))
    a, b = FeatureStore(r32.store), FeatureStore(r16.store)
    assert (a.header.encoder["precision"], b.header.encoder["precision"]) == ("fp32", "bf16")
    Xa, Xb = a.load().X, b.load().X
    cos = (Xa * Xb).sum(1) / np.linalg.norm(Xa, axis=1) / np.linalg.norm(Xb, axis=1)
    assert cos.min() > 0.99
    with pytest.raises(StoreMismatchError, match="precision"):
        extract(cfg(collection, tmp_path / "a.h5", precision="bf16"))
    with pytest.raises(ConfigError, match="fp16 is for GPUs"):
        extract(cfg(collection, tmp_path / "c.h5", precision="fp16"))


# -- multi-layer CNN features (--layers) ---------------------------------------------------------
def test_layers_pool_every_stage_and_the_last_stage_mean_is_the_embedding(collection, tmp_path):
    from genrekit.backbones import create_encoder

    last = FeatureStore(extract(cfg(collection, tmp_path / "last.h5")).store)
    multi = FeatureStore(extract(cfg(collection, tmp_path / "all.h5", layers="all")).store)
    enc = multi.header.encoder
    assert (enc["layers"], enc["layer_stats"]) == ("2,4", "mean,std") and multi.header.dim == 2 * (8 + 16)
    assert "layers" not in last.header.encoder  # last-layer stores record nothing, as before
    # The pooled mean of the tiny CNN's last ReLU, through its Linear, is the last-layer embedding.
    X = multi.load().X
    means16 = X[:, 16:32]  # stage 1: mean(8), std(8); stage 2: mean(16), std(16)
    lin = create_encoder("test-tiny-cnn", precision="fp32").module[-1]  # as the stores: fp32 on any CPU
    np.testing.assert_allclose(lin(torch_from(means16)).detach().numpy(), last.load().X, rtol=1e-4, atol=1e-5)
    assert (X[:, 8:16] >= 0).all() and X[:, 8:16].max() > 0  # standard deviations
    from typer.testing import CliRunner

    from genrekit_cli.main import app

    for store, shown in ((multi, "2,4 (each pooled to mean,std)"), (last, "last (the pooled embedding)")):
        res = CliRunner().invoke(app, ["store", "info", str(store.path)], env={"COLUMNS": "200"})
        assert res.exit_code == 0 and shown in res.output, res.output


def torch_from(a):
    import torch

    return torch.from_numpy(np.ascontiguousarray(a))


def test_a_multi_layer_store_is_never_extended_with_other_layers(collection, tmp_path):
    out = tmp_path / "all.h5"
    extract(cfg(collection, out, layers="all", limit=10))
    for other, name in ((dict(), r"encoder\.layer"), (dict(layers="2"), "encoder.layers"), (dict(layers="all", layer_stats="mean"), "encoder.layer_stats")):
        with pytest.raises(StoreMismatchError, match=name):
            extract(cfg(collection, out, **other))
    assert extract(cfg(collection, out, layers="1,2")).encoded == 14  # the same stages, by number


def test_layers_are_refused_where_they_do_not_apply(collection, tmp_path):
    for kw, msg in ((dict(layers="3"), "stages 1 to 2"), (dict(layers="x"), "not last, all or stage numbers"),
                    (dict(backbone="colorstats", layers="all"), "CNN backbones"), (dict(layers="all", layer_stats="max"), "--layer-stats")):
        with pytest.raises(ConfigError, match=msg):
            extract(cfg(collection, tmp_path / "x.h5", **kw))
    assert not (tmp_path / "x.h5").exists()


def test_a_multi_layer_store_predicts_new_images_through_its_own_stages(collection, tmp_path):
    from genrekit.extraction import embed_images, encoder_from_header

    store = FeatureStore(extract(cfg(collection, tmp_path / "all.h5", layers="2")).store)
    data = store.load()
    encoder = encoder_from_header(store.header)
    assert encoder.identity["layers"] == "4"
    paths = [r["image"] for r in __import__("csv").DictReader(open(collection))][:3]
    X, ok, failures = embed_images(encoder, store.header, [str(collection.parent / p) for p in paths])
    assert not failures and X.shape == (3, 32)
    np.testing.assert_allclose(X, data.X[:3], rtol=1e-4, atol=1e-5)


def test_mobilenet_v2_extracts_every_stage_by_default_and_names_the_flag_for_old_stores(collection, tmp_path):
    base = dict(backbone="mobilenet_v2", weights="none", limit=4)
    old = tmp_path / "old.h5"
    extract(cfg(collection, old, layers="last", **base))  # as every mobilenet_v2 store made before --layers
    with pytest.raises(StoreMismatchError, match="extend it with --layers last"):
        extract(cfg(collection, old, **base))
    assert extract(cfg(collection, old, layers="last", **{**base, "limit": 6})).encoded == 2
    new = FeatureStore(extract(cfg(collection, tmp_path / "new.h5", **base)).store).header
    assert new.dim == 2 * (24 + 32 + 64 + 96 + 160 + 1280) and new.encoder["layer_stats"] == "mean,std"
    assert new.encoder["layers"].split(",")[0] == "features.3"


def test_the_store_records_how_to_read_its_manifest_again(tmp_path, monkeypatch):
    """A manifest read with --columns / --genre-sep, given relative to the working directory, is re-read
    the same way from the store's record (fine-tune, similar posters and the report read it so)."""
    from genrekit.data.manifest import CsvColumns

    src = make_collection(tmp_path / "col", n=8)
    rows = list(csv.DictReader(open(src)))
    odd = tmp_path / "col" / "odd.csv"
    with open(odd, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "tags", "poster"])
        for r in rows:
            w.writerow([r["id"], r["genres"].replace("|", ";"), r["image"]])
    monkeypatch.chdir(tmp_path / "col")
    cols = CsvColumns(id="key", genres="tags", image="poster")
    extract(cfg(Path("odd.csv"), tmp_path / "s.h5", columns=cols, genre_sep=";"))
    monkeypatch.chdir(tmp_path)  # another directory: the record must not depend on where extract ran
    source = FeatureStore(tmp_path / "s.h5").header.manifest_source()
    assert Path(source.path) == odd.resolve() and source.columns == cols and source.genre_sep == ";"
    m = source.read()
    assert [s.id for s in m.samples] == [r["id"] for r in rows]
    assert [list(s.genres) for s in m.samples] == [r["genres"].split("|") for r in rows]
    odd.unlink()
    with pytest.raises(ManifestError, match="the manifest the store was made from"):
        source.read()


_HEAP_PROBE = """
import ctypes, os, numpy as np
from genrekit.backbones import create_encoder

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
create_encoder("test-tiny-cnn", weights="none")
heap = libc.mallinfo2().arena
a = np.ones(64 << 20, np.uint8)  # bigger than any batch of activations glibc would map on its own
mapped = libc.mallinfo2().hblkhd >= 64 << 20
del a
print(int(mapped), int(libc.mallinfo2().arena - heap >= 32 << 20))  # the heap grew by it, and kept it
"""


@pytest.mark.skipif(not glibc(), reason="glibc's malloc only")
def test_building_an_encoder_keeps_freed_memory_for_the_next_batch():
    # With glibc's defaults a 64 MB block is mapped and unmapped (every batch faults its memory in
    # again); once an encoder is built the process keeps it in the heap; GENREKIT_MALLOC=default opts out.
    def probe(**env):
        out = subprocess.run([sys.executable, "-c", _HEAP_PROBE], env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    assert probe() == ["0", "1"]  # from the heap, and still there once freed
    assert probe(GENREKIT_MALLOC="default") == ["1", "0"]  # mapped, and gone once freed


_THREAD_PROBE = """
import ctypes, sys, threading, numpy as np
from genrekit.backbones import create_encoder
from genrekit.system import share_main_arena

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
release = threading.Event()
if sys.argv[1] == "command line":
    share_main_arena()  # what the command line's entry point does first
    early = threading.Thread(target=lambda: (np.ones(1 << 16), release.wait()))  # allocates, and lives on (rich's refresh thread)
    early.start()
create_encoder("test-tiny-cnn", weights="none")
mapped = []
def forward_sized():  # MobileNetV2's widest fp32 activation at batch 16 is 77 MB, above a thread arena's 64 MiB heaps
    a = np.ones(80 << 20, np.uint8)
    mapped.append(libc.mallinfo2().hblkhd >= 64 << 20)
for _ in range(3):
    t = threading.Thread(target=forward_sized)
    t.start()
    t.join()
release.set()
print(sum(mapped))
"""


@pytest.mark.skipif(not glibc(), reason="glibc's malloc only")
@pytest.mark.parametrize("how", ["encoder", "command line"])
def test_threads_started_after_an_encoder_allocate_from_the_kept_heap(how):
    # A thread's own arena maps a block above 64 MiB and unmaps it when freed, whatever the
    # thresholds: a forward in another thread (extraction's streams, a server's workers) faulted its
    # activations in again every batch. Threads share the main arena; GENREKIT_MALLOC=default opts out.
    def probe(**env):
        out = subprocess.run([sys.executable, "-c", _THREAD_PROBE, how], env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return int(out.stdout)

    assert probe() == 0
    assert probe(GENREKIT_MALLOC="default") == 3
