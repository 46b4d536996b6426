"""`genrekit report` as a person reads it: legible figures at the page's width, user text taken literally,
titles in the gallery, fallback thresholds named, fused and fine-tune reports complete."""

from __future__ import annotations

import re

import numpy as np
import pytest
from synthetic import synthetic_features
from test_fusion import FAST, two_modalities

import genrekit_cli.apps.report as report
from genrekit.features import join_features
from genrekit.runs.fused import FusionConfig, run_fused
from genrekit.runs.leaderboard import HeadsConfig, run_heads
from genrekit_cli.apps.report import build_report

# Names a person may give genres and heads: mathtext, format and markup characters among them.
ODD = {"$\\foo$": 0.45, "Comedy": 0.35, "50% $$ {x}_^": 0.25, "<b>Noir</b>": 0.2}


@pytest.fixture
def drawn(monkeypatch):
    """Every matplotlib figure the report draws, inspected just before it becomes a PNG."""
    seen: list[dict] = []
    original = report._png

    def record(fig):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        texts = [t for t in fig.findobj(lambda a: hasattr(a, "get_fontsize") and hasattr(a, "get_text"))
                 if t.get_visible() and t.get_text().strip()]  # fmt: skip
        legends = []
        for ax in fig.axes:
            leg = ax.get_legend()
            if leg is not None:
                legends.append((ax.get_window_extent(renderer), leg.get_window_extent(renderer)))
        title = fig._suptitle
        for leg in fig.legends:  # a figure's legend must not sit on its title either
            if title is not None:
                legends.append((title.get_window_extent(renderer), leg.get_window_extent(renderer)))
        box = fig.bbox
        ticks = {id(t) for ax in fig.axes for t in (*ax.get_xticklabels(), *ax.get_yticklabels())}  # those beyond the limits are not drawn
        outside = [t.get_text() for t in texts if id(t) not in ticks
                   if not (t.get_window_extent(renderer).x0 >= box.x0 - 1 and t.get_window_extent(renderer).x1 <= box.x1 + 1)]  # fmt: skip
        seen.append({
            "outside": outside,
            "width_px": fig.get_figwidth() * fig.dpi,
            "min_px": min(t.get_fontsize() * fig.dpi / 72 for t in texts),
            "smallest": min(texts, key=lambda t: t.get_fontsize()).get_text(),
            "texts": [t.get_text() for t in texts],
            "legends": legends,
        })  # fmt: skip
        return original(fig)

    monkeypatch.setattr(report, "_png", record)
    return seen


def _assert_legible(seen: list[dict]) -> None:
    assert seen
    for f in seen:
        assert f["width_px"] == pytest.approx(report.WIDTH * report.DPI), f["texts"][:3]
        assert f["min_px"] >= report.MIN_TEXT_PX, f"text {f['smallest']!r} is {f['min_px']:.1f} px high in {f['texts'][:2]}"
        assert not f["outside"], f"text cut off at the figure's edge: {f['outside']}"
        for ax_box, leg_box in f["legends"]:
            assert not ax_box.overlaps(leg_box), f"a legend lies over the data of {f['texts'][:2]}"


def test_every_figure_is_page_wide_with_legible_text_and_legends_off_the_data(tmp_path, drawn):
    fs = synthetic_features(n=360, dim=12, prevalence={"Drama": 0.45, "Comedy": 0.35, "Horror": 0.25, "Western": 0.2}, seed=1)
    run_heads(fs, tmp_path / "runs", HeadsConfig(heads=("logreg", "knn"), jobs=1, head_params=FAST, min_train_positives=5))
    page = build_report(tmp_path / "runs", heads=["knn"])
    assert len(drawn) >= 15
    _assert_legible(drawn)
    # The page shows each figure at the width it was drawn for (never scaled down by a narrower column).
    assert f"max-width: {int(report.WIDTH * report.DPI)}px" in page


def test_user_text_is_drawn_literally_never_parsed_as_mathtext_or_markup(tmp_path, drawn):
    fs = synthetic_features(n=360, dim=12, prevalence=ODD, seed=2)
    run_heads(fs, tmp_path / "runs", HeadsConfig(heads=("logreg",), jobs=1, head_params=FAST, min_train_positives=5))
    page = build_report(tmp_path / "runs")
    drawn_text = "\n".join(t for f in drawn for t in f["texts"])
    assert "$\\foo$" in drawn_text and "50% $$ {x}_^" in drawn_text
    assert "&lt;b&gt;Noir&lt;/b&gt;" in page and "<b>Noir</b>" not in page  # escaped in the HTML too


def test_fallback_thresholds_are_named_as_such(tmp_path, drawn):
    # Western is rare: too few validation positives for a threshold of its own.
    fs = synthetic_features(n=300, dim=12, prevalence={"Drama": 0.45, "Comedy": 0.35, "Western": 0.06}, seed=3)
    res = run_heads(fs, tmp_path / "runs", HeadsConfig(heads=("logreg",), jobs=1, head_params=FAST, min_train_positives=3,
                                                       min_threshold_positives=8))  # fmt: skip
    fell = res["heads"]["logreg"]["thresholds"]["fallback"]
    assert fell, "the fixture should make at least one genre fall back"
    page = build_report(tmp_path / "runs")
    for g in fell:
        assert re.search(rf"<td>{re.escape(g)}</td>(<td>[^<]*</td>)+<td>[0-9.]+ \(global fallback\)</td>", page), g
    assert "use the global threshold instead (global fallback)" in page
    _assert_legible(drawn)  # the longer titles and notes of a run with fallbacks fit too


def test_a_fused_report_names_its_encoders_and_genres(tmp_path, drawn):
    joined = join_features(two_modalities(n=300), "outer")
    run_fused(joined, tmp_path / "fused", HeadsConfig(heads=("logreg",), jobs=1, head_params=FAST), FusionConfig(fusion="both", block_step=0.5))
    page = build_report(tmp_path / "fused")
    facts = dict(re.findall(r"<tr><th>([^<]+)</th><td>([^<]*)</td></tr>", page))
    assert facts["encoders"] != "-" and facts["genres (order used everywhere)"] != "-", facts
    _assert_legible(drawn)
