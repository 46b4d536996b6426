"""Shared fixtures: small generated image collections (never the copyrighted posters)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared"
GENRES = ["Drama", "Comedy", "Horror", "Action"]


@pytest.fixture(autouse=True, scope="session")
def _as_on_a_bf16_cpu():
    """``GENREKIT_TEST_AS_BF16_CPU=1 make test`` runs the suite as on a CPU with native bf16
    (AVX512-BF16 / AMX): genrekit then picks bf16 for every encoder (emulated here, slower, same
    code paths), from the first fixture on. Tests that need one kind of CPU set ``cpu_has_bf16``
    themselves; a test's ``monkeypatch.undo()`` leaves this in place."""
    if os.environ.get("GENREKIT_TEST_AS_BF16_CPU") != "1":
        yield
        return
    import genrekit.backbones.base as base

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(base, "cpu_has_bf16", lambda: True)
        yield


def write_manifest(path: Path, rows: list[dict]) -> Path:
    cols = ["id", "title", "year", "genres", "plot", "image"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in cols})
    return path


def make_collection(root: Path, n: int = 24, seed: int = 0) -> Path:
    """``n`` small 2:3 images whose colour depends on their genres, and a manifest."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        labels = [g for g in GENRES if rng.random() < 0.4] or [GENRES[i % len(GENRES)]]
        colour = np.array([60 + 150 * ("Comedy" in labels), 40 + 120 * ("Action" in labels), 200 - 150 * ("Horror" in labels)])
        pixels = np.clip(colour + rng.normal(0, 25, (48, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "img" / f"{i:03d}.jpg", quality=90)
        rows.append({"id": f"s{i:03d}", "title": f"Film {i}", "year": 1990 + i, "genres": "|".join(labels),
                     "plot": f"A {' and '.join(labels).lower()} story number {i}.", "image": f"img/{i:03d}.jpg"})
    return write_manifest(root / "labels.csv", rows)


@pytest.fixture
def collection(tmp_path: Path) -> Path:
    return make_collection(tmp_path / "col")


@pytest.fixture
def shared_data() -> Path:
    d = SHARED / "data"
    if not (d / "movie_posters" / "labels.csv").is_file():
        pytest.skip("../shared/data is not here")
    return d


def make_heads_run(root: Path, backbone: str, heads: list[str], n: int = 80, min_positives: int = 3) -> dict:
    """A generated collection, its store from a tiny registered backbone, and a `genrekit heads` run on it."""
    from typer.testing import CliRunner

    from genrekit.extraction import ExtractConfig, extract
    from genrekit_cli.main import app

    manifest = make_collection(root / "col", n=n)
    store, runs = root / "tiny.h5", root / "runs"
    extract(ExtractConfig(backbone=backbone, weights="none", data=str(manifest), out=str(store), device="cpu"))
    args = ["heads", "--store", str(store), *(a for h in heads for a in ("--head", h)), "--out", str(runs),
            "--min-positives", str(min_positives), "--jobs", "1"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return {"root": root, "store": store, "runs": runs, "images": sorted((root / "col" / "img").glob("*.jpg")), "out": res.output}
