# cxr_monai: user-facing targets are venv, test, demo, deploy-models, map, label-venv, label-serve.
PYTHON ?= python3
VENV ?= .venv
DEPLOY_VENV ?= .venv-deploy
TORCH_SPEC ?= torch==2.13.0
INPUT ?=
SITE ?=
OUTPUT ?= demo_output
MODELS ?= .deploy_models
MAP_OUT ?= map_build
PY := $(VENV)/bin/python
DPY := $(DEPLOY_VENV)/bin/python
STAMP := $(VENV)/.installed
DSTAMP := $(DEPLOY_VENV)/.installed
# The test targets fail on any skipped test while ../shared/data (or CXR_SHARED_DATA) exists (tests/conftest.py):
# with the data present a skip means something broke. A clone without the data keeps skip-with-a-reason.
export CXR_FAIL_ON_SKIP ?= 1

.PHONY: venv deploy-venv test test-core test-deploy test-floors demo bundle-demo deploy-models map map-tools map-run pacs pacs-worker pacs-status bench clean tools

venv: $(STAMP)

# Core venv (bundles, training, tests): no MONAI Deploy SDK here, so `import monai` never loads holoscan.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The deploy app's venv: the project plus monai-deploy-app-sdk and holoscan (what the MAP image holds).
deploy-venv: $(DSTAMP)

$(DSTAMP): pyproject.toml
	test -x $(DPY) || $(PYTHON) -m venv $(DEPLOY_VENV)
	$(DPY) -m pip install --quiet --upgrade pip
	$(DPY) -m pip install --quiet "$(TORCH_SPEC)"
	$(DPY) -m pip install --quiet -e '.[deploy,dev,pacs]'
	touch $(DSTAMP)

# Debian tools the tests use for real: dciodvfy (dicom3tools) validates the DICOM we write, Orthanc is the
# PACS the deploy tests store into, dcmtk is an independent DICOM client, chromium (headless) opens OHIF on the
# app's outputs (tests/label/test_ohif.py). A failed install fails the target.
APT_PKGS := dicom3tools orthanc orthanc-dicomweb orthanc-python dcmtk chromium redis-server
tools:
	@if command -v dciodvfy >/dev/null 2>&1 && command -v Orthanc >/dev/null 2>&1 && command -v storescu >/dev/null 2>&1 \
		&& command -v chromium >/dev/null 2>&1 && command -v redis-server >/dev/null 2>&1 \
		&& [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] && [ -f /usr/share/orthanc/plugins/libOrthancPython.so ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PKGS) >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PKGS); }; \
	else echo "install the Debian packages $(APT_PKGS) (needs root and apt-get)" >&2; exit 1; fi

test: test-core test-deploy test-label

# The core suite against the lowest versions pyproject.toml allows (.ci/floors.txt); not part of `make test`.
test-floors: tools
	test -x .venv-floors/bin/python || $(PYTHON) -m venv .venv-floors
	.venv-floors/bin/python -m pip install --quiet --upgrade pip
	.venv-floors/bin/python -m pip install --quiet "$(TORCH_SPEC)"
	.venv-floors/bin/python -m pip install --quiet -e '.[dev]' -c .ci/floors.txt
	.venv-floors/bin/python -m pytest -q --ignore=tests/deploy --ignore=tests/label

test-core: venv tools
	$(PY) -m pytest -q --ignore=tests/deploy --ignore=tests/label

# holoscan wants a 32 MB stack (it warns below): the deploy tests run the app in-process under that limit.
test-deploy: deploy-venv tools map-tools deploy-models
	ulimit -s 32768 && $(DPY) -m pytest -q tests/deploy

# Export the bundles into the SDK's named-model layout: MODELS/cxr_pneumonia/model.ts, MODELS/cxr_sr/model.ts,
# MODELS/cxr_scope/model.ts (the classifier's intended-population gate) and MODELS/cxr_lung/model.ts (the
# lung-field network whose view the classifier and the gate read).
# SITE=dir (a configs/commission.json output folder) embeds that site's calibration in the classifier.
deploy-models: venv
	$(PY) -m cxr_monai deploy_models --bundles_dir bundles --out_dir "$(MODELS)" $(if $(SITE),--site_dir "$(SITE)")

# The deploy app on the two real example films (examples/kermany: one NORMAL, one PNEUMONIA) and the phantom
# (default), or on INPUT=dir_of_dicom.
demo: deploy-venv deploy-models
	@if [ -z "$(INPUT)" ]; then rm -rf "$(OUTPUT)/input"; mkdir -p "$(OUTPUT)/input"; cp examples/kermany/*.dcm "$(OUTPUT)/input/"; \
		$(PY) -m cxr_monai phantom --out_dir "$(OUTPUT)/input"; fi
	$(DPY) deploy/cxr_enhance_classify -i "$(if $(INPUT),$(INPUT),$(OUTPUT)/input)" -o "$(OUTPUT)/results" -m "$(MODELS)"
	@echo "outputs: $(OUTPUT)/results (results.json, <StudyUID>/enhanced, report, gradcam, summary)"

# The previous bundle-level demo (PNG outputs through the bundles' inference configs).
bundle-demo: venv
	$(PY) -m cxr_monai demo $(if $(INPUT),--input "$(INPUT)") --output_dir "$(OUTPUT)/bundle_demo"

# MAP: the packager writes the manifests and its Dockerfile (MAP_OUT/app.json, pkg.json, Dockerfile.packager), then
# podman builds the image offline (deploy/packaging/build_image.py: Debian base made by debootstrap, cached, or
# MAP_BASE=image; wheelhouse cached in MAP_OUT/wheelhouse). Last line: "MAP image built: NAME:TAG".
MAP_TAG ?= cxr-enhance-classify:0.1.0
MAP_IMAGE ?= localhost/$(MAP_TAG)
MAP_BASE ?=
MAP_APT_PKGS := podman runc debootstrap
map-tools:
	@if command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1 && { command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ]; }; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(MAP_APT_PKGS) >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(MAP_APT_PKGS); }; \
	else echo "install the Debian packages $(MAP_APT_PKGS) (needs root and apt-get)" >&2; exit 1; fi

map: deploy-venv deploy-models map-tools
	$(DPY) deploy/packaging/make_map.py --models "$(MODELS)" --out "$(MAP_OUT)" --tag "$(MAP_TAG)"
	$(DPY) deploy/packaging/build_image.py --models "$(MODELS)" --map-dir "$(MAP_OUT)" --tag "$(MAP_TAG)" $(if $(MAP_BASE),--base "$(MAP_BASE)")

# Run the MAP image like `monai-deploy run`: make map-run INPUT=dir OUTPUT=dir [CPUS=n] (input read-only, no network).
CPUS ?=
map-run: map-tools
	@test -n "$(INPUT)" || { echo "usage: make map-run INPUT=dir OUTPUT=dir [CPUS=n]" >&2; exit 2; }
	$(PYTHON) deploy/packaging/run_map.py --image "$(MAP_IMAGE)" --input "$(INPUT)" --output "$(OUTPUT)" $(if $(CPUS),--cpus "$(CPUS)")

# PACS loop (deploy/pacs, README "PACS"): Orthanc on 127.0.0.1 with authentication (PACS_DIR/credentials) and a
# sender whitelist, whose plugin only puts stable studies on a durable huey queue (SQLite in PACS_DIR, or
# QUEUE=redis://HOST:PORT/N); workers run the app (warm: models kept loaded) and store the results through REST.
# make pacs PACS_DIR=dir HTTP_PORT=p DICOM_PORT=q [STABLE_AGE=s WORKERS=n PACS_RUNNER=warm|venv|map|map-warm|auto
#   PACS_TIMEOUT=s PACS_RETRIES=n PACS_RETRY_DELAYS=a,b SENDERS="AET@host ..." QUEUE=url KEEP_WORK=1 PACS_REMOTE=1
#   SITE=dir MONITOR_EVERY=n]   (SITE: a commissioned site folder; each worker keeps every run's results.json under
#   its work folder's results/ and runs the site's drift monitor every MONITOR_EVERY stored studies: monitor/monitor.json)
# stop: kill $$(cat dir/pacs.pid)
PACS_DIR ?= pacs_data
HTTP_PORT ?= 8042
DICOM_PORT ?= 4242
STABLE_AGE ?= 5
WORKERS ?= 1
PACS_RUNNER ?= warm
PACS_TIMEOUT ?= 600
PACS_RETRIES ?= 2
PACS_RETRY_DELAYS ?= 10,60
SENDERS ?= STORESCU@127.0.0.1
QUEUE ?=
MONITOR_EVERY ?= 50
pacs: tools deploy-venv
	$(PYTHON) deploy/pacs/run_pacs.py --dir "$(PACS_DIR)" --http-port $(HTTP_PORT) --dicom-port $(DICOM_PORT) \
		--stable-age $(STABLE_AGE) --workers $(WORKERS) --runner $(PACS_RUNNER) --timeout $(PACS_TIMEOUT) \
		--retries $(PACS_RETRIES) --retry-delays "$(PACS_RETRY_DELAYS)" --senders "$(SENDERS)" \
		--image "$(MAP_IMAGE)" --models "$(MODELS)" $(if $(QUEUE),--queue "$(QUEUE)") $(if $(PACS_REMOTE),--remote-access) \
		$(if $(SITE),--site "$(SITE)" --monitor-every $(MONITOR_EVERY))

# One more worker, on this or any machine that reaches the PACS's REST port and the queue:
# make pacs-worker QUEUE=redis://HOST:PORT/N PACS_URL=http://HOST:PORT PACS_CREDENTIALS=file WORKER_DIR=dir [MODELS=dir
#   SITE=dir MONITOR_EVERY=n]   (results copies in WORKER_DIR/results, drift monitor in WORKER_DIR/monitor)
PACS_URL ?= http://127.0.0.1:$(HTTP_PORT)
PACS_CREDENTIALS ?= $(PACS_DIR)/credentials
WORKER_DIR ?= pacs_worker
pacs-worker: deploy-venv
	@test -n "$(QUEUE)" || { echo "usage: make pacs-worker QUEUE=redis://HOST:PORT/N PACS_URL=... PACS_CREDENTIALS=file WORKER_DIR=dir" >&2; exit 2; }
	$(DPY) deploy/pacs/worker.py --queue "$(QUEUE)" --pacs-url "$(PACS_URL)" --credentials "$(PACS_CREDENTIALS)" \
		--work-dir "$(WORKER_DIR)" --models "$(MODELS)" --runner $(PACS_RUNNER) --timeout $(PACS_TIMEOUT) \
		--retries $(PACS_RETRIES) --retry-delays "$(PACS_RETRY_DELAYS)" --image "$(MAP_IMAGE)" \
		$(if $(SITE),--site "$(SITE)" --monitor-every $(MONITOR_EVERY))

# Queued, retry-scheduled, running, done and failed counts of the queue (PACS_DIR's SQLite, or QUEUE=url).
pacs-status: deploy-venv
	$(DPY) deploy/pacs/pacs_queue.py --queue "$(if $(QUEUE),$(QUEUE),sqlite:///$(abspath $(PACS_DIR))/queue.db)"

# One benchmark run on this machine (SR and classifier runtimes side by side, GEMM reference): benchmarks/results/
BENCH_OUT ?= benchmarks/results
bench: venv
	$(PY) -m benchmarks.run --out "$(BENCH_OUT)"

clean:
	rm -rf $(VENV) $(DEPLOY_VENV) $(LABEL_VENV) $(MODELS) $(MAP_OUT) demo_output .pytest_cache

# MONAI Label app: label-venv, label-serve, test-label
include deploy/monailabel_app/label.mk
