"""The demo collection: deterministic bytes, a valid manifest, genres learnable from colour statistics."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler

from genrekit.data.demo import GENRE_NAMES, make_demo
from genrekit.data.manifest import read_manifest
from genrekit.errors import ConfigError


def _digest(folder):
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a, b, c = (make_demo(tmp_path / name, n=24, seed=s).parent for name, s in (("a", 0), ("b", 0), ("c", 1)))
    assert _digest(a) == _digest(b) != _digest(c)
    # Item i depends only on (seed, i): a larger collection extends a smaller one.
    bigger = make_demo(tmp_path / "d", n=30, seed=0).parent
    assert (bigger / "images" / "demo-00007.jpg").read_bytes() == (a / "images" / "demo-00007.jpg").read_bytes()


def test_manifest_is_multilabel_with_titles_years_plots(tmp_path):
    m = read_manifest(make_demo(tmp_path, n=120, seed=0))
    assert len(m) == 120 and set(m.vocabulary()) <= set(GENRE_NAMES)
    assert len(m.vocabulary()) >= 8
    assert max(len(s.genres) for s in m.samples) >= 2 and min(len(s.genres) for s in m.samples) == 1
    for s in m.samples:
        assert s.title and s.plot and 1950 <= s.year <= 2023
        with Image.open(s.image) as img:
            assert img.size == (160, 240) and img.format == "JPEG"
    assert "CC0" in (tmp_path / "README.txt").read_text()


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="at least 1 item"):
        make_demo(tmp_path, n=0)


def _colour_features(path):
    a = np.asarray(Image.open(path).convert("RGB").reduce(2), np.float32) / 255
    feats = []
    for band in np.array_split(a, 3, axis=0):  # top / middle / bottom thirds
        feats += list(band.mean((0, 1))) + list(band.std((0, 1)))
        hist, _ = np.histogramdd(band.reshape(-1, 3), bins=(3, 3, 3), range=[(0, 1)] * 3)
        feats += list(hist.ravel() / band.shape[0] / band.shape[1])
    grey = a.mean(2)
    feats += [np.abs(np.diff(grey, axis=0)).mean(), np.abs(np.diff(grey, axis=1)).mean()]
    return np.array(feats)


def test_genres_are_learnable_from_colour_statistics_but_not_trivially(tmp_path):
    m = read_manifest(make_demo(tmp_path, n=240, seed=0))
    genres = m.vocabulary()
    X = np.stack([_colour_features(s.image) for s in m.samples])
    Y = m.multi_hot(genres)
    train = np.arange(len(m)) < 160
    scaler = StandardScaler().fit(X[train])
    clf = OneVsRestClassifier(LogisticRegression(C=0.1, max_iter=1000)).fit(scaler.transform(X[train]), Y[train])
    P = clf.predict_proba(scaler.transform(X[~train]))
    auc = roc_auc_score(Y[~train], P, average="macro")
    assert 0.8 < auc < 0.995, auc
