#!/usr/bin/env bash
# Set up everything napari-unet needs on a fresh Debian/Ubuntu machine with Python 3.10+.
#   scripts/setup.sh        venv + CPU torch + the package with its napari and test extras
#   scripts/setup.sh gui    the same, plus (as root) the system libraries napari's GUI tests need
# A CUDA user installs a CUDA build of torch into .venv first: an installed torch is kept.
# TORCH_SPEC (default torch==2.13.0) pins another torch; TORCH_INDEX takes it from another index.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [ "${1:-}" = "gui" ] && ! command -v Xvfb >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing the system libraries for napari under a virtual display"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            xvfb xauth libegl1 libgl1 libglib2.0-0 libfontconfig1 libdbus-1-3 libxkbcommon-x11-0 \
            libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 \
            libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 libxcb-xkb1 >/dev/null
    else
        echo "warning: Xvfb is missing and this is not root: install xvfb and napari's Qt libraries" >&2
    fi
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    if [ -n "${TORCH_INDEX:-}" ]; then  # e.g. https://download.pytorch.org/whl/cpu for the CPU build
        .venv/bin/python -m pip install -q --index-url "$TORCH_INDEX" "$TORCH_SPEC"
    else
        .venv/bin/python -m pip install -q "$TORCH_SPEC"
    fi
fi
.venv/bin/python -m pip install -q -e ".[test]"
touch .venv/.installed
