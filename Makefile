# Two commands from a fresh clone:  `make demo` (the main job)  and  `make test`.
# Both create .venv and install genrekit into it first (only again when pyproject.toml changes).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.genrekit-$(shell cksum pyproject.toml | cut -d' ' -f1)
DEMO   ?= demo_out

.PHONY: setup demo test test-all bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.genrekit-* && touch $@

setup: $(STAMP)

demo: setup  ## the main job on the embedded demo set: no network, no GPU, no data of your own
	$(BIN)/genrekit data demo --out $(DEMO)/data
	$(BIN)/genrekit extract --backbone colorstats --data $(DEMO)/data/labels.csv --out $(DEMO)/posters.h5
	$(BIN)/genrekit store info $(DEMO)/posters.h5
	$(BIN)/genrekit heads --store $(DEMO)/posters.h5 --all --out $(DEMO)/runs
	$(BIN)/genrekit data demo --out $(DEMO)/unseen --n 3 --seed 7   # posters no head has seen
	$(BIN)/genrekit predict --run $(DEMO)/runs $(DEMO)/unseen/images/*.jpg
	@cat $(DEMO)/unseen/labels.csv | cut -d, -f1,4
	$(BIN)/genrekit report $(DEMO)/runs --out $(DEMO)/report.html
	$(BIN)/genrekit explain --run $(DEMO)/runs $(DEMO)/unseen/images/*.jpg --top-k 3 --out $(DEMO)/explain
	@echo "report: $(DEMO)/report.html (open it in a browser); saliency maps: $(DEMO)/explain/ (one PNG per poster, maps.npz, explain.json)"

test: setup  ## the offline CPU test suite (slow and GPU tests are deselected)
	$(BIN)/pytest

test-all: setup
	$(BIN)/pytest -m "not gpu and not network"

clean:
	rm -rf $(DEMO) .pytest_cache
