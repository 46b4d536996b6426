"""Using a run on new items: predict posters or texts, score a run on another collection, zero-shot."""

from genrekit.inference import finetuned  # noqa: F401  (registers the finetune run kind)
from genrekit.inference.predict import (
    Prediction,
    RunEvaluation,
    evaluate_run,
    predict_texts,
    rank,
    write_predictions,
    zeroshot_files,
    zeroshot_texts,
)
from genrekit.inference.loaded import LOADERS, Item, LoadedRun, load_run, predict_items
from genrekit.inference import fused as _fused  # noqa: F401,E402  (registers the fused run kind)
from genrekit.inference.evaluate import evaluate_manifest, evaluate_stores

__all__ = [
    "LOADERS",
    "Item",
    "LoadedRun",
    "evaluate_manifest",
    "evaluate_stores",
    "load_run",
    "predict_items",
    "Prediction",
    "RunEvaluation",
    "evaluate_run",
    "predict_texts",
    "rank",
    "write_predictions",
    "zeroshot_files",
    "zeroshot_texts",
]
