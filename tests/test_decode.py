"""The torchvision input path (libjpeg-turbo decode, uint8 resize, batch normalisation) against PIL's."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import genrekit.data.images as images
from genrekit.backbones import Preprocess, create_encoder
from genrekit.backbones.decode import jpeg_header, pil_to_uint8, read_rgb
from genrekit.errors import StoreMismatchError, UnreadableImageError
from genrekit.extraction import ExtractConfig, encoder_from_header, extract
from genrekit.store import FeatureStore

from conftest import write_manifest

POSTERS = Path("/work/shared/data/movie_posters")
WEIGHTS = Path("/work/shared/weights/mobilenet_v2-coralquant-dequant-tv.pth")
NEW, OLD = Preprocess(size=32), Preprocess(size=32, decoder="pil")


def poster(w: int = 48, h: int = 72) -> Image.Image:
    """A smooth, asymmetric picture (JPEG keeps it well, and a rotation changes it)."""
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // w, y * 255 // h, ((x + 2 * y) % 64) * 4], -1).astype(np.uint8)
    rgb[: h // 4, : w // 3] = (250, 250, 20)  # a yellow block top-left
    return Image.fromarray(rgb)


def reason(pre: Preprocess, path) -> str:
    with pytest.raises(UnreadableImageError) as e:
        pre.load(str(path))
    return str(e.value)


def test_every_bad_input_gets_the_same_reason_as_the_pil_path(tmp_path, monkeypatch):
    ok = tmp_path / "ok.jpg"
    poster().save(ok, quality=90)
    good = ok.read_bytes()
    bad = {
        "missing.jpg": None,
        "empty.jpg": b"",
        "text.jpg": b"this is not an image",
        "trunc.jpg": good[: len(good) // 2],
        "cut-before-frame.jpg": good[:40],
        "garbage-after-header.jpg": good[:2] + b"\xff\x20" + b"x" * 200,
        "trunc.png": None,
        "bomb.jpg": None,
        "bomb.png": None,
        "dir.jpg": None,
    }
    for name, data in bad.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
    buf = io.BytesIO()
    poster().save(buf, "PNG")
    (tmp_path / "trunc.png").write_bytes(buf.getvalue()[:200])
    Image.new("RGB", (120, 120), (9, 9, 9)).save(tmp_path / "bomb.jpg")
    Image.new("L", (120, 120)).save(tmp_path / "bomb.png")
    (tmp_path / "dir.jpg").mkdir()
    monkeypatch.setattr(images, "MAX_PIXELS", 10_000)
    got = {name: (reason(NEW, tmp_path / name), reason(OLD, tmp_path / name)) for name in bad}
    for name, (new, old) in got.items():
        assert new == old, name
    assert got["missing.jpg"][0] == "missing file"
    assert got["empty.jpg"][0].startswith("empty file")
    assert got["text.jpg"][0].startswith("not an image")
    assert got["trunc.jpg"][0].startswith("truncated")
    assert got["bomb.jpg"][0].startswith("decompression bomb")
    assert got["bomb.png"][0].startswith("decompression bomb")
    assert reason(NEW, "https://example.org/a.jpg").startswith("not downloaded")


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK", "P", "RGBA", "LA", "I;16"])
def test_every_mode_reads_as_the_pil_reader_reads_it(tmp_path, mode):
    img = poster().convert(mode) if mode != "I;16" else Image.fromarray(np.arange(48 * 72, dtype=np.uint16).reshape(72, 48) * 9)
    if mode in ("RGBA", "LA"):
        img.putalpha(Image.linear_gradient("L").resize(img.size))
    path = tmp_path / (f"{mode.replace(';', '')}.jpg" if mode in ("RGB", "L", "CMYK") else f"{mode.replace(';', '')}.png")
    img.save(path)
    new = read_rgb(str(path))
    assert new.dtype == torch.uint8 and new.shape == (3, 72, 48)
    assert torch.equal(new, pil_to_uint8(images.load_image(str(path))))


def test_jpeg_header_reads_the_frame_size_like_pil(tmp_path):
    for i, (w, h, kw) in enumerate([(48, 72, {}), (301, 17, {"progressive": True}), (64, 64, {"exif": Image.Exif()})]):
        img = poster(w, h)
        buf = io.BytesIO()
        img.save(buf, "JPEG", **kw)
        assert jpeg_header(buf.getvalue()) == (w, h, 3)
        buf = io.BytesIO()
        img.convert("L").save(buf, "JPEG")
        assert jpeg_header(buf.getvalue()) == (w, h, 1)
    assert jpeg_header(b"\xff\xd8\xff\xda\x00\x02") is None
    assert jpeg_header(b"\xff\xd8") is None


def test_exif_rotated_jpeg_gives_the_upright_embedding(tmp_path):
    upright = poster()
    upright.save(tmp_path / "upright.jpg", quality=95)
    for orientation, stored in ((6, upright.transpose(Image.Transpose.ROTATE_90)),
                                (8, upright.transpose(Image.Transpose.ROTATE_270)),
                                (3, upright.transpose(Image.Transpose.ROTATE_180))):
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = tmp_path / f"exif{orientation}.jpg"
        stored.save(path, quality=95, exif=exif)
        # The oracle: PIL's own reading of the orientation tag gives back the upright poster.
        assert ImageOps.exif_transpose(Image.open(path)).size == upright.size
        x, ref = read_rgb(str(path)), read_rgb(str(tmp_path / "upright.jpg"))
        assert x.shape == ref.shape
        assert (x.float() - ref.float()).abs().mean() < 3  # JPEG noise only
    enc = create_encoder("test-tiny-cnn", precision="fp32")
    paths = [str(tmp_path / n) for n in ("upright.jpg", "exif6.jpg", "exif8.jpg", "exif3.jpg")]
    X = enc.encode_images(torch.stack([enc.read_image(p) for p in paths]))
    no_exif = enc.encode_images(enc.preprocess.resize_uint8(pil_to_uint8(Image.open(paths[1]).convert("RGB")))[None])
    cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    for k in (1, 2, 3):
        assert cos(X[0], X[k]) > 0.999
    assert cos(X[0], no_exif[0]) < cos(X[0], X[1])


def test_uint8_batch_normalised_in_one_step_equals_the_per_image_float_path(tmp_path):
    img = poster()
    enc = create_encoder("test-tiny-cnn", precision="fp32")
    u8 = torch.stack([OLD._pil_uint8(OLD.resize_image(img))] * 3)
    per_image = torch.stack([OLD(img)] * 3)  # the PIL path's float tensors
    assert torch.equal(OLD.normalise(u8), per_image)
    np.testing.assert_array_equal(enc.encode_images(u8), enc.encode_images(per_image))


@pytest.mark.parametrize("resize", ["squash", "center-crop", "letterbox"])
def test_uint8_resize_modes_match_the_pil_ones(resize):
    img = poster(120, 180)
    new = Preprocess(size=64, resize=resize).resize_uint8(pil_to_uint8(img))
    old = Preprocess._pil_uint8(Preprocess(size=64, resize=resize, decoder="pil").resize_image(img))
    assert new.shape == old.shape == (3, 64, 64)
    assert (new.float() - old.float()).abs().mean() < 2.0


def test_a_pil_store_is_never_extended_by_the_new_path(tmp_path):
    d = tmp_path / "img"
    d.mkdir()
    rows = []
    for i in range(6):
        poster(40 + i, 60).save(d / f"{i}.jpg")
        rows.append({"id": str(i), "genres": "Drama", "image": f"img/{i}.jpg"})
    manifest = write_manifest(tmp_path / "m.csv", rows)
    base = {"backbone": "test-tiny-cnn", "data": str(manifest), "out": str(tmp_path / "s.h5"), "workers": 0, "precision": "fp32"}
    r = extract(ExtractConfig(**base, decoder="pil", limit=3))
    store = FeatureStore(r.store)
    assert "decoder" not in store.header.preprocessing  # what the PIL path always recorded
    with pytest.raises(StoreMismatchError, match="preprocessing.decoder"):
        extract(ExtractConfig(**base))
    assert extract(ExtractConfig(**base, decoder="pil")).rows == 6
    assert encoder_from_header(FeatureStore(r.store).header).preprocess.decoder == "pil"
    new = extract(ExtractConfig(**{**base, "out": str(tmp_path / "t.h5")}))
    pre = FeatureStore(new.store).header.preprocessing
    assert pre["decoder"] == "torchvision" and pre["resize_antialias"] is True
    assert encoder_from_header(FeatureStore(new.store).header).preprocess.decoder == "torchvision"


def test_store_info_shows_the_decoder(tmp_path):
    from typer.testing import CliRunner

    from genrekit_cli.main import app

    d = tmp_path / "img"
    d.mkdir()
    poster().save(d / "a.jpg")
    manifest = write_manifest(tmp_path / "m.csv", [{"id": "a", "genres": "Drama", "image": "img/a.jpg"}])
    for decoder, shown in (("pil", "decoder=pil (the older path"), ("torchvision", "decoder=torchvision")):
        out = tmp_path / f"{decoder}.h5"
        extract(ExtractConfig(backbone="test-tiny-cnn", data=str(manifest), out=str(out), decoder=decoder, workers=0))
        res = CliRunner().invoke(app, ["store", "info", str(out)], env={"COLUMNS": "300"})
        assert res.exit_code == 0 and shown in res.output


@pytest.mark.skipif(not (POSTERS.is_dir() and WEIGHTS.is_file()), reason="shared posters / weights absent")
def test_real_posters_embed_as_with_the_pil_path():
    paths = sorted((POSTERS).rglob("*.jpg"))[:12]
    new = create_encoder("mobilenet_v2", str(WEIGHTS), precision="fp32")
    old = create_encoder("mobilenet_v2", str(WEIGHTS), precision="fp32", decoder="pil")
    a = new.encode_images(torch.stack([new.read_image(str(p)) for p in paths]))
    b = old.encode_images(torch.stack([old.read_image(str(p)) for p in paths]))
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.95 and cos.mean() > 0.98, cos


@pytest.mark.gpu
def test_gpu_uint8_batch_and_nvjpeg_decode(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from genrekit.backbones.decode import decode_jpeg_bytes

    path = tmp_path / "a.jpg"
    poster().save(path, quality=95)
    on_gpu = decode_jpeg_bytes(path.read_bytes(), device="cuda")
    assert on_gpu.is_cuda and (on_gpu.cpu().float() - read_rgb(str(path)).float()).abs().mean() < 2
    cpu, gpu = create_encoder("test-tiny-cnn", precision="fp32"), create_encoder("test-tiny-cnn", device="cuda", precision="fp32")
    x = torch.stack([cpu.read_image(str(path))] * 4).pin_memory()
    np.testing.assert_allclose(gpu.encode_images(x), cpu.encode_images(x), rtol=1e-3, atol=1e-4)


def test_device_decode_batches_match_the_cpu_path_and_keep_the_reasons(tmp_path):
    """The nvJPEG batch logic, run with device="cpu" (libjpeg-turbo's batched call): same pixels,
    the PIL fallback for other formats, the same reasons for bad files."""
    from genrekit.extraction.core import _device_decoded, _ImageFiles, _JpegBytes

    poster().save(tmp_path / "a.jpg")
    poster(60, 40).convert("CMYK").save(tmp_path / "cmyk.jpg")
    poster().save(tmp_path / "b.png")
    (tmp_path / "trunc.jpg").write_bytes((tmp_path / "a.jpg").read_bytes()[:300])
    (tmp_path / "text.jpg").write_text("no")
    paths = [str(tmp_path / n) for n in ("a.jpg", "cmyk.jpg", "b.png", "trunc.jpg", "text.jpg", "missing.jpg")] + [None]
    ds = _JpegBytes(paths, NEW)
    items = [ds[i] for i in range(len(paths))]
    assert isinstance(items[0][1], bytes) and isinstance(items[3][1], bytes)  # truncated: refused at decode
    assert isinstance(items[1][1], torch.Tensor) and isinstance(items[2][1], torch.Tensor)
    ok, batch, bad = _device_decoded(items, NEW, paths, torch.device("cpu"))
    ref = [_ImageFiles(paths, NEW)[i] for i in range(len(paths))]
    assert ok == [0, 1, 2] and torch.equal(batch, torch.stack([ref[i][1] for i in ok]))
    assert bad == [(i, ref[i][2]) for i in (3, 4, 5, 6)]
    assert bad[0][1].startswith("truncated")


def test_nvjpeg_needs_a_gpu(tmp_path):
    from genrekit.errors import ConfigError

    poster().save(tmp_path / "a.jpg")
    manifest = write_manifest(tmp_path / "m.csv", [{"id": "a", "genres": "Drama", "image": "a.jpg"}])
    with pytest.raises(ConfigError, match="CUDA"):
        extract(ExtractConfig(backbone="test-tiny-cnn", data=str(manifest), out=str(tmp_path / "s.h5"), decoder="nvjpeg", device="cpu"))
    assert not (tmp_path / "s.h5").exists() and not (tmp_path / "s.h5.parts").exists()


@pytest.mark.gpu
def test_gpu_extract_with_nvjpeg_is_close_to_the_cpu_store(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    rows = []
    for i in range(10):
        poster(40 + i, 60).save(tmp_path / f"{i}.jpg", quality=95)
        rows.append({"id": str(i), "genres": "Drama", "image": f"{i}.jpg"})
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff")
    rows.append({"id": "bad", "genres": "Drama", "image": "bad.jpg"})
    manifest = write_manifest(tmp_path / "m.csv", rows)
    base = {"backbone": "test-tiny-cnn", "data": str(manifest), "precision": "fp32", "batch_size": 4}
    gpu = extract(ExtractConfig(**base, out=str(tmp_path / "g.h5"), device="cuda", decoder="nvjpeg"))
    cpu = extract(ExtractConfig(**base, out=str(tmp_path / "c.h5"), device="cpu"))
    assert dict(gpu.failures) == dict(cpu.failures) and len(gpu.failures) == 1
    a, b = FeatureStore(gpu.store).load(), FeatureStore(cpu.store).load()
    assert list(a.ids) == list(b.ids)
    cos = (a.X * b.X).sum(1) / np.linalg.norm(a.X, axis=1) / np.linalg.norm(b.X, axis=1)
    assert cos.min() > 0.99


def test_decode_thread_gives_the_same_store(tmp_path):
    rows = []
    for i in range(11):
        poster(40 + i, 60).save(tmp_path / f"{i}.jpg")
        rows.append({"id": str(i), "genres": "Drama", "image": f"{i}.jpg"})
    rows.append({"id": "missing", "genres": "Drama", "image": "missing.jpg"})
    manifest = write_manifest(tmp_path / "m.csv", rows)
    base = {"backbone": "test-tiny-cnn", "data": str(manifest), "precision": "fp32", "batch_size": 4, "workers": 0}
    a = extract(ExtractConfig(**base, out=str(tmp_path / "a.h5")))
    b = extract(ExtractConfig(**base, out=str(tmp_path / "b.h5"), decode_thread=True))
    assert a.failures == b.failures == [("missing", "missing file")]
    fa, fb = FeatureStore(a.store).load(), FeatureStore(b.store).load()
    assert list(fa.ids) == list(fb.ids) and np.array_equal(fa.X, fb.X)


def _posters(tmp_path, n: int, missing: bool = True):
    rows = []
    for i in range(n):
        poster(40 + i % 20, 60).save(tmp_path / f"{i}.jpg")
        rows.append({"id": str(i), "genres": "Drama", "image": f"{i}.jpg"})
    if missing:
        rows.insert(3, {"id": "missing", "genres": "Drama", "image": "missing.jpg"})
    return write_manifest(tmp_path / "m.csv", rows)


@pytest.mark.parametrize("streams", [2, 3])
def test_streams_give_the_same_store_in_the_manifests_order(tmp_path, monkeypatch, streams):
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from genrekit.extraction import core

    manifest = _posters(tmp_path, 13)
    base = {"backbone": "test-tiny-cnn", "data": str(manifest), "precision": "fp32", "batch_size": 2, "device": "cpu"}
    a = extract(ExtractConfig(**base, out=str(tmp_path / "a.h5")))
    load, decoded_in = core._ImageFiles.__getitem__, set()

    def first_batch_last(self, i):
        decoded_in.add(threading.current_thread().name.rsplit("_", 1)[0])
        if i == 0:
            time.sleep(0.3)
        return load(self, i)

    monkeypatch.setattr(core._ImageFiles, "__getitem__", first_batch_last)
    threads = torch.get_num_threads()
    b = extract(ExtractConfig(**base, out=str(tmp_path / "b.h5"), streams=streams, threads=streams))
    assert decoded_in == {"genrekit-stream"}
    with ThreadPoolExecutor(1) as pool:  # what a new thread starts with is the caller's count again
        assert pool.submit(torch.get_num_threads).result() == torch.get_num_threads() == threads
    assert a.failures == b.failures == [("missing", "missing file")] and b.encoded == 13
    fa, fb = FeatureStore(a.store).load(), FeatureStore(b.store).load()
    assert list(fa.ids) == list(fb.ids) == [str(i) for i in range(13)]
    np.testing.assert_allclose(fb.X, fa.X, rtol=1e-5, atol=1e-6)


def test_a_failing_stream_stops_the_others_and_writes_no_store(tmp_path, monkeypatch):
    from genrekit.extraction import core

    manifest = _posters(tmp_path, 40, missing=False)
    load, seen = core._ImageFiles.__getitem__, []

    def failing(self, i):
        seen.append(i)
        if i == 4:
            raise RuntimeError("disk gone")
        return load(self, i)

    monkeypatch.setattr(core._ImageFiles, "__getitem__", failing)
    with pytest.raises(RuntimeError, match="disk gone"):
        extract(ExtractConfig(backbone="test-tiny-cnn", data=str(manifest), out=str(tmp_path / "s.h5"), device="cpu",
                              batch_size=2, streams=2, threads=2))
    assert len(seen) <= 10 and not (tmp_path / "s.h5").exists()


def test_streams_decode_themselves_and_are_never_more_than_the_threads(tmp_path, monkeypatch, caplog):
    from genrekit.extraction import core

    monkeypatch.setattr(core, "cpu_count", lambda: 4)
    plan = lambda **kw: core._workers_and_threads(ExtractConfig(backbone="b", data="m.csv", out="s.h5", **kw), False)  # noqa: E731
    assert plan() == (1, 3)  # (decode processes, torch threads): a decode process of its own, as before
    assert plan(streams=2) == (0, 4)  # the streams decode
    split = []
    monkeypatch.setattr(core, "_encode_in_streams", lambda todo, enc, bs, threads, *a: split.append((bs, threads)))
    monkeypatch.setattr(core, "finish", lambda *a: None)
    manifest = _posters(tmp_path, 4, missing=False)
    for kw in ({"streams": 2, "threads": 3}, {"streams": 3, "threads": 2}):
        extract(ExtractConfig(backbone="test-tiny-cnn", data=str(manifest), out=str(tmp_path / "s.h5"), device="cpu", **kw))
    assert split == [(16, [2, 1]), (16, [1, 1])]  # every thread used; test-tiny-cnn's CPU batch of 32 shared
    assert "--streams 3: 2 torch threads make 2 streams of one thread" in caplog.text


def test_streams_default_to_the_backbones_where_no_decode_process_runs(monkeypatch):
    from types import SimpleNamespace

    from genrekit.backbones.registry import get_spec
    from genrekit.errors import ConfigError
    from genrekit.extraction import core

    assert get_spec("mobilenet_v2").cpu_streams == 2 and get_spec("test-tiny-cnn").cpu_streams == 1
    encoder = SimpleNamespace(spec=SimpleNamespace(cpu_streams=2))

    def streams(cores, on_gpu=False, **kw):
        monkeypatch.setattr(core, "cpu_count", lambda: cores)
        config = ExtractConfig(backbone="b", data="m.csv", out="s.h5", **kw)
        return core._streams(config, encoder, on_gpu, *core._workers_and_threads(config, on_gpu))

    assert streams(2) == 2  # 2 cores, no decode process: the backbone's
    assert streams(1) == 1  # one thread, one stream
    assert streams(4) == 1  # a decode process of its own feeds one stream
    assert streams(2, on_gpu=True) == streams(2, modality="text") == streams(2, decode_thread=True) == 1
    assert streams(2, workers=1) == streams(2, streams=1) == 1
    assert streams(4, streams=2) == 2  # asked for: no decode process then
    with pytest.raises(ConfigError, match="--streams 2 applies to CPU extraction; this run encodes on cuda:0"):
        core._streams(ExtractConfig(backbone="b", data="m.csv", out="s.h5", streams=2),
                      SimpleNamespace(device="cuda:0"), True, 0, 2)  # --device auto found a GPU


@pytest.mark.parametrize("extra, flag", [({"modality": "text"}, "--modality text"), ({"workers": 1}, "--workers"),
                                         ({"decode_thread": True}, "--decode-thread"), ({"engine": "ray"}, "--engine ray"),
                                         ({"device": "cuda"}, "--device cuda")])
def test_streams_refuse_what_they_cannot_combine_with(extra, flag):
    from genrekit.errors import ConfigError

    with pytest.raises(ConfigError, match=f"leave out {flag}, or --streams"):
        ExtractConfig(backbone="b", data="m.csv", out="s.h5", streams=2, **extra).validate()
    with pytest.raises(ConfigError, match="--streams must be at least 1"):
        ExtractConfig(backbone="b", data="m.csv", out="s.h5", streams=0).validate()


def test_layers_are_refused_for_text_stores():
    from genrekit.errors import ConfigError

    with pytest.raises(ConfigError, match="--layers applies to image backbones"):
        ExtractConfig(backbone="b", data="m.csv", out="s.h5", modality="text", layers="all").validate()
