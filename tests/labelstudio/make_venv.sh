#!/bin/sh
# Create (once) a separate venv holding a real Label Studio for the end-to-end test.
# Usage: make_venv.sh [VERSION]   -> prints the venv directory on stdout.
# The interpreter is $PYTHON (default python3); the root folder $PROMPTMOE_LS_VENV_ROOT.
# The venv is cached outside the repository, keyed by version; a finished install is
# marked by a stamp file so an interrupted install is redone rather than reused.
set -eu
version="${1:-1.23.2}"
root="${PROMPTMOE_LS_VENV_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/promptmoe}"
dir="$root/ls-venv-$version"
if [ ! -f "$dir/.installed" ]; then
    rm -rf "$dir"
    mkdir -p "$root"
    "${PYTHON:-python3}" -m venv "$dir" >&2
    "$dir/bin/pip" install --quiet --disable-pip-version-check "label-studio==$version" >&2
    touch "$dir/.installed"
fi
echo "$dir"
