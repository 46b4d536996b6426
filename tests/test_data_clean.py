"""Inspection, cleaning and the genre vocabulary."""

from __future__ import annotations

import csv
import io
import re

import numpy as np
import pytest
from PIL import Image

from data_fixtures import SHARED_DATA, write_csv, write_image
from genrekit.data.clean import CleanConfig, clean_manifest
from genrekit.data.inspection import check_image, inspect_manifest
from genrekit.data.manifest import read_manifest
from genrekit.data.vocab import VocabConfig, apply_vocabulary
from genrekit.errors import ConfigError, UnknownNameError


def _messy(tmp_path):
    """Every kind of problem once: the expected removal reason is in the id."""
    img = tmp_path / "img"
    write_image(img / "ok.jpg", (10, 200, 10))
    write_image(img / "ok2.jpg", (200, 10, 10))
    (img / "same.jpg").write_bytes((img / "ok.jpg").read_bytes())
    noisy = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8)).save(noisy, "JPEG")
    (img / "trunc.jpg").write_bytes(noisy.getvalue()[: len(noisy.getvalue()) // 2])
    (img / "text.jpg").write_text("<html>not an image</html>")
    (img / "empty.jpg").write_bytes(b"")
    write_image(img / "dup_title.jpg", (90, 90, 90))
    rows = [
        "id,title,year,genres,image",
        "ok,Alpha,1999,Drama|Comedy,img/ok.jpg",
        "ok2,Beta,2001,Horror,img/ok2.jpg",
        "ok,Alpha again,1999,Drama,img/ok.jpg",
        "nogenre,Gamma,2000,,img/ok2.jpg",
        "noimage,Delta,2000,Drama,",
        "missing,Eps,2000,Drama,img/missing.jpg",
        "notimage,Zeta,2000,Drama,img/text.jpg",
        "empty,Eta,2000,Drama,img/empty.jpg",
        "dup_title,  alpha ,1999,Drama,img/dup_title.jpg",
        "same_image,Theta,2002,Comedy,img/same.jpg",
        "trunc,Iota,2003,Comedy,img/trunc.jpg",
        "url,Kappa,2003,Comedy,https://example.org/k.jpg",
    ]
    return read_manifest(write_csv(tmp_path, "\n".join(rows) + "\n"))


def test_clean_removes_each_problem_with_its_reason_and_writes_it(tmp_path):
    m = _messy(tmp_path)
    clean, report = clean_manifest(m, CleanConfig(deep=True))
    assert clean.ids == ["ok", "ok2"]
    reasons = {(r.id, r.reason) for r in report.removed}
    assert reasons == {
        ("ok", "duplicate id"),
        ("nogenre", "no genres"),
        ("noimage", "no image"),
        ("url", "no image"),
        ("missing", "unreadable image"),
        ("notimage", "unreadable image"),
        ("empty", "unreadable image"),
        ("trunc", "unreadable image"),
        ("dup_title", "same title and year"),
        ("same_image", "identical image"),
    }
    assert report.rows_in == 12 and report.rows_out == 2 and sum(report.counts.values()) == 10
    detail = {r.id: r.detail for r in report.removed}
    assert detail["missing"] == "missing file" and "truncated" in detail["trunc"] and detail["same_image"] == "same bytes as ok"
    rows = list(csv.DictReader(open(report.write_csv(tmp_path / "removed.csv"), encoding="utf-8")))
    assert len(rows) == 10 and {r["reason"] for r in rows} >= {"duplicate id", "identical image"}


def test_header_check_is_lenient_deep_check_is_not(tmp_path):
    m = _messy(tmp_path)
    _, fast = clean_manifest(m, CleanConfig(deep=False))
    assert "trunc" not in {r.id for r in fast.removed if r.reason == "unreadable image"}
    assert check_image(str(tmp_path / "img" / "trunc.jpg"), deep=True).reason.startswith("truncated")


def test_text_only_manifest_keeps_rows_without_images(tmp_path):
    m = read_manifest(write_csv(tmp_path, "id,genres,plot\n1,Drama,a\n2,,b\n"))
    clean, report = clean_manifest(m)
    assert clean.ids == ["1"] and report.counts == {"no genres": 1}


def test_inspect_reports_counts_pairs_years_problems(tmp_path):
    r = inspect_manifest(_messy(tmp_path), deep=True)
    assert r.rows == 11 and r.genre_counts["Drama"] == 6 and r.genre_counts["Comedy"] == 4
    assert r.labels_per_item == {0: 1, 1: 9, 2: 1}
    assert r.top_pairs == [("Comedy", "Drama", 1)]
    assert r.year_range == (1999, 2003) and r.without_year == 0
    assert r.duplicate_ids == ["ok"] and r.duplicate_title_year == [("ok", "dup_title")]
    assert ("ok", "same_image") in r.duplicate_images
    assert set(r.image_problems) == {"missing", "notimage", "empty", "trunc", "noimage"}
    assert r.image_urls == 1 and r.to_json()["top_pairs"][0]["count"] == 1


def test_inspect_matches_the_counts_in_movie_posters_source_md():
    folder = SHARED_DATA / "movie_posters"
    if not (folder / "labels.csv").is_file():
        pytest.skip("shared movie_posters data not present")
    table = dict(
        (g, int(c)) for g, c in re.findall(r"^\| ([\w-]+) \| (\d+) \|", (folder / "SOURCE.md").read_text(), re.M)
    )
    assert len(table) == 26
    r = inspect_manifest(read_manifest(folder / "labels.csv"))
    assert r.genre_counts == table
    assert r.rows == 6000 and r.labels_per_item == {1: 821, 2: 2008, 3: 3171}
    assert r.without_year == 91 and not r.image_problems and not r.duplicate_images


def test_vocabulary_synonyms_case_top_k_min_count_other(tmp_path):
    m = read_manifest(
        write_csv(
            tmp_path,
            "id,genres,plot\n1,Science Fiction|drama,x\n2,Sci-Fi|Drama,x\n3,Drama|Short,x\n4,Short,x\n5,Western,x\n",
        )
    )
    m2, rep = apply_vocabulary(m)
    assert rep.renamed == {"Science Fiction": "Sci-Fi", "drama": "Drama"}
    assert m2.samples[0].genres == ("Sci-Fi", "Drama") and rep.vocabulary[0] == "Drama"
    m3, rep = apply_vocabulary(m, VocabConfig(min_count=2))
    assert rep.vocabulary == ["Drama", "Sci-Fi", "Short"] and rep.dropped == {"Western": 1} and rep.emptied == ["5"]
    assert "5" not in m3.ids
    m4, rep = apply_vocabulary(m, VocabConfig(top_k=1, other=True))
    assert rep.vocabulary == ["Drama", "Other"] and rep.to_other == {"Sci-Fi": 2, "Short": 2, "Western": 1}
    assert [s.genres for s in m4.samples] == [("Drama", "Other"), ("Drama", "Other"), ("Drama", "Other"), ("Other",), ("Other",)]
    m5, rep = apply_vocabulary(m, VocabConfig(genres=("short", "western"), synonyms=(("Western", "Short"),)))
    assert rep.vocabulary == ["Short"] and [s.genres for s in m5.samples] == [("Short",)] * 3
    _, rep = apply_vocabulary(m, VocabConfig(builtin_synonyms=False))
    assert "Science Fiction" in rep.vocabulary


def test_vocabulary_bad_config(tmp_path):
    m = read_manifest(write_csv(tmp_path, "id,genres,plot\n1,Drama,x\n"))
    with pytest.raises(UnknownNameError, match="did you mean: Drama"):
        apply_vocabulary(m, VocabConfig(genres=("Dramma",)))
    with pytest.raises(ConfigError, match="top_k"):
        VocabConfig(top_k=0)
