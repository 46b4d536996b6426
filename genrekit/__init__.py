"""genrekit: multi-label genre prediction from posters and plots on cached frozen features."""

__version__ = "0.1.0"
