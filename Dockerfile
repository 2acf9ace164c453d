# The submission image, the competition's way: a CUDA PyTorch base, the project installed, the base
# model and adapter fetched at build time, `uvicorn main:app` on port 80.
#
#   hf download mistralai/Mistral-7B-v0.1 --local-dir models/Mistral-7B-v0.1   # on the host, your token
#   docker build -t entry --build-arg ADAPTER=./runs/mistral-7b-qlora-4090/adapter .
#   docker run --gpus all -p 8080:80 entry
#
# Build arguments (docs/container.md): BASE_IMAGE, MODEL, ADAPTER and QUANT choose what is served;
# PIP_INDEX_URL, PIP_FIND_LINKS and PIP_NO_INDEX choose where packages come from (scripts/container-check
# serves wheels from the host with them: same file, offline). No token is ever a build argument (those
# stay in the image's history): a gated hub model's token comes as the BuildKit secret hf_token.
ARG BASE_IMAGE=pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ARG PIP_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX

# Dependencies first, in a layer of their own: editing the code does not reinstall them. torch
# comes with the base image; the requirement only checks its version.
COPY pyproject.toml docker/requirements.py /tmp/deps/
RUN python /tmp/deps/requirements.py /tmp/deps/pyproject.toml > /tmp/deps/requirements.txt \
    && python -m pip install --no-cache-dir -r /tmp/deps/requirements.txt \
    && rm -r /tmp/deps

# Hub downloads next, before the sources: a code change does not download 15 GB again.
# MODEL: ./a/folder of the build context, a hub id (name@revision pins one), or embedded:tiny-llama.
# The default is a folder, so the default build needs no token: Mistral-7B is gated on the hub.
# ADAPTER: the same forms, or empty for none (a `python -m train` run writes runs/<name>/adapter).
ARG MODEL=./models/Mistral-7B-v0.1
ARG ADAPTER=
COPY docker/fetch_model.py /usr/local/bin/fetch_model.py
# A gated hub model: `docker build --secret id=hf_token,env=HF_TOKEN --build-arg MODEL=org/name ...`.
# The secret is mounted for this step only (huggingface_hub reads HF_TOKEN_PATH), never in a layer.
RUN --mount=type=secret,id=hf_token HF_TOKEN_PATH=/run/secrets/hf_token python /usr/local/bin/fetch_model.py hub

WORKDIR /app
COPY . .
COPY docker/main.py main.py
# Editable, so train/ finds budget.toml and configs/ beside it as it does in a checkout.
RUN python -m pip install --no-cache-dir --no-deps --editable . \
    && python /usr/local/bin/fetch_model.py local

# QUANT: auto (bf16/fp16 merged on a GPU), nf4, int8, bf16, fp16 or fp32 (docs/server.md).
ARG QUANT=auto
ENV HARNESS_MODEL=/models/base \
    HARNESS_ADAPTER=${ADAPTER:+/models/adapter} \
    HARNESS_QUANT=${QUANT} \
    HF_HUB_OFFLINE=1 \
    UVICORN_HOST=0.0.0.0 \
    UVICORN_PORT=80
EXPOSE 80
# uvicorn reads --host/--port from UVICORN_HOST/UVICORN_PORT: `uvicorn main:app --host 0.0.0.0
# --port 80` by default, and a host-networked check can move it with -e UVICORN_PORT=...
CMD ["uvicorn", "main:app"]
