# Quick start: `make demo` and `make test`. Each creates .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test data clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/compactcl run --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -m "not data and not gpu"

# Fashion-MNIST from Debian (files land in /usr/share/datasets/fashion-mnist/).
data:
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST already installed in /usr/share/datasets/fashion-mnist/"; \
	else \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	fi

clean:
	rm -rf $(VENV) runs build src/*.egg-info
