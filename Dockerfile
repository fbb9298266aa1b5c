# Container images for scantide: one Dockerfile, three targets (docs/deploy.md: production).
#
#   docker build --target service -t scantide-service .   # API, monitor, conductor, autoscaler (control plane)
#   docker build --target worker  -t scantide-worker  .   # GPU worker: clearml-agent + the algorithms
#   docker build --target lambda  -t scantide-lambda  .   # the S3 / API Gateway / SQS enqueue handler
#
# The control-plane daemons run as separate containers of the one service image:
#
#   docker run ... scantide-service api          # runs: scantide api
#   docker run ... scantide-service monitor      # runs: scantide monitor
#   docker run ... scantide-service conductor    # runs: scantide conductor (pipelines)
#   docker run ... scantide-service autoscaler   # runs: scantide autoscaler
#
# No secret is baked into any image: tokens, the webhook secret and the ClearML credentials come
# from the environment at run time (SCANTIDE_*, CLEARML_API_*), AWS credentials from the role.
# Tests check this file statically (tests/test_packaging.py): no Docker engine runs in CI.

# -- wheel: build the project's wheel once; the runtime stages install it, not the source tree.
# Installing the wheel (not an editable checkout) is what brings the package data along, such as
# autoscaler/providers/user_data.sh.
FROM python:3.11-slim AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY . /src
RUN pip wheel --no-deps --wheel-dir /wheels /src


# -- service: the control plane. Light: no torch, no OpenCV.
FROM python:3.11-slim AS service
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SCANTIDE_BACKEND=clearml \
    SCANTIDE_STATE_DIR=/var/lib/scantide \
    SCANTIDE_API_HOST=0.0.0.0
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/scantide scantide \
    && install -d -o scantide -g scantide -m 0750 /var/lib/scantide
COPY --from=wheel /wheels/ /tmp/wheels/
# [aws]: S3 outputs (the monitor presigns links) and the EC2 provider; [clearml]: the task store.
RUN pip install "$(echo /tmp/wheels/scantide-*.whl)[aws,clearml]" && rm -rf /tmp/wheels
USER scantide
WORKDIR /var/lib/scantide
EXPOSE 8700
ENTRYPOINT ["scantide"]
# No default daemon: name one (api, monitor, conductor or autoscaler) on `docker run`.
CMD ["--help"]


# -- worker: a GPU instance's agent and the analysis. The CUDA base and the torch index must agree
# (cu128 wheels on a CUDA 12.8 runtime); the host needs an NVIDIA driver for CUDA 12.8 and the
# NVIDIA Container Toolkit (docker run --gpus all).
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04 AS worker
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# git: clearml-agent clones a task's repository when the task names one.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates git libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv \
    && pip install --upgrade pip
# torch first, from the PyTorch CUDA index and pinned to the version pyproject's [algorithms] pins:
# the extras install below then finds it satisfied and never swaps in another build.
RUN pip install --index-url https://download.pytorch.org/whl/cu128 "torch==2.13.0"
COPY --from=wheel /wheels/ /tmp/wheels/
RUN pip install "$(echo /tmp/wheels/scantide-*.whl)[algorithms,aws,clearml]" "clearml-agent>=1.9,<4" \
    && rm -rf /tmp/wheels
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/scantide scantide
# The agent runs tasks in this image's environment instead of building a virtualenv per task.
ENV CLEARML_AGENT_SKIP_PYTHON_ENV_INSTALL=1 \
    CLEARML_AGENT_SKIP_PIP_VENV_INSTALL=/opt/venv/bin/python \
    SCANTIDE_BACKEND=clearml \
    QUEUE=default
# The agent's own docker mode (`clearml-agent daemon --docker`) overrides this user: its set-up in the
# task container needs root, so the boot script passes --user 0:0 (docs/deploy.md: Images).
USER scantide
WORKDIR /home/scantide
# The agent serves $QUEUE until it exits. Set CLEARML_WORKER_ID to the EC2 instance id: the
# autoscaler joins workers to instances by it. The stand-in worker runs from the same image:
#   docker run --gpus all ... scantide-worker scantide worker --queue default --worker-id "$INSTANCE_ID"
CMD ["/bin/sh", "-c", "exec clearml-agent daemon --queue \"$QUEUE\" --foreground"]


# -- lambda: the enqueue handler. Only what the enqueue path imports: pydantic, pydantic-settings,
# PyYAML and jsonschema (descriptors and their parameters, checked at enqueue), the client package's
# signature code (scantide/, standard library only there) and the ClearML SDK (loaded only when
# SCANTIDE_BACKEND=clearml). The Lambda runtime runs the
# function as its own unprivileged user, so no USER here.
FROM public.ecr.aws/lambda/python:3.11 AS lambda
# --only-binary: the python3.11 base is Amazon Linux 2 (glibc 2.26); take the newest versions that
# ship wheels for it instead of compiling a newer release from source.
RUN pip install --no-cache-dir --only-binary=:all: --target "${LAMBDA_TASK_ROOT}" \
        "pydantic>=2.6" "pydantic-settings>=2.2" "PyYAML>=6" "jsonschema>=4.18" "clearml>=1.16"
COPY scantide/ ${LAMBDA_TASK_ROOT}/scantide/
COPY service/ ${LAMBDA_TASK_ROOT}/service/
COPY lambda_enqueue/ ${LAMBDA_TASK_ROOT}/lambda_enqueue/
ENV SCANTIDE_BACKEND=clearml
CMD ["lambda_enqueue.handler.handler"]
