"""The most similar training posters of a new poster, through a heads run's saved ``knn`` head.

A ``genrekit heads`` run that trained ``knn`` holds an index of the training items' embeddings
(``RUNS/knn``), and ``RUNS/knn/predictions.npz`` names those items in the index's row order
(``ids_train``). With the manifest recorded in the store header, each neighbour is an id, a title,
its genres and its poster file. ``genrekit serve`` shows them beside the genres.

Example:
    >>> idx = SimilarIndex.for_run(Path("runs/"))  # doctest: +SKIP
    >>> idx.search("poster.jpg", k=6)[0]["title"]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genrekit.errors import ConfigError, GenrekitError, UnreadableImageError
from genrekit.heads.saved import load_head
from genrekit.rundir import PREDICTIONS_FILE

KNN = "knn"


def knn_dir(run_path: Path) -> Path | None:
    """The ``knn`` head of the heads run at ``run_path`` (the run or one of its heads), if any."""
    run_path = Path(run_path)
    for d in (run_path, run_path / KNN, run_path.parent / KNN):
        if d.name == KNN and (d / PREDICTIONS_FILE).is_file():
            return d
    return None


class SimilarIndex:
    """A saved knn head, the training items behind its rows, and the encoder of its store."""

    def __init__(self, directory: Path, device: str = "cpu", run=None):

        saved = load_head(directory)
        head = saved.model
        if saved.header is None or saved.header.modality != "image":
            raise ConfigError(f"{directory}: the knn head was not trained on poster features")
        with np.load(directory / PREDICTIONS_FILE, allow_pickle=False) as z:
            ids = [str(i) for i in z["ids_train"]]
        if len(ids) != len(head.Y_):
            raise ConfigError(f"{directory}: the knn head holds {len(head.Y_)} rows but the run trained on {len(ids)} items "
                              f"(oversampled?), so its rows cannot be named")  # fmt: skip
        source = saved.header.manifest_source()
        if source is None:
            raise ConfigError("the store records no manifest, so the training posters cannot be shown")
        if not Path(source.path).is_absolute():  # a store made before paths were recorded absolute
            raise ConfigError(f"the store records its manifest as a relative path ({source.path}), which would be read against "
                              f"the working directory; re-extract the store to show its training posters")  # fmt: skip
        try:
            samples = {s.id: s for s in source.read().samples}
        except GenrekitError as e:
            raise ConfigError(f"the training posters cannot be shown: {e}") from None
        self.directory, self.saved, self.head, self.device = directory, saved, head, device
        self.items = [samples.get(i) for i in ids]
        # Only absolute paths (the manifest reader resolves relative cells against the manifest's
        # folder): nothing here is read relative to the server's working directory.
        self.posters = {s.id: s.image for s in self.items if s is not None and s.image and Path(s.image).is_absolute() and Path(s.image).is_file()}
        # A head of the same store already rebuilds this encoder: share it rather than load a second copy.
        self._run = run if getattr(getattr(run, "saved", None), "header", None) == saved.header else None
        self._encoder = None

    @classmethod
    def for_run(cls, run_path: Path, device: str = "cpu", run=None) -> SimilarIndex:
        """The index of the run at ``run_path`` (``run``: the loaded run, whose encoder is shared
        when it reads the same store); :class:`ConfigError` saying why when it has none."""
        d = knn_dir(run_path)
        if d is None:
            raise ConfigError(f"{run_path} has no knn head (train one with `genrekit heads --head knn ...`)")
        return cls(d, device, run)

    @property
    def encoder(self):
        if self._run is not None:
            return self._run.encoder
        if self._encoder is None:
            from genrekit.extraction import encoder_from_header

            self._encoder = encoder_from_header(self.saved.header, device=self.device)
        return self._encoder

    def search(self, path: str | bytes, k: int = 6) -> list[dict]:
        """The ``k`` training items nearest to the poster (a file path, or its bytes), most similar first.

        Raises :class:`~genrekit.errors.UnreadableImageError` for a poster that cannot be read.
        """
        from genrekit.extraction import embed_images

        X, _, failures = embed_images(self.encoder, self.saved.header, [path])
        if failures:
            raise UnreadableImageError(failures[0][1])
        sims, idx = self.head.kneighbors(X, k)
        genres = list(self.saved.genres)
        out = []
        for s, i in zip(sims[0], idx[0]):
            if i < 0:  # an approximate index may return fewer than k
                continue
            item = self.items[int(i)]
            labels = [g for g, y in zip(genres, self.head.Y_[int(i)]) if y]
            out.append({"id": item.id if item else None, "title": item.title if item else None, "genres": labels,
                        "similarity": round(float(s), 4), "has_poster": bool(item and item.id in self.posters)})  # fmt: skip
        return out

