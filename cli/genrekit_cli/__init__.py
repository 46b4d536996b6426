"""The genrekit command line (typer + rich). Thin: parse flags, call the library, render."""
