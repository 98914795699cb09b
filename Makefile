# Quick start: `make demo` and `make test`. Each creates .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test mutation data clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/compactcl run --out runs/demo --resume  # runs, continues a killed run, or says it is complete

test: $(STAMP)
	$(BIN)/python -m pytest -m "not data and not gpu"

# Mutation testing of the core math (not part of `make test`; ~9 min on 2 cores). Config: [tool.mutmut]
# in pyproject.toml; scores and the surviving mutants: notes/mutation.md. `mutmut results` lists them after.
mutation: $(STAMP)
	rm -rf mutants
	$(BIN)/python -m mutmut run --max-children 2
	$(BIN)/python -m mutmut export-cicd-stats

# Fashion-MNIST from Debian (files land in /usr/share/datasets/fashion-mnist/).
data:
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST already installed in /usr/share/datasets/fashion-mnist/"; \
	else \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	fi

clean:
	rm -rf $(VENV) runs build mutants src/*.egg-info
