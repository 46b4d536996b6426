"""``zeroshot``: genres from the cosine similarity between an item and prompts about each genre.

The prompts ("a poster of a horror movie.", "a horror film." ...) are embedded by the text tower
of the same model that embedded the items (a CLIP model for posters, or a sentence encoder for
plots), each genre's prompts are averaged after L2 normalisation (prompt ensembling), and the
head turns similarities into probabilities with one logistic map per genre fitted on validation
(an increasing map, so each genre's ranking, hence its AUC and AP, stays as zero-shot made it;
a genre whose prompts rank backwards on validation gets its prior instead).

The head gets prompt embeddings as an array; :func:`build_prompt_embeddings` makes them from any
``encode_texts`` callable, so nothing here imports an encoder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression

from genrekit.errors import ConfigError
from genrekit.heads.base import MultiLabelHead, l2_normalise

IMAGE_TEMPLATES: tuple[str, ...] = (
    "a poster of a {} movie.",
    "a movie poster for a {} film.",
    "the poster of a {} film.",
    "a {} movie.",
    "a {} film.",
    "an image from a {} movie.",
)
TEXT_TEMPLATES: tuple[str, ...] = (
    "A {} movie.",
    "This is a {} film.",
    "The plot of a {} movie.",
    "A story in the {} genre.",
)
# Genres used by `genrekit zeroshot` when none are given: the most common IMDb genres.
DEFAULT_GENRES: tuple[str, ...] = (
    "Drama", "Comedy", "Romance", "Action", "Thriller", "Horror", "Adventure", "Crime", "Family",
    "Fantasy", "Mystery", "Sci-Fi", "Animation", "War", "Music", "Musical", "History", "Biography",
    "Sport", "Western", "Documentary",
)  # fmt: skip
# How a genre label reads inside "a {} movie." when its label is not a plain adjective.
_PHRASES = {
    "sci-fi": "science fiction",
    "film-noir": "film noir",
    "biography": "biographical",
    "history": "historical",
    "sport": "sports",
    "animation": "animated",
    "talk-show": "talk show",
    "game-show": "game show",
    "reality-tv": "reality TV",
}


def genre_phrase(genre: str) -> str:
    """How ``genre`` reads in a prompt: ``"Sci-Fi"`` -> ``"science fiction"``, ``"Horror"`` -> ``"horror"``."""
    return _PHRASES.get(genre.lower(), genre.lower())


def templates_for(modality: str) -> tuple[str, ...]:
    """Prompt templates for items of this modality (``"image"`` posters or ``"text"`` plots)."""
    return IMAGE_TEMPLATES if modality == "image" else TEXT_TEMPLATES


def build_prompt_embeddings(
    encode_texts: Callable[[list[str]], np.ndarray],
    genres: Sequence[str],
    templates: Sequence[str] = IMAGE_TEMPLATES,
) -> np.ndarray:
    """One unit-length embedding per genre: the mean of its normalised prompt embeddings.

    Args:
        encode_texts: the model's text tower, e.g. ``encoder.encode_texts``.
        genres: genre labels, in the column order of the head.
        templates: format strings with one ``{}`` for the genre phrase.

    Returns:
        (G, d) float32.

    Example:
        >>> E = build_prompt_embeddings(enc.encode_texts, ["Horror", "Comedy"])  # doctest: +SKIP
    """
    if not templates or any("{}" not in t for t in templates):
        raise ConfigError(f"prompt templates must each contain '{{}}' for the genre; got {list(templates)}")
    prompts = [t.format(genre_phrase(g)) for g in genres for t in templates]
    E = l2_normalise(np.asarray(encode_texts(prompts), dtype=np.float32))
    E = E.reshape(len(genres), len(templates), -1).mean(axis=1)
    return l2_normalise(E)


def cosine_scores(X: np.ndarray, prompt_embeddings: np.ndarray) -> np.ndarray:
    """(n, G) cosine similarities between items and genre prompt embeddings."""
    return l2_normalise(X) @ l2_normalise(prompt_embeddings).T


def softmax_probabilities(scores: np.ndarray, temperature: float = 0.01) -> np.ndarray:
    """Uncalibrated probabilities over genres (CLIP's softmax at logit scale 1/temperature).

    Used when there is no labelled validation set to calibrate on (``genrekit zeroshot``).
    """
    z = scores / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class ZeroShotHead(MultiLabelHead):
    """Prompt similarity, mapped to probabilities by per-genre logistic calibration.

    Args:
        prompt_embeddings: (G, d) genre prompt embeddings from the item encoder's text tower
            (see :func:`build_prompt_embeddings`), in the column order of the labels.
    """

    def __init__(self, prompt_embeddings: np.ndarray | None = None):
        self.prompt_embeddings = prompt_embeddings

    def fit(self, X, Y, X_val=None, Y_val=None) -> ZeroShotHead:
        """Calibrate on ``(X_val, Y_val)`` when given (else on ``(X, Y)``); no other training."""
        X, Y, X_val, Y_val = self._fit_inputs(X, Y, X_val, Y_val)
        if self.prompt_embeddings is None:
            raise ConfigError("ZeroShotHead needs prompt_embeddings (G, d): build them with build_prompt_embeddings")
        E = np.asarray(self.prompt_embeddings, dtype=np.float32)
        if E.shape != (Y.shape[1], X.shape[1]):
            raise ConfigError(
                f"prompt_embeddings have shape {E.shape}; expected ({Y.shape[1]} genres, {X.shape[1]} features) "
                "from the same model's text tower"
            )
        Xc, Yc = (X_val, Y_val) if X_val is not None else (X, Y)
        S = cosine_scores(Xc, E)
        self.prompts_ = l2_normalise(E)
        self.coef_ = np.zeros(Y.shape[1], np.float64)
        self.intercept_ = np.zeros(Y.shape[1], np.float64)
        for j in range(Y.shape[1]):
            y = Yc[:, j]
            if 0 < y.sum() < len(y):
                # Scores live in a narrow band (CLIP cosines differ by ~0.05), hence the scaling
                # before a nearly unregularised fit.
                lr = LogisticRegression(C=1e4).fit(S[:, j : j + 1] * 100.0, y)
                if lr.coef_[0, 0] > 0:
                    self.coef_[j], self.intercept_[j] = 100.0 * lr.coef_[0, 0], lr.intercept_[0]
                    continue
            # No positives or negatives to calibrate on, or prompts that rank backwards (a learnt
            # negative slope would no longer be zero-shot): the genre's prior, for every item.
            prior = (y.sum() + 0.5) / (len(y) + 1.0)
            self.intercept_[j] = np.log(prior / (1 - prior))
        return self

    def decision_function(self, X) -> np.ndarray:
        """The raw cosine similarities (n, G)."""
        return cosine_scores(self._check_X(X), self.prompts_)

    def predict_proba(self, X) -> np.ndarray:
        z = self.decision_function(X) * self.coef_ + self.intercept_
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    def get_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """Fitted state as (JSON-able dict, named arrays)."""
        meta = {"n_features_in_": int(self.n_features_in_), "n_genres_": int(self.n_genres_)}
        return meta, {"prompts_": self.prompts_, "coef_": self.coef_, "intercept_": self.intercept_}

    def set_state(self, meta: dict, arrays: dict[str, np.ndarray]) -> ZeroShotHead:
        """Restore what :meth:`get_state` returned."""
        self.n_features_in_, self.n_genres_ = meta["n_features_in_"], meta["n_genres_"]
        self.prompts_, self.coef_, self.intercept_ = arrays["prompts_"], arrays["coef_"], arrays["intercept_"]
        self.prompt_embeddings = self.prompts_
        return self
