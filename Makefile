# cxr_monai: user-facing targets are venv, test, demo.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
INPUT ?=
OUTPUT ?= demo_output
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test demo clean tools

venv: $(STAMP)

# Re-run the install only when the project definition changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[deploy,dev]'
	touch $(STAMP)

# dicom3tools (dciodvfy) validates the DICOM we write; the tests that need it skip when it is missing.
tools:
	@command -v dciodvfy >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get install -y -qq dicom3tools >/dev/null 2>&1 || \
		{ apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dicom3tools >/dev/null 2>&1; } || \
		echo "dicom3tools not installed: DICOM validation tests will skip"; } || true

test: venv tools
	$(PY) -m pytest -q

demo: venv
	$(PY) -m cxr_monai demo $(if $(INPUT),--input "$(INPUT)") --output_dir "$(OUTPUT)"

clean:
	rm -rf $(VENV) demo_output .pytest_cache
