# cxr_monai: user-facing targets are venv, test, demo.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
INPUT ?=
OUTPUT ?= demo_output
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test demo clean

venv: $(STAMP)

# Re-run the install only when the project definition changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[deploy,dev]'
	touch $(STAMP)

test: venv
	$(PY) -m pytest -q

demo: venv
	$(PY) -m cxr_monai demo $(if $(INPUT),--input "$(INPUT)") --output_dir "$(OUTPUT)"

clean:
	rm -rf $(VENV) demo_output .pytest_cache
