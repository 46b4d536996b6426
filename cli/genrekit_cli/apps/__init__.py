"""Applications built on the library, beside the CLI: the web server (`genrekit serve`) and the HTML report
(`genrekit report`). Each page is a file in templates/."""
