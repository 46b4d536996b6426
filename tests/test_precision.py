"""Same results on every CPU: the precision genrekit picks, the fp32 fallback where bf16 is not
native, and encoders compared in both precisions.

genrekit picks bf16 by itself on a CPU with native bf16 (AVX512-BF16 / AMX; the one detection is
``genrekit.backbones.base.cpu_has_bf16``). bf16 runs on any CPU, emulated, so the ``native``
fixture makes the detection answer yes or no: every path runs here as on either kind of CPU.
"""

from __future__ import annotations

import csv
import logging

import numpy as np
import pytest
import torch

import genrekit.backbones.base as base
from genrekit.backbones import create_encoder
from genrekit.backbones.base import serving_precision
from genrekit.errors import StoreMismatchError
from genrekit.extraction import ExtractConfig, embed_images, encoder_from_header, extract
from genrekit.inference import Item, load_run, predict_items
from genrekit.runs.leaderboard import HeadsConfig, run_heads
from genrekit.store import FeatureStore

CPU = torch.device("cpu")
# bf16 keeps 8 bits of mantissa: features of the same computation in bf16 agree to about 1%.
TOLERANCE = {"fp32": dict(rtol=1e-4, atol=1e-5), "bf16": dict(rtol=3e-2, atol=3e-2)}


@pytest.fixture(params=[False, True], ids=["no-native-bf16", "native-bf16"])
def native(request, monkeypatch) -> bool:
    monkeypatch.setattr(base, "cpu_has_bf16", lambda: request.param)
    return request.param


def _posters(manifest) -> list[str]:
    return [str(manifest.parent / r["image"]) for r in csv.DictReader(open(manifest))]


def test_extraction_picks_bf16_only_where_it_is_native(native):
    assert create_encoder("test-tiny-cnn").precision == ("bf16" if native else "fp32")
    assert create_encoder("test-tiny-cnn", precision="bf16").precision == "bf16"  # extending a bf16 store: honoured


def test_prediction_falls_back_to_fp32_with_a_warning_where_bf16_is_not_native(native, caplog):
    with caplog.at_level(logging.WARNING, logger="genrekit.backbones.base"):
        assert serving_precision("bf16", CPU) == ("bf16" if native else "fp32")
        assert serving_precision("auto", CPU, made_with="bf16") == ("bf16" if native else "fp32")
    warned = [r.getMessage() for r in caplog.records]
    assert (len(warned) == 2 and all("--precision" in w and "not native" in w for w in warned)) if not native else not warned
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="genrekit.backbones.base"):
        assert serving_precision("auto", CPU, made_with="fp32") == "fp32"  # auto repeats the store's precision
        assert serving_precision("fp32", CPU, made_with="bf16") == "fp32"
        assert serving_precision("auto", CPU, made_with="fp16") == "fp32"  # a GPU's fp16 store, read on CPU
    assert not caplog.records


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_stores_encoder_gives_its_features_again_in_its_precision(collection, tmp_path, precision, monkeypatch):
    monkeypatch.setattr(base, "cpu_has_bf16", lambda: True)  # bf16 kept (emulated here), as on a bf16 CPU
    store = FeatureStore(extract(ExtractConfig(backbone="test-tiny-cnn", data=str(collection), out=str(tmp_path / "s.h5"),
                                               precision=precision, batch_size=8)).store)  # fmt: skip
    assert store.header.encoder["precision"] == precision
    enc = encoder_from_header(store.header)
    assert enc.precision == precision
    paths = _posters(collection)[:6]
    X, ok, failures = embed_images(enc, store.header, paths)
    assert ok == list(range(6)) and not failures
    data = store.load()
    np.testing.assert_allclose(X, data.X[:6], **TOLERANCE[precision])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_encoders_in_both_precisions_agree_within_their_tolerance(collection, precision, monkeypatch):
    monkeypatch.setattr(base, "cpu_has_bf16", lambda: True)
    x = torch.stack([create_encoder("test-tiny-cnn").preprocess.load(p) for p in _posters(collection)[:8]])
    ref = create_encoder("test-tiny-cnn", precision="fp32").encode_images(x)
    got = create_encoder("test-tiny-cnn", precision=precision).encode_images(x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, **TOLERANCE[precision])
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > (0.99999 if precision == "fp32" else 0.995)


def test_a_bf16_run_predicts_in_fp32_where_bf16_is_not_native(collection, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(base, "cpu_has_bf16", lambda: True)  # made on a bf16 CPU
    store = FeatureStore(extract(ExtractConfig(backbone="test-tiny-cnn", data=str(collection), out=str(tmp_path / "s.h5"))).store)
    assert store.header.encoder["precision"] == "bf16"
    run_heads(store.load(), tmp_path / "runs", HeadsConfig(heads=("logreg",), baseline=False, jobs=1, min_train_positives=3), header=store.header)
    items = [Item(p, image=p) for p in _posters(collection)[:5]]
    there = load_run(tmp_path / "runs")
    assert there.precision == "bf16"
    P_bf16 = there.predict_proba(items)[0]
    monkeypatch.setattr(base, "cpu_has_bf16", lambda: False)  # predicted on a CPU without it
    with caplog.at_level(logging.WARNING, logger="genrekit.backbones.base"):
        here = load_run(tmp_path / "runs")
        assert here.precision == "fp32"
    assert any("--precision" in r.getMessage() for r in caplog.records)
    preds, failures = predict_items(here, items)
    assert len(preds) == 5 and not failures
    np.testing.assert_allclose(here.predict_proba(items)[0], P_bf16, atol=0.03)
    assert load_run(tmp_path / "runs", precision="fp32").precision == "fp32"


def test_refusals_of_a_precision_mismatch_name_the_flag(collection, tmp_path, monkeypatch):
    monkeypatch.setattr(base, "cpu_has_bf16", lambda: False)
    out = tmp_path / "s.h5"
    extract(ExtractConfig(backbone="test-tiny-cnn", data=str(collection), out=str(out), limit=8))  # fp32 here
    with pytest.raises(StoreMismatchError, match="--precision fp32"):
        extract(ExtractConfig(backbone="test-tiny-cnn", data=str(collection), out=str(out), precision="bf16"))
    store = FeatureStore(extract(ExtractConfig(backbone="test-tiny-cnn", data=str(collection), out=str(out))).store)
    run_heads(store.load(), tmp_path / "runs", HeadsConfig(heads=("logreg",), baseline=False, jobs=1, min_train_positives=3), header=store.header)
    other = FeatureStore(extract(ExtractConfig(backbone="test-tiny-cnn", data=str(collection), out=str(tmp_path / "b.h5"), precision="bf16")).store)
    from genrekit.heads.saved import load_head

    with pytest.raises(StoreMismatchError, match="--precision fp32"):
        load_head(tmp_path / "runs" / "logreg").check_features(other.header, "the store")


def test_predict_and_evaluate_take_precision_and_report_the_one_in_use(collection, tmp_path, monkeypatch, caplog):
    """A bf16 run on a CPU without native bf16 predicts in fp32 and says so (`--precision bf16` too,
    rather than emulate); the precision in use is in `predict --json` and `evaluate --data --json`."""
    import json

    from typer.testing import CliRunner

    from genrekit_cli.main import app

    monkeypatch.setattr(base, "cpu_has_bf16", lambda: True)
    store = FeatureStore(extract(ExtractConfig(backbone="test-tiny-cnn", data=str(collection), out=str(tmp_path / "s.h5"))).store)
    run_heads(store.load(), tmp_path / "runs", HeadsConfig(heads=("logreg",), baseline=False, jobs=1, min_train_positives=3), header=store.header)
    monkeypatch.setattr(base, "cpu_has_bf16", lambda: False)
    poster = _posters(collection)[0]
    runner = CliRunner()
    for asked in ("auto", "fp32", "bf16"):
        caplog.clear()
        res = runner.invoke(app, ["predict", "--run", str(tmp_path / "runs"), poster, "--json", "--precision", asked])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["precision"] == "fp32"
        assert any("not native" in r.getMessage() for r in caplog.records) == (asked != "fp32")
    monkeypatch.setattr(base, "cpu_has_bf16", lambda: True)
    res = runner.invoke(app, ["predict", "--run", str(tmp_path / "runs"), poster, "--json"])
    assert json.loads(res.stdout)["precision"] == "bf16"  # on a bf16 CPU the run keeps its own
    out = tmp_path / "ev.json"
    res = runner.invoke(app, ["evaluate", "--run", str(tmp_path / "runs"), "--data", str(collection), "--json", str(out), "--precision", "fp32"])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["precision"] == "fp32" and "encoder precision: fp32" in res.stdout
    res = runner.invoke(app, ["predict", "--run", str(tmp_path / "runs"), poster, "--precision", "fp8"])
    assert res.exit_code == 2 and "precision" in res.output


def test_the_cli_offers_the_precisions_the_library_knows():
    from typing import get_args

    from genrekit_cli.options import PrecisionOpt

    assert set(get_args(get_args(PrecisionOpt)[0])) == set(base.PRECISIONS)
