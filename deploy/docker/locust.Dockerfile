# Load generator: Locust plus the project's client (no torch). Runs load_tests/locustfile.py.
# Build context: the repository root (see docker-compose.yml).
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY client ./client
COPY build ./build
COPY serve ./serve
COPY cli ./cli
RUN pip install ".[load]"
COPY load_tests ./load_tests
COPY measure ./measure
ENTRYPOINT ["locust"]
