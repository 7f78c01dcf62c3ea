# The two commands in the README. Each makes .venv from nothing if it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/demo

.PHONY: demo demo-sid test install clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m gendistill.demo --workdir=$(WORKDIR)

# The demo, then SiD distillation of its teacher into a one-step generator.
demo-sid: install
	$(PY) -m gendistill.demo --workdir=$(WORKDIR) --student_steps=300

test: install
	$(PY) -m pytest -n 2 tests

clean:
	rm -rf $(VENV) workdirs
