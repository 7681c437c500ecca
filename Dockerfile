# syntax=docker/dockerfile:1
#
# One image for every role of the fleet; the command picks the role:
#   worker   celery -A workers worker ...   (the default CMD below)
#   beat     celery -A workers beat --loglevel INFO
#   flower   celery -A workers flower
#   producer migrator enqueue|status|sync ...
# Every setting comes from MIGRATOR_* environment variables at run time: nothing secret is
# baked in (the build context holds only the sources, see .dockerignore).

# --- build: the project and every dependency as wheels -----------------------------------
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Exactly what setuptools packs: the metadata (pyproject + the readme it names) and the two
# packages. Anything else changing does not invalidate the build.
COPY pyproject.toml README.md ./
COPY migrator ./migrator
COPY workers ./workers
# Every dependency ships binary wheels for 3.11 (amd64, arm64): no compiler needed here either.
# The cache mount keeps downloads between builds without putting them in a layer.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --wheel-dir /wheels .

# --- final: the wheels installed, nothing else -------------------------------------------
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Bind-mounted from the build stage, so no layer of this image ever holds the wheel files.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels migrator
# A fixed numeric uid (Kubernetes' runAsNonRoot can only verify a number). Its home is the
# working directory: celery beat keeps its schedule state (celerybeat-schedule) there and
# `migrator sync` its digest record (.migrator/).
RUN groupadd --system --gid 10001 migrator \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/migrator --create-home \
       --shell /usr/sbin/nologin migrator
WORKDIR /var/lib/migrator
USER 10001:10001
# No HEALTHCHECK here: one image serves four roles with different probes; docker-compose.yml
# gives each service its own.
CMD ["celery", "-A", "workers", "worker", "--pool", "threads", "--concurrency", "8", \
     "--loglevel", "INFO", "--without-gossip", "--without-mingle"]
