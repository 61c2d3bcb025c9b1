# The side-by-side demo (app.py) on a CUDA GPU: one 4-bit LLaVA-1.5 base with the LoRA adapter attached.
#
#   docker build -t cxr-vqa-app .
#   docker run --gpus all -p 7860:7860 -e ADAPTER_MODEL=<user>/<adapter> \
#       -v hf-cache:/home/app/.cache/huggingface -v cxr-votes:/home/app/data cxr-vqa-app
#   docker run --gpus all -p 7860:7860 -v "$PWD/runs:/home/app/runs:ro" cxr-vqa-app \
#       python app.py --adapter /home/app/runs/llava-cxr --votes-db /home/app/data/votes.sqlite
#
# On a hospital LAN (docs/deploying.md lists every setting and what it protects): a login, TLS, the operator's token
# for the votes export; secrets come from the environment or mounted files, never from the command line.
#   docker run --gpus all -p 7860:7860 -v cxr-votes:/home/app/data -v "$PWD/secrets:/run/secrets:ro" \
#       -e ADAPTER_MODEL=... -e CXR_VQA_OPERATOR_TOKEN="$(cat operator-token)" cxr-vqa-app \
#       python app.py --votes-db /home/app/data/votes.sqlite --auth-file /run/secrets/users.txt \
#       --ssl-certfile /run/secrets/cert.pem --ssl-keyfile /run/secrets/key.pem
#   (behind your own reverse proxy instead of TLS here: add --trusted-proxy <the proxy's address>)
#
# The base image brings CUDA and a CUDA build of torch; requirements.txt's torch range accepts it, so pip keeps it.
# `python scripts/docker_check.py --base IMAGE` builds, serves a tiny model, calls /compare, stops and times it all.
ARG BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False \
    HF_HOME=/home/app/.cache/huggingface

RUN useradd --create-home --uid 1000 app \
    && mkdir -p /home/app/data /home/app/.cache/huggingface \
    && chown -R app:app /home/app
WORKDIR /home/app/src

# Dependencies before code: editing the app then reuses this (large) layer.
COPY requirements.txt .
RUN pip install -r requirements.txt

# The UI, the core it calls, the example films, and the pipelines (`--demo` builds its tiny models with them, serves
# once its base is trained, trains the adapter on while it serves, and ends by evaluating both: hence evaluation/).
COPY app.py ./
COPY app_lib/ app_lib/
COPY cxr_vqa/ cxr_vqa/
COPY finetune/ finetune/
COPY dataprep/ dataprep/
COPY evaluation/ evaluation/
COPY assets/ assets/
# `--demo` builds in runs/demo: writable by the app user (a volume there keeps it across containers)
RUN mkdir -p runs && chown app:app runs

USER app
EXPOSE 7860
# Loading a 7B model (and downloading it on first start) takes minutes: a long start period before failures count.
# The check answers over http, or https when the app serves TLS.
HEALTHCHECK --interval=30s --timeout=10s --start-period=900s --retries=3 CMD python -m app_lib.health
# app.py stops on SIGTERM (`docker stop`) although it runs as PID 1; another command run here as PID 1 ignores
# SIGTERM and is killed after the stop timeout: give it `docker run --init`.
CMD ["python", "app.py", "--votes-db", "/home/app/data/votes.sqlite"]
