#!/usr/bin/env bash
# What `pip install -e .` needs to compile the project's C extensions (serving/*.pyx, the scoring
# service's tree walk and batch matrix read, and fraud_lib/features/_kernels.pyx, the behavioral
# features' loops): a C compiler and the headers of the Python that builds them.
# Usage: scripts/build-deps.sh PYTHON. As root with apt-get, installs what is missing (gcc,
# libc6-dev, and pythonX.Y-dev for a Debian interpreter); otherwise prints what to install and
# exits 1 if something is missing.
set -euo pipefail

python="${1:?usage: scripts/build-deps.sh PYTHON}"
headers="$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

missing=()
command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
[ -f "$headers/Python.h" ] || missing+=("python$version-dev")
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "error: building fraudloop's C extensions needs ${missing[*]} (no C compiler or no" \
         "$headers/Python.h); install them, e.g." >&2
    echo "  sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

echo ">> installing ${missing[*]} with apt-get (to compile fraudloop's C extensions)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
if [ ! -f "$headers/Python.h" ]; then
    echo "error: $headers/Python.h is still missing: $python is not Debian's python$version;" \
         "install the headers of the Python that builds the project" >&2
    exit 1
fi
