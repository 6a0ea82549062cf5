# orderstream application image: one image, the sub-command picks the role
# (docker-compose.yml runs `topics create`, `worker`, `sink`, `serve`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# README.md is the project's `readme` in pyproject.toml: the build needs it.
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . && rm -rf /app/src /app/build

# Run unprivileged; the worker keeps its local table state (RocksDB) in a volume.
RUN useradd --system --create-home --uid 10001 orderstream \
    && mkdir -p /var/lib/orderstream \
    && chown orderstream /var/lib/orderstream
USER orderstream
ENV ORDERSTREAM_DATA_DIR=/var/lib/orderstream

ENTRYPOINT ["orderstream"]
