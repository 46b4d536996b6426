"""Hostile and careless input to the data layer: FIFOs, devices, symlink loops and planted links,
NUL bytes, absurd years, header-only manifests, EXIF-rotated photos.

Every case that could hang on unhardened code runs in a daemon thread with a short join, so a
regression fails the test instead of stalling the suite.
"""

from __future__ import annotations

import io
import os
import threading

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from data_fixtures import jpeg_bytes, write_csv, write_image
from genrekit.data.clean import BAD_IMAGE, CleanReport, Removal, clean_manifest
from genrekit.data.demo import make_demo
from genrekit.data.images import load_image
from genrekit.data.inspection import check_image, inspect_manifest
from genrekit.data.manifest import read_manifest, write_manifest
from genrekit.data.split import read_split_file, write_split_file
from genrekit.errors import ManifestError, UnreadableImageError

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
needs_dev_zero = pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")


def _within(seconds: float, fn, *args):
    """Run ``fn(*args)`` in a daemon thread; fail if it has not returned (or raised) in time."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn(*args)
        except BaseException as e:  # handed back to the test below
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn.__name__} did not return within {seconds} s (a hang)"
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.fixture()
def fifo(tmp_path):
    path = tmp_path / "poster.jpg"
    os.mkfifo(path)
    return path


# -- images that are not regular files ---------------------------------------------------------

@needs_fifo
def test_a_fifo_as_an_image_is_a_reason_not_a_hang(fifo):
    assert _within(5, check_image, str(fifo)).reason == "not a regular file (a FIFO)"
    assert _within(5, check_image, str(fifo), True).reason == "not a regular file (a FIFO)"
    with pytest.raises(UnreadableImageError, match="FIFO"):
        _within(5, load_image, str(fifo))


@needs_dev_zero
def test_dev_zero_as_an_image_is_a_reason_not_an_out_of_memory():
    assert _within(5, check_image, "/dev/zero").reason == "not a regular file (a character device)"
    with pytest.raises(UnreadableImageError, match="character device"):
        _within(5, load_image, "/dev/zero")


@needs_fifo
@needs_dev_zero
def test_fifo_and_device_rows_are_per_row_failures(tmp_path, fifo):
    write_image(tmp_path / "ok.jpg")
    m = read_manifest(write_csv(tmp_path, f"id,genres,image\nok,Drama,ok.jpg\nf,Drama,{fifo}\nz,Drama,/dev/zero\n"))
    report = _within(10, inspect_manifest, m)
    assert report.image_problems == {"f": "not a regular file (a FIFO)", "z": "not a regular file (a character device)"}
    cleaned, rep = _within(10, clean_manifest, m)
    assert cleaned.ids == ["ok"] and {r.id for r in rep.removed if r.reason == BAD_IMAGE} == {"f", "z"}


# -- manifests that are not regular files ------------------------------------------------------

@needs_fifo
def test_a_fifo_as_the_manifest_is_a_one_line_refusal(tmp_path):
    path = tmp_path / "labels.csv"
    os.mkfifo(path)
    for fmt in ("auto", "csv", "kaggle", "anime"):
        with pytest.raises(ManifestError, match="FIFO") as e:
            _within(5, read_manifest, path, fmt)
        assert "\n" not in str(e.value)


@needs_dev_zero
def test_dev_zero_as_the_manifest_is_a_one_line_refusal():
    with pytest.raises(ManifestError, match="character device"):
        _within(5, read_manifest, "/dev/zero")
    with pytest.raises(ManifestError, match="character device"):
        _within(5, read_manifest, "/dev/zero", "csv")


@needs_fifo
def test_cli_refuses_a_fifo_manifest_in_one_line(tmp_path):
    from genrekit_cli.main import app

    path = tmp_path / "labels.csv"
    os.mkfifo(path)
    res = _within(20, CliRunner().invoke, app, ["data", "inspect", str(path)])
    assert res.exit_code != 0 and "FIFO" in res.output and "Traceback" not in res.output


@needs_fifo
def test_a_fifo_json_in_an_mmimdb_folder_is_skipped(tmp_path):
    from data_fixtures import write_mmimdb

    root = write_mmimdb(tmp_path)
    os.mkfifo(root / "dataset" / "0000009.json")
    m = _within(5, read_manifest, root)
    assert sorted(m.ids) == ["0000001", "0000002", "0000003"]


# -- one bad path is one bad row ---------------------------------------------------------------

def test_a_symlink_loop_is_a_per_row_failure(tmp_path):
    os.symlink(tmp_path / "loop_b", tmp_path / "loop_a")
    os.symlink(tmp_path / "loop_a", tmp_path / "loop_b")
    write_image(tmp_path / "ok.jpg")
    m = read_manifest(write_csv(tmp_path, "id,genres,image\nok,Drama,ok.jpg\nbad,Comedy,loop_a\n"))
    assert m.ids == ["ok", "bad"]
    cleaned, report = clean_manifest(m)
    assert cleaned.ids == ["ok"]
    (removal,) = report.removed
    assert removal.id == "bad" and removal.reason == BAD_IMAGE and "symbolic links" in removal.detail


# -- values the store cannot hold --------------------------------------------------------------

@pytest.mark.parametrize(
    "row, column",
    [
        ('a\x00b,Drama,x.jpg,T,1999', "id"),
        ('b,Dra\x00ma,x.jpg,T,1999', "genres"),
        ('c,Drama,x\x00.jpg,T,1999', "image"),
        ('d,Drama,x.jpg,T\x00itle,1999', "title"),
    ],
)
def test_nul_bytes_are_refused_with_the_row(tmp_path, row, column):
    path = write_csv(tmp_path, f"id,genres,image,title,year\nok,Drama,x.jpg,Fine,2001\n{row}\n")
    with pytest.raises(ManifestError, match=f"row 3, column '{column}': contains a NUL byte"):
        read_manifest(path)


@pytest.mark.parametrize("year", ["1e300", "inf", "-inf", "99999", "-5", "nan"])
def test_absurd_years_are_refused_with_the_row(tmp_path, year):
    path = write_csv(tmp_path, f"id,genres,image,year\nok,Drama,x.jpg,2001\nbad,Drama,x.jpg,{year}\n")
    with pytest.raises(ManifestError, match="row 3, column 'year'") as e:
        read_manifest(path)
    assert "\n" not in str(e.value)


def test_absurd_year_in_an_mmimdb_json_is_refused(tmp_path):
    import json

    from data_fixtures import write_mmimdb

    root = write_mmimdb(tmp_path)
    (root / "dataset" / "0000002.json").write_text(json.dumps({"title": "B", "year": 1e308, "genres": ["Drama"]}))
    with pytest.raises(ManifestError, match="0000002.json:year"):
        read_manifest(root)


def test_a_header_only_manifest_does_not_make_an_empty_store(tmp_path):
    from genrekit.extraction.core import ExtractConfig, extract

    path = write_csv(tmp_path, "id,genres,image\n")
    out = tmp_path / "s.h5"
    with pytest.raises(ManifestError, match="no rows"):
        extract(ExtractConfig(backbone="test-tiny-cnn", data=str(path), out=str(out), workers=0))
    assert not out.exists()


# -- writers never write through a planted link ------------------------------------------------

def _plant(path, victim):
    victim.write_text("precious")
    path.unlink(missing_ok=True)
    os.symlink(victim, path)


def test_manifest_split_clean_and_demo_writers_ignore_planted_links(tmp_path):
    victim = tmp_path / "victim.txt"
    m = read_manifest(write_csv(tmp_path, "id,genres,plot\na,Drama,x\nb,Comedy,y\n", "in.csv"))
    out = tmp_path / "out"
    out.mkdir()
    # The temporary names the hand-rolled writers used, and the targets themselves.
    for name in (".m.csv.tmp", ".s.csv.tmp", "removed.csv", "data/.labels.csv.tmp", "data/images/demo-00000.jpg"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        _plant(out / name, victim)
        write_manifest(m, out / "m.csv")
        write_split_file(out / "s.csv", m.ids, ["train", "test"])
        CleanReport(2, 1, [Removal("a", "no genres")]).write_csv(out / "removed.csv")
        make_demo(out / "data", n=2, seed=0)
        assert victim.read_text() == "precious", name
        (out / name).unlink(missing_ok=True)
        victim.unlink()
    assert read_manifest(out / "m.csv").ids == ["a", "b"]
    assert read_split_file(out / "s.csv") == {"a": "train", "b": "test"}
    assert not (out / "removed.csv").is_symlink()


def test_clean_and_split_refuse_to_overwrite_their_manifest(tmp_path):
    from genrekit_cli.main import app

    path = write_csv(tmp_path, "id,genres,plot\na,Drama,x\nb,Comedy,y\n")
    before = path.read_bytes()
    for args in (["data", "clean", str(path), "--out", str(path)], ["data", "split", str(path), "--out", str(path)],
                 ["data", "clean", str(path), "--out", str(tmp_path / "c.csv"), "--removed", str(path)]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code != 0 and "would overwrite the manifest" in res.output, res.output
        assert path.read_bytes() == before


# -- EXIF orientation --------------------------------------------------------------------------

def _poster() -> Image.Image:
    """An asymmetric picture: what a sideways copy of it looks like is clearly different."""
    rng = np.random.default_rng(0)
    a = np.zeros((96, 64, 3), np.uint8)
    a[:40, :, 0] = 230  # a red band at the top
    a[:, :16, 2] = 200  # a blue strip on the left
    a[60:, 30:, 1] = 180
    a = np.clip(a.astype(int) + rng.integers(0, 20, a.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(a)


def _jpeg(img: Image.Image, path, exif=None):
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, **({"exif": exif} if exif is not None else {}))
    path.write_bytes(buf.getvalue())
    return path


@pytest.mark.parametrize("orientation, stored", [(6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270),
                                                 (3, Image.Transpose.ROTATE_180)])
def test_exif_rotated_photo_gives_the_upright_embedding(tmp_path, orientation, stored):
    import torch

    from genrekit.backbones import create_encoder

    upright = _poster()
    exif = Image.Exif()
    exif[0x0112] = orientation  # how a phone marks pixels stored turned away from upright
    a = _jpeg(upright, tmp_path / "upright.jpg")
    b = _jpeg(upright.transpose(stored), tmp_path / "phone.jpg", exif)
    assert load_image(str(b)).size == upright.size
    enc = create_encoder("test-tiny-cnn")
    e = enc.encode_images(torch.stack([enc.load_image(str(a)), enc.load_image(str(b))]))
    cos = float(e[0] @ e[1] / np.linalg.norm(e[0]) / np.linalg.norm(e[1]))
    assert cos > 0.999, cos


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_a_broken_exif_block_does_not_lose_the_image(tmp_path):
    path = tmp_path / "p.jpg"
    path.write_bytes(jpeg_bytes())
    raw = bytearray(path.read_bytes())
    # An APP1 "Exif" segment of junk right after SOI.
    junk = b"Exif\x00\x00" + b"MM\x00\x2a\x00\x00\x00\x08\xff\xff" + b"\x00" * 8
    raw[2:2] = b"\xff\xe1" + (len(junk) + 2).to_bytes(2, "big") + junk
    path.write_bytes(bytes(raw))
    assert load_image(str(path)).size == (20, 30)


def test_a_huge_cell_or_a_line_break_in_a_column_name_is_one_line(tmp_path):
    path = write_csv(tmp_path, "id,genres,plot\n1,Drama,short\n2,Drama," + "x" * 200_000 + "\n")
    with pytest.raises(ManifestError, match="line 3: field larger than field limit"):
        read_manifest(path)
    path = write_csv(tmp_path, '"i\nd",genres,plot\n1,A,b\n', "h.csv")
    with pytest.raises(ManifestError) as e:
        read_manifest(path)
    assert "\n" not in str(e.value) and "found: 'i\\nd', genres, plot" in str(e.value)


def test_kaggle_titles_with_an_implausible_year_keep_it_in_the_title(tmp_path):
    path = write_csv(tmp_path, "imdbId,Title,Genre,Poster\n1,Movie (0001),Drama,\n2,Old (1999),Drama,\n", "MovieGenre.csv")
    m = read_manifest(path, "kaggle")
    assert [(s.title, s.year) for s in m.samples] == [("Movie (0001)", None), ("Old", 1999)]
