"""One atomic writer: nothing half-written, nothing written through a planted link, inputs kept."""

from __future__ import annotations

import os

import pytest

from genrekit.atomic import atomic_open, atomic_write, refuse_overwrite
from genrekit.errors import ConfigError


def test_atomic_write_replaces_a_planted_link_not_its_target(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = tmp_path / "out.txt"
    link.symlink_to(victim)
    atomic_write(link, "new")
    assert victim.read_text() == "precious"
    assert not link.is_symlink() and link.read_text() == "new"


def test_an_error_leaves_the_target_and_no_temporary_file(tmp_path):
    out = tmp_path / "out.csv"
    out.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(out) as fh:
            fh.write("half")
            raise RuntimeError("disk on fire")
    assert out.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["out.csv"]


def test_written_files_get_ordinary_permissions(tmp_path):
    out = atomic_write(tmp_path / "a.json", b"{}")
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_refuse_overwrite_names_the_input(tmp_path):
    store = tmp_path / "posters.h5"
    store.write_bytes(b"x")
    run = tmp_path / "runs"
    run.mkdir()
    with pytest.raises(ConfigError, match=r"--json .* would overwrite the store"):
        refuse_overwrite(store, {"the store": store}, "--json")
    with pytest.raises(ConfigError, match="the run"):
        refuse_overwrite(run / "results.json", {"the run": run}, "--predictions")
    refuse_overwrite(tmp_path / "scores.json", {"the store": store, "the run": run}, "--json")
