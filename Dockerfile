# syntax=docker/dockerfile:1
# One image for the worker (`concord worker`), the HTTP app (`concord api`) and the CLI
# (`concord setup`, `concord health`, `concord state CONN`, ...). No ENTRYPOINT: a service's
# command is the whole `concord ...` line, as run outside a container.
#
# Dependencies come only from requirements.lock (runtime + the otlp extra; `make lock`
# re-pins it): the runtime stage installs from the builder's wheels with --no-index, so a
# dependency missing from the lock fails the build instead of floating to a new version.
# No secret is ever copied or baked in: keys and passwords arrive as environment at run time
# (docker-compose.yml, .env.example), and .dockerignore keeps .env and friends out of the context.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# Pinned dependencies first: this layer is reused until the lock changes.
COPY requirements.lock ./
RUN pip wheel --wheel-dir /wheels -r requirements.lock
# Concord's own wheel (its dependencies are all above).
COPY pyproject.toml ./
COPY models ./models
COPY workflows ./workflows
COPY activities ./activities
COPY workers ./workers
COPY telemetry ./telemetry
COPY settings ./settings
COPY sync ./sync
COPY connectors ./connectors
COPY store ./store
COPY emulators ./emulators
COPY platforms ./platforms
COPY api ./api
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:${PYTHON_VERSION}-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/concord/bin:$PATH
RUN groupadd --system --gid 10001 concord \
 && useradd --system --uid 10001 --gid concord --create-home --home-dir /home/concord \
            --shell /usr/sbin/nologin concord
# The wheels are bind-mounted from the builder, so none of them stays in a layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    --mount=type=bind,from=build,source=/src/requirements.lock,target=/tmp/requirements.lock \
    python -m venv /opt/concord \
 && /opt/concord/bin/pip install --no-cache-dir --no-index --find-links /wheels \
        -r /tmp/requirements.lock 'concord[otlp]' \
 && concord --help >/dev/null
USER concord:concord
WORKDIR /home/concord
EXPOSE 8080
CMD ["concord", "--help"]
