"""Property: any id, title and genre name is written and read back equal, or refused with a clear error."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genrekit.errors import StoreError
from genrekit.store import FeatureStore, StoreHeader, StoreWriter

# Text that breaks naive code: markup and CSV/genre separators, NULs, lone surrogates, long strings.
tricky = st.one_of(
    st.text(min_size=0, max_size=30),
    st.text(alphabet=st.sampled_from("[]/,|;= \t\n\"'\\\x00é漢\U0001F3AC"), min_size=0, max_size=12),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=200, max_size=400),
    st.sampled_from(["[bold]x[/bold]", "Sci-Fi, Fantasy", "a|b", "   ", "Drama\x00", "\ud800", "-"]),
)


def _storable(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in s


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ids=st.lists(tricky, min_size=1, max_size=6, unique=True),
    genres=st.lists(tricky, min_size=1, max_size=5),
    title=tricky,
)
def test_ids_titles_and_genres_round_trip_or_are_refused(ids, genres, title):
    header = StoreHeader({"family": "test", "name": "enc", "weights": "none"}, {}, "none", "image", 3, "float32",
                         tuple(genres), {})  # fmt: skip
    genres_ok = all(_storable(g) and g.strip() for g in genres) and len(set(genres)) == len(genres)
    rows_ok = all(_storable(s) for s in [*ids, title])
    X = np.arange(len(ids) * 3, dtype=np.float32).reshape(-1, 3)
    Y = (np.arange(len(ids) * len(genres)).reshape(len(ids), len(genres)) % 2).astype(np.uint8)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.h5"
        if not genres_ok:
            with pytest.raises(StoreError, match="genre name"):
                StoreWriter(path, header)
            return
        w = StoreWriter(path, header)
        if not rows_ok:
            with pytest.raises(StoreError, match=r"(sample id|title) .* contains (a NUL character|characters that are not valid UTF-8)"):
                w.write_part(ids, X, Y, [title] * len(ids), [2000] * len(ids))
            return
        failed = [(f, "reason " + ids[0]) for f in [ids[0] + "!"] if f not in ids]
        w.write_part(ids, X, Y, [title] * len(ids), [2000] * len(ids), failures=failed)
        fs = w.finalize().load()
        assert list(fs.ids) == ids and fs.genres == genres and list(fs.titles) == [title] * len(ids)
        np.testing.assert_array_equal(fs.X, X)
        np.testing.assert_array_equal(fs.Y, Y)
        assert FeatureStore(path).failures == failed
        # Extending it with the same genres in another order keeps every id and the store's column order.
        again = StoreWriter(path, StoreHeader(**{**header.__dict__, "genres": tuple(reversed(genres))}))
        assert again.header.genres == tuple(genres) and again.done_ids == {*ids, *(f for f, _ in failed)}
