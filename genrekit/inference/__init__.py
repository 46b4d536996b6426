"""Using a run on new items: predict posters or texts, score a run on another collection, zero-shot."""

from genrekit.inference import finetuned  # noqa: F401  (registers the finetune run kind)
from genrekit.inference.predict import (
    Prediction,
    RunEvaluation,
    evaluate_run,
    predict_files,
    predict_texts,
    rank,
    write_predictions,
    zeroshot_files,
    zeroshot_texts,
)

__all__ = [
    "Prediction",
    "RunEvaluation",
    "evaluate_run",
    "predict_files",
    "predict_texts",
    "rank",
    "write_predictions",
    "zeroshot_files",
    "zeroshot_texts",
]
