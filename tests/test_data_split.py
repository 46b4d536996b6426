"""Splits: iterative stratification keeps genre shares, by-year splits drift, split files round-trip."""

from __future__ import annotations

import numpy as np
import pytest

from data_fixtures import SHARED_DATA, write_csv
from genrekit.data.manifest import read_manifest
from genrekit.data.split import (
    SplitConfig,
    read_split_file,
    split_manifest,
    split_warnings,
    stratified_split,
    write_split_file,
    year_split,
)
from genrekit.errors import ConfigError, ManifestError, UnknownNameError


def _synthetic(n=1000, g=8, seed=0):
    rng = np.random.default_rng(seed)
    prevalence = np.linspace(0.03, 0.5, g)
    return (rng.random((n, g)) < prevalence).astype(np.uint8)


def test_stratified_split_is_seeded_and_keeps_shares():
    Y = _synthetic()
    a, b, c = stratified_split(Y, seed=3), stratified_split(Y, seed=3), stratified_split(Y, seed=4)
    assert (a == b).all() and not (a == c).all()
    assert set(a) == {"train", "val", "test"}
    for part, r in zip(("train", "val", "test"), (0.7, 0.15, 0.15)):
        assert abs((a == part).mean() - r) < 0.02
        # Iterative stratification: each genre's positives split close to the ratios.
        frac = Y[a == part].sum(0) / Y.sum(0)
        assert np.abs(frac - r).max() < 0.03


def test_stratified_split_other_ratios_and_bad_ratios():
    Y = _synthetic(500)
    s = stratified_split(Y, ratios=(0.8, 0.0, 0.2), seed=0)
    assert (s == "val").sum() == 0 and abs((s == "test").mean() - 0.2) < 0.02
    with pytest.raises(ConfigError, match="sum"):
        stratified_split(Y, ratios=(0.5, 0.2, 0.2))
    with pytest.raises(ConfigError, match="2-D"):
        stratified_split(Y[:, 0])
    assert len(stratified_split(np.zeros((0, 3)))) == 0


def test_year_split_tests_on_newer_and_sends_unknown_years_to_train(caplog):
    years = np.array([1990 + (i % 30) for i in range(300)] + [-1, -1])
    Y = _synthetic(302, 4)
    s = year_split(years, test_from=2010, val_fraction=0.2, seed=0, Y=Y)
    assert (s[years >= 2010] == "test").all()
    assert not (s[(years < 2010)] == "test").any()
    assert (s[-2:] == "train").all()
    older = (years >= 0) & (years < 2010)
    assert abs((s[older] == "val").mean() - 0.2) < 0.03
    assert "no year" in caplog.text
    assert (year_split(years, 2010, 0.2, seed=0) == year_split(years, 2010, 0.2, seed=0)).all()
    with pytest.raises(ConfigError, match="val_fraction"):
        year_split(years, 2010, val_fraction=1.0)


def test_split_warnings_name_genres_missing_from_a_part():
    Y = np.array([[1, 1], [1, 0], [1, 0]])
    split = np.array(["train", "val", "test"], dtype=object)
    (w,) = split_warnings(Y, split, ["Drama", "Short"])
    assert "'Short'" in w and "val, test" in w


def test_split_file_roundtrip_and_malformed_rows(tmp_path):
    p = write_split_file(tmp_path / "s" / "split.csv", ["a", "b", "c"], {"a": "train", "b": "val", "c": "test"})
    assert read_split_file(p) == {"a": "train", "b": "val", "c": "test"}
    bad = write_csv(tmp_path, "id,split\na,train\nb,holdout\n", "bad.csv")
    with pytest.raises(ManifestError, match="row 3, column 'split': 'holdout'"):
        read_split_file(bad)
    dup = write_csv(tmp_path, "id,split\na,train\na,test\n", "dup.csv")
    with pytest.raises(ManifestError, match="row 3, column 'id'"):
        read_split_file(dup)
    nocol = write_csv(tmp_path, "id,part\na,train\n", "nocol.csv")
    with pytest.raises(ManifestError, match="lacks column"):
        read_split_file(nocol)
    with pytest.raises(ConfigError, match="train, val or test"):
        write_split_file(tmp_path / "x.csv", ["a"], ["holdout"])


def test_split_manifest_methods(tmp_path):
    rows = "".join(f"{i},{'Drama|Comedy' if i % 3 else 'Horror'},p,{1980 + i % 40},{'train' if i % 2 else 'test'}\n" for i in range(200))
    m = read_manifest(write_csv(tmp_path, "id,genres,plot,year,split\n" + rows))
    split, warnings = split_manifest(m, SplitConfig(seed=1))
    assert len(split) == 200 and not warnings
    split, _ = split_manifest(m, SplitConfig(by="year", test_from=2010))
    assert all(split[s.id] == "test" for s in m.samples if s.year >= 2010)
    split, _ = split_manifest(m, SplitConfig(by="column"))
    assert split["1"] == "train" and split["2"] == "test"
    with pytest.raises(ConfigError, match="--test-from"):
        SplitConfig(by="year")
    with pytest.raises(UnknownNameError, match="did you mean: stratified"):
        SplitConfig(by="stratifed")


def test_movie_posters_70_15_15_keeps_every_common_genre_within_2_points():
    labels = SHARED_DATA / "movie_posters" / "labels.csv"
    if not labels.is_file():
        pytest.skip("shared movie_posters data not present")
    m = read_manifest(labels)
    genres = m.vocabulary()
    Y = m.multi_hot(genres)
    split = stratified_split(Y, (0.7, 0.15, 0.15), seed=0)
    common = [j for j in range(len(genres)) if Y[:, j].sum() >= 50]
    assert len(common) == 20
    whole = Y[:, common].mean(0)
    for part in ("train", "val", "test"):
        sub = Y[split == part][:, common]
        assert (sub.sum(0) > 0).all()
        assert np.abs(sub.mean(0) - whole).max() < 0.02
