"""Reading manifests: every format, detection, and bad input named precisely."""

from __future__ import annotations

from pathlib import Path

import pytest

from genrekit.data.formats import detect_format
from genrekit.data.manifest import CsvColumns, read_manifest, write_manifest
from genrekit.errors import ConfigError, ManifestError, UnknownNameError
from data_fixtures import write_anime, write_csv, write_folder, write_image, write_kaggle, write_mmimdb


def test_kaggle_titles_years_urls_and_latin1(tmp_path):
    m = read_manifest(write_kaggle(tmp_path))
    assert m.format == "kaggle"
    toy = m.samples[0]
    assert (toy.id, toy.title, toy.year, toy.genres) == ("114709", "Toy Story", 1995, ("Animation", "Adventure", "Comedy"))
    assert toy.image == "https://example.org/1.jpg"
    assert m.samples[2].title == "Ich möchte kein Mann sein" and m.samples[2].image is None
    assert m.samples[3].title == "Waiting to Exhale, Part 1" and m.samples[3].genres == ()
    assert m.samples[4].year is None
    assert m.latin1_rows == [4] and "Latin-1" in m.warnings[0]


def test_mmimdb_json_plots_images_and_split(tmp_path):
    root = write_mmimdb(tmp_path)
    for path in (root, root / "dataset"):
        m = read_manifest(path)
        assert m.format == "mmimdb"
        by = {s.id: s for s in m.samples}
        assert by["0000001"].plot == "First plot." and by["0000001"].year == 1999
        assert by["0000001"].genres == ("Drama", "Romance")
        assert Path(by["0000002"].image).is_file()
        assert [by[i].split for i in sorted(by)] == ["train", "val", "test"]
        assert by["0000003"].year is None and by["0000003"].plot is None


def test_anime_list_strings_comma_lists_and_years(tmp_path):
    m = read_manifest(write_anime(tmp_path))
    assert m.format == "anime"
    assert [s.genres for s in m.samples] == [
        ("Action", "Sci-Fi", "Space"),
        ("Action", "Comedy", "Sci-Fi"),
        ("Drama", "Romance"),
    ]
    assert [s.year for s in m.samples] == [1998, 1998, None]
    assert m.samples[0].title == "Cowboy Bebop" and m.samples[0].plot == "Bounty hunters in space."


def test_folder_per_genre_merges_same_stem(tmp_path):
    m = read_manifest(write_folder(tmp_path))
    assert m.format == "folder"
    by = {s.id: s for s in m.samples}
    assert set(by) == {"p1", "p2", "p3"}
    assert set(by["p1"].genres) == {"Horror", "Thriller"}
    assert by["p3"].genres == ("Comedy",)


def test_generic_csv_separators_columns_and_roundtrip(tmp_path):
    write_image(tmp_path / "img" / "a.jpg")
    p = write_csv(tmp_path, "key,tags,pic,desc\na,Drama Comedy,img/a.jpg,x\nb,Horror,img/b.jpg,y\n")
    m = read_manifest(p, columns=CsvColumns(id="key", genres="tags", image="pic", plot="desc"))
    assert m.samples[0].genres == ("Drama", "Comedy")
    assert m.samples[0].image == str((tmp_path / "img" / "a.jpg").resolve())
    p2 = write_csv(tmp_path, "id,genres,plot\n1,\"Science Fiction, Drama\",x\n2,Drama,y\n", "comma.csv")
    assert read_manifest(p2).samples[0].genres == ("Science Fiction", "Drama")
    p3 = write_csv(tmp_path, "id,genres,plot\n1,Science Fiction|Drama,x\n2,Drama,y\n", "pipe.csv")
    assert read_manifest(p3).samples[0].genres == ("Science Fiction", "Drama")
    out = write_manifest(m, tmp_path / "copy" / "labels.csv")
    back = read_manifest(out)
    assert [(s.id, s.genres, s.image) for s in back.samples] == [(s.id, s.genres, s.image) for s in m.samples]


def test_image_paths_outside_the_folder_are_resolved(tmp_path):
    write_image(tmp_path / "elsewhere" / "x.jpg")
    p = write_csv(tmp_path / "sub", "id,genres,image\n1,Drama,../elsewhere/x.jpg\n")
    assert read_manifest(p).samples[0].image == str((tmp_path / "elsewhere" / "x.jpg").resolve())
    bad = write_csv(tmp_path, "id,genres,image\n1,Drama,a\x00b.jpg\n", "nul.csv")
    with pytest.raises(ManifestError, match="NUL"):
        read_manifest(bad)


def test_split_column_and_duplicate_ids_are_kept_aside(tmp_path):
    p = write_csv(tmp_path, "id,genres,plot,split\n1,Drama,x,train\n2,Drama,y,dev\n1,Comedy,z,test\n")
    m = read_manifest(p)
    assert [s.split for s in m.samples] == ["train", "val"]
    assert [(row, s.genres) for row, s in m.duplicates] == [(4, ("Comedy",))]
    bad = write_csv(tmp_path, "id,genres,plot,split\n1,Drama,x,holdout\n", "bad.csv")
    with pytest.raises(ManifestError, match="row 2, column 'split'"):
        read_manifest(bad)


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "is empty"),
        ("id,title,image\n1,a,b.jpg\n", r"lacks column\(s\) genres; found: id, title, image"),
        ("id,genres\n1,Drama\n", "lacks column.*image or plot"),
        ("id,genres,image\n1,,a.jpg\n2,,b.jpg\n", "genre column is empty in all 2 rows"),
        ("id,genres,image\n1,Drama,a.jpg,extra\n", "line 2: 4 fields, the header has 3"),
        ("id,genres,image,year\n1,Drama,a.jpg,soon\n", "row 2, column 'year'"),
        ("id,genres,image\n,Drama,a.jpg\n", "column 'id': empty"),
    ],
)
def test_bad_csv_is_refused_with_row_and_column(tmp_path, text, match):
    with pytest.raises(ManifestError, match=match):
        read_manifest(write_csv(tmp_path, text))


def test_bad_format_names_and_other_bad_paths(tmp_path):
    with pytest.raises(UnknownNameError, match="did you mean: kaggle"):
        read_manifest(write_kaggle(tmp_path), format="kagle")
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "nope.csv")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ManifestError, match="no images in sub-folders"):
        read_manifest(tmp_path / "empty_dir")
    with pytest.raises(ConfigError, match="generic csv format only"):
        read_manifest(write_kaggle(tmp_path), columns=CsvColumns(id="imdbId"))
    with pytest.raises(ManifestError, match="lacks an id"):
        read_manifest(write_csv(tmp_path, "Name,Genres,synopsis\na,Drama,x\n", "a.csv"), format="anime")


def test_detect_format(tmp_path):
    assert detect_format(write_kaggle(tmp_path)) == "kaggle"
    assert detect_format(write_anime(tmp_path)) == "anime"
    assert detect_format(write_mmimdb(tmp_path)) == "mmimdb"
    assert detect_format(write_folder(tmp_path)) == "folder"
    assert detect_format(write_csv(tmp_path, "id,genres,image\n1,Drama,a.jpg\n")) == "csv"
