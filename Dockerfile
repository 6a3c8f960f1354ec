# llmgateway image: `llmgateway` is the entrypoint, so the command is any of its subcommands
# (gateway, worker, serve, status, db upgrade...). Built from uv.lock, runs as a non-root user.
#   docker build -t llmgateway .        (or: podman build -t llmgateway .)
#   docker run -d -p 55300:55300 --env-file .env -v llmgateway_data:/app/data \
#       -v "$PWD/keys:/app/keys:ro" llmgateway      (serve: gateway and Keeper, SQLite in the volume)

# --- build: resolve the locked dependencies into /app/.venv ---------------------------------
FROM docker.io/library/python:3.11-slim AS build
COPY --from=ghcr.io/astral-sh/uv:0.13.8 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never UV_PYTHON=/usr/local/bin/python3
WORKDIR /app
# dependencies first: this layer is reused until uv.lock changes
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project
COPY README.md ./
COPY src ./src
RUN uv sync --frozen --no-dev --no-editable

# --- runtime: the virtual environment, the default config, an unprivileged user ------------
FROM docker.io/library/python:3.11-slim AS runtime
RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin llmgateway
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
COPY config ./config
RUN mkdir -p data keys logs && chown llmgateway:llmgateway data logs
# the embedded store (SQLite, `serve`'s default) lives here: mount a named volume on it
# (`-v llmgateway_data:/app/data`) so it outlives the container
VOLUME ["/app/data"]
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LLMGATEWAY_CONFIG=/app/config/providers.yaml
USER llmgateway
EXPOSE 55300 9464
# the gateway's liveness; compose gives the worker its own check (its metrics port)
HEALTHCHECK --interval=10s --timeout=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:55300/healthz', timeout=3)"]
ENTRYPOINT ["llmgateway"]
CMD ["serve", "--host", "0.0.0.0", "--port", "55300"]
