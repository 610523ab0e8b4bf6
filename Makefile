# pixtral-serve: `make run` serves the embedded tiny Pixtral on 127.0.0.1:8000 (CPU);
# `make test` runs every test. Both set up what they need on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
TINY_MODEL := .cache/tiny-pixtral-12b
TINY_LARGE := .cache/tiny-pixtral-large
# Extra pip flags; when empty, tools/pip_index.py picks them (this machine's pip
# configuration first, else PyTorch's CPU wheel index for torch's "+cpu" build).
PIP_EXTRA ?=

export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0
export VLLM_NO_USAGE_STATS := 1
export DO_NOT_TRACK := 1
export HF_HUB_OFFLINE := 1
# `make run`: Ray Serve's throughput mode and its gRPC message cap (see k8s/image/Dockerfile),
# and Serve's own 429/503 as OpenAI error bodies (serve_app/api/proxy_errors.py);
# the e2e tests set the same for their cluster (tests/e2e/conftest.py). Not the image's HAProxy:
# it binds its stats and metrics ports (8404, 9101) on every interface, and these serve on loopback only.
run: export RAY_SERVE_THROUGHPUT_OPTIMIZED := 1
run: export RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH := 134217728
run: export RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH := serve_app.api.proxy_errors:openai_error_bodies

.PHONY: run test test-scale-out test-haproxy test-colocated install model prometheus manifests clean

install: $(STAMP)

$(STAMP): requirements/cpu.txt requirements/test.txt pyproject.toml tools/patch_torchvision_cpu.py tools/pip_index.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	flags="$$(PIP_EXTRA='$(PIP_EXTRA)' $(PY) tools/pip_index.py)" && \
	  $(PIP) install -q $$flags -r requirements/cpu.txt -r requirements/test.txt
	# PyPI's torchaudio/torchcodec are CUDA builds that break imports beside torch+cpu.
	$(PIP) uninstall -q -y torchaudio torchcodec
	$(PY) tools/patch_torchvision_cpu.py
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

$(TINY_MODEL)/consolidated.safetensors: | $(STAMP)
	$(PY) -m tools.tiny_model $(TINY_MODEL) --shape pixtral-12b

model: $(TINY_MODEL)/consolidated.safetensors

# tools/announce_ready.py prints one line once a chat request is answered (URL, model name).
run: $(STAMP) model
	$(PY) -m tools.announce_ready config.cpu.yaml & \
	RAY_ADDRESS=local $(VENV)/bin/serve run config.cpu.yaml

# tests/e2e/test_metrics_prometheus.py and test_dashboard_queries.py scrape the e2e cluster
# with a real Prometheus (Debian's package; the tests start their own server, so the system
# service the package enables is stopped again); without root or apt-get they skip and say why.
APT_PROMETHEUS := DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null
prometheus:
	@command -v prometheus >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's prometheus package for the metrics tests"; \
	    { $(APT_PROMETHEUS) || { apt-get update -q >/dev/null && $(APT_PROMETHEUS); }; } \
	      && { systemctl disable --now prometheus >/dev/null 2>&1 || true; } \
	      || echo "prometheus could not be installed: the metrics tests will skip"; \
	  else echo "prometheus is not installed and this is not a root apt machine: the metrics tests will skip"; fi; }

test: $(STAMP) model prometheus
	$(PY) -m pytest -q

# Two tiny-model LLM replicas (cache-affinity routing); its own Ray, so its own session.
test-scale-out: $(STAMP) model
	$(PY) -m pytest -q -m scale_out tests/e2e

# The e2e suite behind Serve's HAProxy on port 8000, as the image and the cluster nodes run it
# (README, Direct ingress); its stats and metrics ports (8404, 9101) listen on every interface.
test-haproxy: $(STAMP) model prometheus
	RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY=1 RAY_SERVE_INGRESS_ROUTER_REPLICAS_PER_NODE=2 \
	  $(PY) -m pytest -q tests/e2e

# The e2e suite with every app's API served by its LLM replicas (ingress.colocated), behind Serve's
# Python proxy; the two tests of what only a separate ingress answers (no engine running) are skipped.
test-colocated: $(STAMP) model prometheus
	PIXTRAL_SERVE_E2E_COLOCATED=1 $(PY) -m pytest -q tests/e2e

manifests: $(STAMP)
	$(PY) -m tools.manifests

clean:
	rm -rf $(VENV) .cache .pytest_cache
