"""A license-clean demo collection drawn by code, so the main job runs with no user data.

Every poster is painted with PIL from a seeded random generator: each genre owns a palette, a
motif (shapes and textures) and a title style, so colour and edge statistics carry the labels;
random dropouts, distractor shapes, jitter and pixel noise keep the task from being trivial.
Plots are one generated sentence whose words lean on the genres. Same seed, same bytes.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from genrekit.atomic import atomic_open, atomic_write
from genrekit.errors import ConfigError
from genrekit.progress import ProgressFn, null_progress

log = logging.getLogger(__name__)

SIZE = (160, 240)  # 2:3 portrait, like a one-sheet
_W, _H = SIZE
RGB = tuple[int, int, int]


@dataclass(frozen=True)
class _Genre:
    name: str
    weight: float  # relative frequency as the first genre of an item
    background: tuple[RGB, RGB]  # top and bottom of the gradient
    ink: RGB  # the motif's colour
    years: tuple[int, int]  # the era this genre's films come from, so a by-year split drifts
    title_words: tuple[str, ...]
    plot_words: tuple[str, ...]


GENRES: tuple[_Genre, ...] = (
    _Genre("Drama", 3.0, ((70, 80, 100), (30, 35, 45)), (200, 190, 170), (1950, 2023),
           ("Silent", "Long", "Winter", "Letters", "Home"), ("family", "grief", "memory", "choice", "father")),
    _Genre("Comedy", 2.6, ((255, 220, 60), (250, 160, 40)), (40, 120, 220), (1960, 2023),
           ("Crazy", "Party", "Wedding", "Oops", "Neighbours"), ("prank", "mix-up", "party", "clumsy", "wedding")),
    _Genre("Action", 2.0, ((60, 20, 10), (240, 110, 20)), (255, 230, 120), (1975, 2023),
           ("Fury", "Strike", "Force", "Fire", "Run"), ("explosion", "chase", "mission", "agent", "gunfight")),
    _Genre("Romance", 1.6, ((250, 190, 210), (220, 90, 140)), (200, 20, 70), (1950, 2023),
           ("Hearts", "Kiss", "Forever", "Paris", "Love"), ("love", "kiss", "heart", "letters", "longing")),
    _Genre("Horror", 1.3, ((10, 10, 12), (70, 0, 0)), (190, 0, 0), (1960, 2023),
           ("Night", "Blood", "Hollow", "Scream", "Crypt"), ("ghost", "blood", "curse", "cellar", "scream")),
    _Genre("Sci-Fi", 1.2, ((5, 10, 40), (20, 60, 120)), (0, 240, 255), (1975, 2023),
           ("Star", "Orbit", "Nova", "Signal", "Android"), ("starship", "robot", "planet", "signal", "future")),
    _Genre("Animation", 1.0, ((120, 220, 255), (170, 255, 170)), (255, 80, 200), (1985, 2023),
           ("Bunny", "Magic", "Tiny", "Dragon", "Bubble"), ("talking", "magic", "bunny", "toy", "dragon")),
    _Genre("Western", 0.9, ((245, 200, 130), (170, 100, 40)), (90, 45, 15), (1950, 1995),
           ("Dust", "Outlaw", "Canyon", "Sheriff", "Rider"), ("sheriff", "outlaw", "horse", "saloon", "desert")),
    _Genre("Thriller", 1.0, ((20, 60, 60), (5, 20, 25)), (230, 230, 230), (1970, 2023),
           ("Shadow", "Witness", "Trap", "Silent", "Alibi"), ("detective", "witness", "secret", "murder", "spy")),
)
GENRE_NAMES = tuple(g.name for g in GENRES)
_BY_NAME = {g.name: g for g in GENRES}

# Genres that tend to come together, as in real catalogues: the second label of an item is drawn
# from these partners more often than at random, so co-occurrence has structure to learn.
_PARTNERS = {
    "Drama": ("Romance", "Thriller"), "Comedy": ("Romance", "Animation"), "Action": ("Sci-Fi", "Thriller"),
    "Romance": ("Drama", "Comedy"), "Horror": ("Thriller", "Sci-Fi"), "Sci-Fi": ("Action", "Horror"),
    "Animation": ("Comedy", "Action"), "Western": ("Action", "Drama"), "Thriller": ("Drama", "Horror"),
}

_PLOT_TEMPLATES = (
    "A {a} {b} must face the {c} before the {d} ends everything.",
    "When a {a} meets a {b}, the {c} and the {d} change a small town for good.",
    "After the {a}, one {b} chases the {c} through a {d}.",
    "Nobody believed in the {a} until the {b} brought a {c} and a {d}.",
)
_NEUTRAL_WORDS = ("stranger", "city", "journey", "summer", "friend", "road", "truth", "island")


def _pick_genres(rng: np.random.Generator) -> list[str]:
    weights = np.array([g.weight for g in GENRES])
    first = GENRE_NAMES[rng.choice(len(GENRES), p=weights / weights.sum())]
    n = int(rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25]))
    chosen = [first]
    while len(chosen) < n:
        if rng.random() < 0.6:
            cand = str(rng.choice(_PARTNERS[chosen[-1]]))
        else:
            cand = GENRE_NAMES[rng.choice(len(GENRES), p=weights / weights.sum())]
        if cand not in chosen:
            chosen.append(cand)
    return chosen


def _jitter(c: RGB, rng: np.random.Generator, amount: int = 25) -> RGB:
    return tuple(int(np.clip(v + rng.integers(-amount, amount + 1), 0, 255)) for v in c)  # type: ignore[return-value]


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(int(round(x * (1 - t) + y * t)) for x, y in zip(a, b))  # type: ignore[return-value]


def _gradient(top: RGB, bottom: RGB) -> Image.Image:
    t = np.linspace(0.0, 1.0, _H, dtype=np.float32)[:, None, None]
    col = np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t
    return Image.fromarray(np.broadcast_to(col, (_H, _W, 3)).round().astype(np.uint8), "RGB")


# -- motifs: one per genre, each drawn in the genre's ink inside a random box ---------------------
def _m_drama(d: ImageDraw.ImageDraw, rng: np.random.Generator, ink: RGB) -> None:
    x = int(rng.integers(30, 110))  # one large lonely silhouette: a head and shoulders
    d.ellipse([x - 14, 90, x + 14, 122], fill=ink)
    d.rounded_rectangle([x - 30, 120, x + 30, 210], radius=18, fill=ink)


def _m_comedy(d: ImageDraw.ImageDraw, rng: np.random.Generator, ink: RGB) -> None:
    for _ in range(int(rng.integers(10, 18))):  # polka dots
        x, y, r = int(rng.integers(0, _W)), int(rng.integers(40, _H)), int(rng.integers(4, 10))
        d.ellipse([x - r, y - r, x + r, y + r], fill=ink)


def _m_action(d: ImageDraw.ImageDraw, rng: np.random.Generator, ink: RGB) -> None:
    cx, cy = int(rng.integers(40, 120)), int(rng.integers(100, 180))  # explosion burst + streaks
    pts = []
    for k in range(16):
        a = k * math.pi / 8
        r = 45 if k % 2 == 0 else 18
        pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    d.polygon(pts, fill=ink)
    for _ in range(6):
        y0 = int(rng.integers(30, _H))
        d.line([(0, y0), (_W, y0 - 80)], fill=ink, width=2)


def _m_romance(d: ImageDraw.ImageDraw, rng: np.random.Generator, ink: RGB) -> None:
    for _ in range(int(rng.integers(1, 4))):  # hearts
        x, y, s = int(rng.integers(30, 130)), int(rng.integers(70, 200)), int(rng.integers(12, 26))
        d.ellipse([x - s, y - s // 2, x, y + s // 2], fill=ink)
        d.ellipse([x, y - s // 2, x + s, y + s // 2], fill=ink)
        d.polygon([(x - s, y + 2), (x + s, y + 2), (x, y + s + s // 2)], fill=ink)


def _m_horror(d: ImageDraw.ImageDraw, rng: np.random.Generator, ink: RGB) -> None:
    for _ in range(int(rng.integers(5, 10))):  # drips from the top
        x = int(rng.integers(0, _W))
        length = int(rng.integers(30, 120))
        d.line([(x, 0), (x, length)], fill=ink, width=int(rng.integers(2, 5)))
        d.ellipse([x - 3, length - 3, x + 3, length + 3], fill=ink)
    d.ellipse([60, 150, 100, 200], outline=(230, 230, 230), width=2)  # a pale face


def _m_scifi(d: ImageDraw.ImageDraw, rng: np.random.Generator, ink: RGB) -> None:
    for _ in range(40):  # stars
        x, y = int(rng.integers(0, _W)), int(rng.integers(0, _H // 2))
        d.point([(x, y), (x + 1, y)], fill=(255, 255, 255))
    horizon = int(rng.integers(150, 190))
    for k in range(9):  # a perspective grid
        d.line([(_W // 2, horizon), (k * _W // 8, _H)], fill=ink, width=1)
    for y in range(horizon, _H, 12):
        d.line([(0, y), (_W, y)], fill=ink, width=1)
    r = int(rng.integers(14, 26))
    x = int(rng.integers(30, 130))
    d.ellipse([x - r, horizon - 2 * r - 20, x + r, horizon - 20], outline=ink, width=3)


def _m_animation(d: ImageDraw.ImageDraw, rng: np.random.Generator, ink: RGB) -> None:
    colours = [ink, (255, 200, 0), (80, 200, 80), (90, 120, 255)]
    for k in range(int(rng.integers(3, 6))):  # round, saturated blobs with outlines
        x, y, r = int(rng.integers(20, 140)), int(rng.integers(70, 220)), int(rng.integers(12, 28))
        d.ellipse([x - r, y - r, x + r, y + r], fill=colours[k % 4], outline=(0, 0, 0), width=3)


def _m_western(d: ImageDraw.ImageDraw, rng: np.random.Generator, ink: RGB) -> None:
    horizon = int(rng.integers(150, 185))  # sun, flat horizon, a cactus
    sx = int(rng.integers(40, 120))
    d.ellipse([sx - 22, horizon - 60, sx + 22, horizon - 16], fill=(255, 240, 180))
    d.rectangle([0, horizon, _W, _H], fill=ink)
    cx = int(rng.integers(20, 140))
    d.rectangle([cx - 4, horizon - 50, cx + 4, horizon], fill=(40, 90, 40))
    d.rectangle([cx - 16, horizon - 36, cx - 4, horizon - 30], fill=(40, 90, 40))


def _m_thriller(d: ImageDraw.ImageDraw, rng: np.random.Generator, ink: RGB) -> None:
    offset = int(rng.integers(0, 12))  # venetian-blind light across the frame
    for y in range(40 + offset, _H, 14):
        d.rectangle([0, y, _W, y + 4], fill=ink)
    x = int(rng.integers(40, 120))
    d.polygon([(x - 20, _H), (x, 120), (x + 20, _H)], fill=(0, 0, 0))


_MOTIFS: dict[str, Callable[[ImageDraw.ImageDraw, np.random.Generator, RGB], None]] = {
    "Drama": _m_drama, "Comedy": _m_comedy, "Action": _m_action, "Romance": _m_romance,
    "Horror": _m_horror, "Sci-Fi": _m_scifi, "Animation": _m_animation, "Western": _m_western,
    "Thriller": _m_thriller,
}

_FONTS: dict[int, ImageFont.ImageFont | ImageFont.FreeTypeFont] = {}


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    if size not in _FONTS:
        try:
            _FONTS[size] = ImageFont.load_default(size=size)
        except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font
            _FONTS[size] = ImageFont.load_default()
    return _FONTS[size]


def _poster(genres: list[str], title: str, rng: np.random.Generator, noise: float) -> Image.Image:
    first = _BY_NAME[genres[0]]
    top, bottom = first.background
    if len(genres) > 1:  # the second genre tints the lower half of the background
        bottom = _mix(bottom, _BY_NAME[genres[1]].background[1], 0.45)
    img = _gradient(_jitter(top, rng), _jitter(bottom, rng))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 4))):  # distractors in random colours, tied to no genre
        x, y, r = int(rng.integers(0, _W)), int(rng.integers(0, _H)), int(rng.integers(5, 30))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (d.rectangle if rng.random() < 0.5 else d.ellipse)([x - r, y - r, x + r, y + r], fill=colour)
    for k, g in enumerate(genres):
        # Motifs go missing now and then (a poster that hides its genre), the first one less often.
        if rng.random() < (0.08 if k == 0 else 0.18):
            continue
        _MOTIFS[g](d, rng, _jitter(_BY_NAME[g].ink, rng, 30))
    # "Type": the first genre sets the title's size, band and colour.
    size = {"Action": 22, "Horror": 20, "Comedy": 18, "Western": 20}.get(first.name, 16)
    band = 6 if first.name not in ("Romance", "Drama") else _H - 36
    d.text((8, band), title, fill=_jitter(first.ink, rng, 20), font=_font(size))
    arr = np.asarray(img, dtype=np.int16)
    arr = arr + rng.normal(0.0, noise, arr.shape).round().astype(np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _title(genres: list[str], rng: np.random.Generator) -> str:
    a = str(rng.choice(_BY_NAME[genres[0]].title_words))
    b = str(rng.choice(_BY_NAME[genres[-1]].title_words + _NEUTRAL_WORDS)).capitalize()
    return f"The {a} {b}" if rng.random() < 0.5 else f"{a} {b}"


def _plot(genres: list[str], rng: np.random.Generator) -> str:
    words: list[str] = []
    for _ in range(4):
        # Mostly genre words, sometimes neutral ones, so a text head cannot read labels off blindly.
        pool = _BY_NAME[str(rng.choice(genres))].plot_words if rng.random() < 0.75 else _NEUTRAL_WORDS
        words.append(str(rng.choice(pool)))
    return str(rng.choice(_PLOT_TEMPLATES)).format(a=words[0], b=words[1], c=words[2], d=words[3])


def _year(genres: list[str], rng: np.random.Generator) -> int:
    lo = max(_BY_NAME[g].years[0] for g in genres)
    hi = min(_BY_NAME[g].years[1] for g in genres)
    if lo > hi:  # eras that do not overlap (a Western animation): take the first genre's
        lo, hi = _BY_NAME[genres[0]].years
    return int(rng.integers(lo, hi + 1))


_README = """genrekit demo collection
========================

{n} posters drawn procedurally by genrekit.data.demo.make_demo(seed={seed}); no photograph,
artwork or text from any film is used. Titles, years and plots are generated. Released to the
public domain (CC0 1.0): use, change and redistribute freely.

labels.csv: id,title,year,genres,plot,image (genres separated by |, images relative to this folder)
"""


def make_demo(
    out_dir: str | Path,
    n: int = 360,
    seed: int = 0,
    *,
    noise: float = 6.0,
    progress: ProgressFn | None = None,
) -> Path:
    """Write a procedurally drawn, license-clean demo collection and return its ``labels.csv``.

    The folder gets ``images/demo-00000.jpg`` ... (160x240 JPEG), ``labels.csv`` in the manifest
    format (``id,title,year,genres,plot,image``) and a ``README.txt`` stating the license (CC0).
    Item ``i`` depends only on ``seed`` and ``i``, so a larger ``n`` extends a smaller one.

    Args:
        out_dir: destination folder (created; existing demo files are overwritten).
        n: number of items.
        seed: the same seed gives the same bytes.
        noise: standard deviation of the Gaussian pixel noise (0-255 scale).
        progress: called as ``progress("demo", done, n)``.

    Example:
        >>> labels = make_demo("demo_out/data", n=360, seed=0)  # doctest: +SKIP
        >>> read_manifest(labels).vocabulary()[:3]
        ['Drama', 'Comedy', 'Action']
    """
    if n < 1:
        raise ConfigError(f"n={n}: a demo collection needs at least 1 item, e.g. --n 360")
    if noise < 0:
        raise ConfigError(f"noise={noise} must be >= 0")
    progress = progress or null_progress
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        genres = _pick_genres(rng)
        title = _title(genres, rng)
        img = _poster(genres, title, rng, noise)
        rel = f"images/demo-{i:05d}.jpg"
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        atomic_write(out / rel, buf.getvalue())
        rows.append([f"demo-{i:05d}", title, _year(genres, rng), "|".join(genres), _plot(genres, rng), rel])
        progress("demo", i + 1, n)
    labels = out / "labels.csv"
    with atomic_open(labels, newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "title", "year", "genres", "plot", "image"])
        w.writerows(rows)
    atomic_write(out / "README.txt", _README.format(n=n, seed=seed))
    log.info("wrote %d demo posters to %s", n, out)
    return labels
