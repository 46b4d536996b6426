"""One module per command, named after it: `genrekit predict` is commands/predict.py."""
