"""Small synthetic collections in each supported format, written into a tmp folder by tests."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def jpeg_bytes(colour: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (20, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


def write_image(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(colour))
    return path


def write_kaggle(root: Path) -> Path:
    """A MovieGenre.csv in Latin-1 with one accented title, a missing genre and a bare title."""
    rows = [
        "imdbId,Imdb Link,Title,IMDB Score,Genre,Poster",
        '114709,http://www.imdb.com/title/tt114709,Toy Story (1995),8.3,Animation|Adventure|Comedy,https://example.org/1.jpg',
        '113497,http://www.imdb.com/title/tt113497,Jumanji (1995),6.9,Action|Adventure|Family,https://example.org/2.jpg',
        '113228,http://www.imdb.com/title/tt113228,Ich möchte kein Mann sein (1918),7.1,Comedy|Romance,',
        '114885,http://www.imdb.com/title/tt114885,"Waiting to Exhale, Part 1 (1995)",5.7,,https://example.org/4.jpg',
        '999,http://www.imdb.com/title/tt999,Untitled,5.0,Drama,https://example.org/5.jpg',
    ]
    path = root / "MovieGenre.csv"
    path.write_bytes("\n".join(rows).encode("latin-1"))
    return path


def write_mmimdb(root: Path) -> Path:
    data = root / "mmimdb" / "dataset"
    films = {
        "0000001": {"title": "A", "year": 1999, "genres": ["Drama", "Romance"], "plot": ["First plot.", "Second."]},
        "0000002": {"title": "B", "year": 2005, "genres": ["Sci-Fi"], "plot": ["Space."]},
        "0000003": {"title": "C", "genres": ["Comedy", "Drama"], "plot": []},
    }
    for i, obj in films.items():
        data.mkdir(parents=True, exist_ok=True)
        (data / f"{i}.json").write_text(json.dumps(obj))
        write_image(data / f"{i}.jpeg")
    (root / "mmimdb" / "split.json").write_text(json.dumps({"train": ["0000001"], "dev": ["0000002"], "test": ["0000003"]}))
    return root / "mmimdb"


def write_anime(root: Path) -> Path:
    path = root / "anime.csv"
    path.write_text(
        "anime_id,Name,Genres,sypnopsis,Aired\n"
        "1,Cowboy Bebop,\"['Action', 'Sci-Fi', 'Space']\",Bounty hunters in space.,\"Apr 3, 1998 to Apr 24, 1999\"\n"
        "5,Trigun,\"Action, Comedy, Sci-Fi\",A gunman with a bounty.,1998\n"
        "6,Clannad,\"[\"\"Drama\"\", \"\"Romance\"\"]\",A school story.,Unknown\n",
        encoding="utf-8",
    )
    return path


def write_folder(root: Path) -> Path:
    tree = root / "by_genre"
    write_image(tree / "Horror" / "p1.jpg")
    write_image(tree / "Horror" / "p2.png", (10, 10, 10))
    write_image(tree / "Thriller" / "p1.jpg")
    write_image(tree / "Comedy" / "p3.jpg", (250, 250, 0))
    (tree / "Comedy" / "notes.txt").write_text("not an image")
    return tree


def write_csv(root: Path, text: str, name: str = "labels.csv") -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
