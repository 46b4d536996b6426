"""Property-based tests of the manifest readers: whatever the ids, genres, titles and plots, a
manifest either round-trips exactly or is refused with one clear ManifestError; arbitrary bytes
never crash a reader."""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genrekit.data.manifest import YEARS, Manifest, Sample, read_manifest, write_manifest
from genrekit.errors import GenrekitError, ManifestError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text a CSV cell can hold: any character but surrogates (not encodable as UTF-8).
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
clean_text = text.map(lambda t: t.replace("\x00", ""))
ids = clean_text.map(str.strip).filter(bool)
genre = clean_text.map(str.strip).filter(lambda g: g and "|" not in g)
genres = st.lists(genre, min_size=1, max_size=4, unique=True).map(tuple)
years = st.none() | st.integers(*YEARS)
splits = st.sampled_from([None, "train", "val", "test"])


@st.composite
def samples(draw) -> list[Sample]:
    rows = draw(st.lists(st.tuples(ids, genres, clean_text, clean_text, years, splits), min_size=1, max_size=8,
                         unique_by=lambda r: r[0]))
    return [Sample(id=i, genres=g, plot=p.strip() or None, title=t.strip() or None, year=y, split=s)
            for i, g, t, p, y, s in rows]


def _tmp() -> Path:
    return Path(tempfile.mkdtemp(prefix="gk-hyp-"))


@SETTINGS
@given(samples())
def test_generic_csv_round_trips(ss):
    # A sample with a plot but no image: text-only rows are valid. The reader needs a plot somewhere.
    ss = [s if s.plot else Sample(s.id, s.genres, None, "p", s.title, s.year, s.split) for s in ss]
    if any(s.split for s in ss):
        ss = [s if s.split else Sample(s.id, s.genres, None, s.plot, s.title, s.year, "train") for s in ss]
    path = write_manifest(Manifest(ss), _tmp() / "labels.csv")
    back = read_manifest(path)
    assert back.format == "csv"
    assert back.samples == ss


@SETTINGS
@given(samples(), st.sampled_from(["id", "title", "plot", "genres"]), st.integers(0, 7))
def test_a_nul_byte_is_refused_with_its_row(ss, field, k):
    k = k % len(ss)
    s = ss[k]
    bad = {"id": dict(id=s.id + "\x00"), "title": dict(title="a\x00b"), "plot": dict(plot="x\x00"),
           "genres": dict(genres=("A\x00B",))}[field]
    ss[k] = Sample(**{**s.__dict__, "plot": s.plot or "p", **bad})
    ss = [x if x.plot else Sample(**{**x.__dict__, "plot": "p"}) for x in ss]
    ss = [Sample(**{**x.__dict__, "split": None}) for x in ss]
    path = write_manifest(Manifest(ss), _tmp() / "labels.csv")
    reader = csv.reader(io.StringIO(path.read_text(encoding="utf-8"), newline=""))
    starts, end = [], 0
    for _ in reader:
        starts.append(end + 1)
        end = reader.line_num
    with pytest.raises(ManifestError, match=f"row {starts[k + 1]}, column '{field}': contains a NUL byte"):
        read_manifest(path)


@SETTINGS
@given(st.lists(st.tuples(ids.filter(lambda i: i.strip() == i), genres,
                          clean_text.map(str.strip).filter(lambda t: "\n" not in t and "\r" not in t), years),
                min_size=1, max_size=8, unique_by=lambda r: r[0]))
def test_kaggle_round_trips(rows):
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["imdbId", "Imdb Link", "Title", "IMDB Score", "Genre", "Poster"])
    for i, g, t, y in rows:
        w.writerow([i, "", f"{t} ({y})" if y is not None else t, "5.0", "|".join(g), f"https://example.org/{len(i)}.jpg"])
    path = _tmp() / "MovieGenre.csv"
    path.write_text(buf.getvalue(), encoding="utf-8")
    m = read_manifest(path, "kaggle")
    assert [s.id for s in m.samples] == [r[0] for r in rows]
    assert [s.genres for s in m.samples] == [r[1] for r in rows]
    for s, (_, _, t, y) in zip(m.samples, rows):
        if y is not None:
            assert (s.title, s.year) == (t or None, y)
        else:
            assert s.title == (t or None)  # a title that itself ends in "(1999)" gives its year


@SETTINGS
@given(st.binary(max_size=600), st.sampled_from(["auto", "csv", "kaggle", "anime"]))
def test_arbitrary_bytes_never_crash_a_reader(data, fmt):
    path = _tmp() / "labels.csv"
    path.write_bytes(data)
    try:
        read_manifest(path, fmt)
    except GenrekitError as e:
        assert "\n" not in str(e)


header_sets = st.sampled_from([
    ["id", "genres", "image", "title", "year", "split"],
    ["imdbId", "Title", "Genre", "Poster"],
    ["anime_id", "Name", "Genres", "synopsis", "Aired"],
])


@SETTINGS
@given(header_sets, st.lists(st.lists(text, min_size=0, max_size=7), min_size=0, max_size=6))
def test_arbitrary_cells_are_read_or_refused_in_one_line(header, rows):
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    path = _tmp() / "labels.csv"
    path.write_text(buf.getvalue(), encoding="utf-8")
    try:
        m = read_manifest(path)
    except GenrekitError as e:
        assert "\n" not in str(e)
        return
    assert all(YEARS[0] <= s.year <= YEARS[1] for s in m.samples if s.year is not None)
