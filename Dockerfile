# The scanstream worker as a container image (a recipe: no Docker daemon runs where the project is
# tested; tests/test_deploy_recipe.py checks it statically against the project).
#   docker build -t scanstream .
#   docker run --env-file .env scanstream --config /etc/scanstream/production.toml worker
FROM python:3.11-slim-bookworm AS build
# gcc and the Python headers compile the Cython extensions (ext/*.pyx) into the wheel
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY engine engine
COPY ext ext
COPY streams streams
COPY sinks sinks
COPY scanstream scanstream
COPY config config
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# a worker writing to a ClickHouse server needs no embedded engine: the wheel without [embedded]
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/scanstream-*.whl && rm -rf /wheels \
    && useradd --system --home /var/lib/scanstream --create-home scanstream
COPY config/production.toml /etc/scanstream/production.toml
USER scanstream
WORKDIR /var/lib/scanstream
# metrics for Prometheus: bound to all interfaces inside the container, published by compose
EXPOSE 9108
ENTRYPOINT ["scanstream"]
CMD ["--config", "/etc/scanstream/production.toml", "worker", "--metrics-port", "9108", "--metrics-host", "0.0.0.0"]
