import json

from typer.testing import CliRunner

from genrekit_cli.main import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_backbones_lists_and_filters():
    r = run("backbones", "--json")
    assert r.exit_code == 0
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["ViT-L-14"]["dim"] == 768 and rows["ViT-L-14"]["modality"] == "image+text"
    assert rows["minilm"]["offline"] is True and rows["colorstats"]["offline"] is None
    r = run("backbones", "mobile*")
    assert r.exit_code == 0 and "mobilenet_v2" in r.stdout and "ViT" not in r.stdout


def test_extract_then_store_info(collection, tmp_path):
    out = tmp_path / "s.h5"
    r = run("extract", "--backbone", "test-tiny-cnn", "--data", collection, "--out", out, "--workers", "0")
    assert r.exit_code == 0, r.output
    assert "24 rows" in r.stdout
    r = run("store", "info", out, "--json")
    info = json.loads(r.stdout)
    assert info["rows"] == 24 and info["encoder"]["name"] == "test-tiny-cnn" and info["preprocessing"]["resize"] == "squash"
    r = run("store", "info", out)
    assert r.exit_code == 0 and "test-tiny-cnn" in r.stdout and "squash" in r.stdout


def test_errors_are_one_line_with_exit_code_1(collection, tmp_path):
    r = run("extract", "--backbone", "ViT-L14", "--data", collection, "--out", tmp_path / "x.h5")
    assert r.exit_code == 1
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "did you mean: ViT-L-14" in lines[0] and "Traceback" not in r.output
    r = run("store", "info", tmp_path / "none.h5")
    assert r.exit_code == 1 and "does not exist" in r.output
    r = run("extract", "--backbone", "test-tiny-cnn", "--data", tmp_path / "nope.csv", "--out", tmp_path / "x.h5")
    assert r.exit_code == 1 and "nope.csv" in r.output


def test_unreadable_images_are_listed_in_the_summary(tmp_path):
    from conftest import write_manifest

    m = write_manifest(tmp_path / "m.csv", [{"id": "gone", "genres": "Drama", "image": "gone.jpg"}])
    r = run("extract", "--backbone", "colorstats", "--data", m, "--out", tmp_path / "s.h5", "--workers", "0")
    assert r.exit_code == 0, r.output
    assert "1 unreadable" in r.stdout and "1 x missing file" in r.stdout and "gone: missing file" in r.stdout


def test_help_of_every_command_exits_0():
    for args in (["--help"], ["extract", "--help"], ["heads", "--help"], ["data", "split", "--help"], ["store", "info", "--help"]):
        r = run(*args)
        assert r.exit_code == 0 and "error" not in r.output.lower().split("usage")[0], (args, r.output)


def test_a_cli_process_skips_the_last_collection_after_its_exit_handlers():
    """exit_without_collection (what the CLI and its job processes call) freezes what is left once
    the exit handlers registered after it have run: an object left in a reference cycle is then not
    finalized at exit, and without it, it is."""
    import subprocess
    import sys

    code = """
import atexit, gc, sys
from genrekit.system import exit_without_collection
if FREEZE:
    exit_without_collection(); exit_without_collection()
class Cycle:
    def __del__(self): sys.stdout.write("collected\\n")
a = Cycle(); a.me = a; del a
atexit.register(lambda: print("handler ran, frozen:", gc.get_freeze_count(), flush=True))
"""
    runs = {f: subprocess.run([sys.executable, "-c", code.replace("FREEZE", f)], capture_output=True, text=True, check=True).stdout
            for f in ("True", "False")}  # fmt: skip
    assert runs["True"] == "handler ran, frozen: 0\n"
    assert runs["False"] == "handler ran, frozen: 0\ncollected\n"
