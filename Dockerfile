# One image for every part of the stack: the proxy (`strangler serve`), the legacy monolith
# (`python -m legacy_monolith`), the payment service (`python -m services.payment`), the catalog
# service (`python -m services.catalog`) and the data syncs (`strangler sync ...`). docker-compose.yml picks the command. The packages are the versions
# the tests passed with (constraints.txt).
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY proxy ./proxy
COPY legacy_monolith ./legacy_monolith
COPY services ./services
COPY datasync ./datasync
RUN pip install -c constraints.txt '.[redis,oracle,postgres]' \
    && useradd --system --uid 10001 --home-dir /app strangler \
    && mkdir -p /app/var && chown strangler /app/var
COPY deploy/routes.compose.yaml /app/routes.yaml
USER strangler
EXPOSE 8080 8081 9090
CMD ["strangler", "--help"]
