# The two commands in the README. Each makes .venv from nothing if it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/demo

.PHONY: demo test install clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The tests also compile for TPU topologies (tests/test_tpu_compile.py): libtpu, ~210 MB, a few seconds to install.
$(VENV)/.installed-tpu: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test,tpu]'
	touch $@

# The digits teacher, then SiD distillation of it into a one-step generator (DEMO_FLAGS=--student_steps=0: teacher only).
demo: install
	$(PY) -m gendistill.demo --workdir=$(WORKDIR) $(DEMO_FLAGS)

# One pytest worker per core, at most 4 (each holds its own compiled programs: ~2-3 GB at the peak).
JOBS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); if [ $$n -gt 4 ]; then n=4; fi; if [ $$n -lt 2 ]; then n=2; fi; echo $$n)

test: install $(VENV)/.installed-tpu
	$(PY) -m pytest -n $(JOBS) --durations=15 tests

clean:
	rm -rf $(VENV) workdirs
