# specc — the two commands in the README: `make demo` and `make test`.
# The venv is created on first use; torch is pinned to the CPU wheel through constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU torch wheel lies in /opt/wheels on these machines; elsewhere pip uses the index.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
PIP := $(BIN)/python -m pip install -q -c constraints.txt $(FIND_LINKS)

.PHONY: demo test bench venv clean shapes fuzz lm-demo text

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) "torch==2.13.0"
	$(PIP) -e ".[dev]"
	touch $@

demo: venv
	$(BIN)/specc summary specs/digits_cnn.yaml
	$(BIN)/specc train specs/digits_cnn.yaml --out runs

# the synthetic image folder of specs/folder_cnn.yaml (no download)
shapes: venv
	$(BIN)/python specs/make_shapes.py

# the text corpus of specs/gpt_char.yaml: Python's own documentation (pydoc_data.topics, no download)
text: venv
	$(BIN)/python specs/make_text.py

# a character-level GPT trained on that text, then a sample from its best checkpoint (docs/train.md#text)
lm-demo: text
	$(BIN)/specc train specs/gpt_char.yaml --out runs
	$(BIN)/specc generate specs/gpt_char.yaml --checkpoint "$$(ls -d runs/gpt_char/*/ | tail -n 1)best.pt" \
		--prompt "The " --max-new-tokens 300 --temperature 0.8 --top-k 40 --seed 0

test: venv
	$(BIN)/python -m pytest -n 2 -q

# `make bench BENCH_ARGS=--quick` checks the harness; BENCH_ARGS takes any benchmarks/run.py flag.
BENCH_ARGS ?=
bench: venv
	$(PIP) -e ".[dev,bench]"
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

# `make fuzz N=1000 SEED=0`: N mutants of every spec in specs/, each `specc check` held to exit 0/2,
# located errors, 5 s and 1 GB (benchmarks/fuzz.py; tests/test_fuzz.py runs a small N in `make test`).
N ?= 1000
SEED ?= 0
fuzz: venv
	$(BIN)/python benchmarks/fuzz.py --n $(N) --seed $(SEED)

clean:
	rm -rf $(VENV) runs .pytest_cache
