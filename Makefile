# pixtral-serve: `make run` serves the embedded tiny Pixtral on 127.0.0.1:8000 (CPU);
# `make test` runs every test. Both set up what they need on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
TINY_MODEL := .cache/tiny-pixtral-12b
TINY_LARGE := .cache/tiny-pixtral-large
# Extra pip flags, e.g. an index that carries torch's "+cpu" builds on your machine.
PIP_EXTRA ?=

export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0
export VLLM_NO_USAGE_STATS := 1
export DO_NOT_TRACK := 1
export HF_HUB_OFFLINE := 1
# Ray Serve's throughput mode and its gRPC message cap: see k8s/image/Dockerfile.
export RAY_SERVE_THROUGHPUT_OPTIMIZED := 1
export RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH := 134217728

.PHONY: run test test-scale-out install model manifests clean

install: $(STAMP)

$(STAMP): requirements/cpu.txt requirements/test.txt pyproject.toml tools/patch_torchvision_cpu.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(PIP_EXTRA) -r requirements/cpu.txt -r requirements/test.txt
	# PyPI's torchaudio/torchcodec are CUDA builds that break imports beside torch+cpu.
	$(PIP) uninstall -q -y torchaudio torchcodec
	$(PY) tools/patch_torchvision_cpu.py
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

$(TINY_MODEL)/consolidated.safetensors: | $(STAMP)
	$(PY) -m serve_app.tiny_model $(TINY_MODEL) --shape pixtral-12b

model: $(TINY_MODEL)/consolidated.safetensors

run: $(STAMP) model
	RAY_ADDRESS=local $(VENV)/bin/serve run config.cpu.yaml

test: $(STAMP) model
	$(PY) -m pytest -q

# Two tiny-model LLM replicas (cache-affinity routing); its own Ray, so its own session.
test-scale-out: $(STAMP) model
	$(PY) -m pytest -q -m scale_out tests/e2e

manifests: $(STAMP)
	$(PY) -m serve_app.manifests

clean:
	rm -rf $(VENV) .cache .pytest_cache
