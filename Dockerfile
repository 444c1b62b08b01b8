# One image for the JupyterLab, token-endpoint and Locust services of docker-compose.yml.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    MPLBACKEND=Agg

WORKDIR /app
COPY pyproject.toml README.md ./
COPY harness ./harness
RUN pip install --no-cache-dir '.[http,load,notebooks]'
COPY load ./load
COPY notebooks ./notebooks

# Not root: JupyterLab and Locust need no privileges.
RUN useradd --create-home --uid 1000 claimcheck && chown -R claimcheck /app
USER claimcheck
