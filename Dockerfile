# backfleet: one image for workers, the one-shot schema migration, the coordinator and Flower.
#   docker build -t backfleet:local .
#   docker run --rm backfleet:local --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install the project (not editable). Only what the package needs is copied; see .dockerignore.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY backfleet ./backfleet
COPY coordinator ./coordinator
COPY workers ./workers
COPY migrations ./migrations
RUN pip install . \
    && rm -rf /src

# Run as an unprivileged user. docker-compose.yml mounts the host's ./backfleet.toml at
# /etc/backfleet/backfleet.toml (BACKFLEET_CONFIG; a missing file is an error, exit 2) and
# sets the connection URLs through BACKFLEET_* env, which win over the file.
RUN groupadd --system --gid 10001 backfleet \
    && useradd --system --uid 10001 --gid backfleet --create-home --home-dir /home/backfleet backfleet \
    && mkdir -p /etc/backfleet
WORKDIR /home/backfleet
USER backfleet

ENTRYPOINT ["backfleet"]
CMD ["--help"]
