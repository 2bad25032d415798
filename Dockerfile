# megatron-dwm on NVIDIA's PyTorch container (NGC). The image's torch, Transformer Engine, apex and
# Triton are kept: pip only adds megatron-core and the other dependencies of pyproject.toml, with
# torch pinned to the image's build so that it is never replaced. megatron-core 0.19 needs
# Python 3.12 and this project torch >= 2.6: NGC 25.04 or newer.
#   docker build -t megatron-dwm .
#   docker build --build-arg BASE_IMAGE=nvcr.io/nvidia/pytorch:25.06-py3 -t megatron-dwm .
# Usage: docs/launch.md.
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.04-py3
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1

WORKDIR /workspace/megatron-dwm
COPY . .

RUN python -c "import torch; print('torch==' + torch.__version__)" > /tmp/image-torch.txt \
    && pip install --no-cache-dir --constraint /tmp/image-torch.txt -e . \
    && python -c "import megatron.core, megatron_dwm; print('megatron-core', megatron.core.__version__)"

CMD ["python", "pretrain_dwm.py", "--help"]
