# The two commands of the README:
#   make quickstart   set up, then run the whole chain on the embedded default (tiny preset, no Slurm)
#   make test         set up, start the local two-node Slurm cluster, run the tests (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RUN    ?= runs/quickstart

.PHONY: setup quickstart test test-fast kernels-bench legacy browser slurm-start slurm-stop clean

setup: $(VENV)/.installed

# DS_BUILD_OPS=0: DeepSpeed builds its C++ ops on first use instead of at install time.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel setuptools
	DS_BUILD_OPS=0 $(BIN)/python -m pip install -q -e '.[test]'
	touch $@

quickstart: setup
	$(BIN)/python -m hpc.submit pipeline --run $(RUN) --preset tiny --cluster local --wait
	$(BIN)/python -m hpc.submit status --run $(RUN)

legacy: setup
	bash scripts/legacy_rewards.sh

browser:
	bash scripts/install_browser.sh

slurm-start: setup
	$(BIN)/python -m hpc.local_slurm start

slurm-stop:
	$(BIN)/python -m hpc.local_slurm stop

# The test suite needs: the legacy reward venvs (cross-checks), Chromium (report and study pages) and
# the local two-node Slurm cluster (array jobs, faults, requeue, multi-node training). Each step is idempotent.
test: setup legacy browser slurm-start
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slurm and not slow"

kernels-bench: setup
	$(BIN)/python -m pytest kernels --benchmark -q

clean:
	rm -rf $(VENV) .venv-legacy runs .pytest_cache .benchmarks
