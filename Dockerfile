# The gateway alone. docker-compose.yml runs it with Ollama, Prometheus and Grafana.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install .

# The shipped config (echo backends), so the image runs on its own; compose mounts its own.
COPY gateway.yaml /etc/gateway/gateway.yaml

RUN useradd --system --no-create-home --shell /usr/sbin/nologin gateway
USER gateway
WORKDIR /

EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2)"]

# Exec form: the gateway is PID 1 and gets SIGTERM (drain) and SIGHUP (reload) itself.
CMD ["gateway", "serve", "--config", "/etc/gateway/gateway.yaml", "--host", "0.0.0.0"]
