# MONAI Label app (deploy/monailabel_app): its own venv, the server, the integration test.
# Included from the Makefile, which defines PYTHON, MODELS, PY and the deploy-models / tools targets.
#
# The label venv cannot share .venv: monailabel 0.8.5 needs pydicom<3 and numpy<2 (pydicom-seg), and
# `pip install monailabel` alone would pull a CUDA torch through torchvision. Recipe: CPU torch 2.13.0 + torchvision 0.28.0 first, sam2 built without CUDA (a monailabel dependency; the
# app never imports it, nor torchvision), monailabel, the pydicom 2 stack, dcmqi (itkimage2segimage, which
# MONAILabelApp otherwise downloads at start-up with a DICOMweb datastore), then this project without deps.
LABEL_VENV ?= .venv-label
LPY := $(LABEL_VENV)/bin/python
LSTAMP := $(LABEL_VENV)/.installed
LABEL_APP := deploy/monailabel_app
LABEL_TORCH := torch==2.13.0 torchvision==0.28.0
MONAILABEL_SPEC ?= monailabel==0.8.5
STUDIES ?=
PORT ?= 8000
# loopback unless HOST= is given on the make command line (an exported HOST, as some shells set, is ignored)
ifneq ($(origin HOST),command line)
HOST := 127.0.0.1
endif
LABEL_CONF ?=

.PHONY: label-venv label-serve test-label

label-venv: $(LSTAMP)

$(LSTAMP): pyproject.toml $(LABEL_APP)/requirements.txt
	test -x $(LPY) || $(PYTHON) -m venv $(LABEL_VENV)
	$(LPY) -m pip install --quiet --upgrade pip
	$(LPY) -m pip install --quiet $(LABEL_TORCH) wheel setuptools
	SAM2_BUILD_CUDA=0 $(LPY) -m pip install --quiet --no-build-isolation sam2
	$(LPY) -m pip install --quiet "$(MONAILABEL_SPEC)" $(LABEL_TORCH)
	$(LPY) -m pip install --quiet -r $(LABEL_APP)/requirements.txt $(LABEL_TORCH)
	$(LPY) -m pip install --quiet --no-deps -e .
	$(LPY) -c "import monailabel, pydicom, numpy, cxr_monai.io, cxr_monai.inference; print('label venv: monailabel', monailabel.__version__, 'pydicom', pydicom.__version__, 'numpy', numpy.__version__)"
	touch $(LSTAMP)

# STUDIES: a folder of PNG/JPEG/DICOM files, or a DICOMweb root such as http://127.0.0.1:8042/dicom-web.
# The app itself lists .png/.jpg/.jpeg/.dcm/.dicom/.tif/.tiff/.nii/.nii.gz (MONAI_LABEL_DATASTORE_FILE_EXT overrides).
label-serve: label-venv deploy-models
	@if [ -z "$(STUDIES)" ]; then echo "usage: make label-serve STUDIES=folder_or_dicomweb_url [PORT=8000] [HOST=127.0.0.1]" >&2; exit 2; fi
	PATH="$(abspath $(LABEL_VENV))/bin:$$PATH" monailabel start_server --app $(LABEL_APP) --studies "$(STUDIES)" --host $(HOST) --port $(PORT) \
		--conf models_dir "$(abspath $(MODELS))" $(LABEL_CONF)

# The integration test: pytest runs in .venv (it computes the reference answers with cxr_monai there) and
# starts Orthanc and the MONAI Label server (from .venv-label) as subprocesses on free loopback ports;
# tests/label/test_ohif.py also runs the deploy app (.venv-deploy) and opens its outputs in OHIF with chromium.
test-label: venv label-venv deploy-venv tools deploy-models
	CXR_LABEL_VENV="$(abspath $(LABEL_VENV))" CXR_LABEL_MODELS="$(abspath $(MODELS))" \
		CXR_DEPLOY_VENV="$(abspath $(DEPLOY_VENV))" \
		$(PY) -m pytest -q -p no:cacheprovider --timeout=900 tests/label
