#!/usr/bin/env bash
# `make test-services`: the real-services test (tests/services), never part of `make test`.
#  1. PostgreSQL server from the system's packages if missing (apt-get install -y postgresql; needs root);
#     psycopg2-binary into the venv if missing (until pyproject's `services` extra provides it).
#  2. As root with `unshare` available: runs pytest in a fresh network namespace that has only the
#     loopback interface, so nothing can reach an address other than 127.0.0.1 even by mistake;
#     with strace installed, every connect() of the servers and the flow is recorded and checked.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PY:-.venv/bin/python}"

"$PY" -c "import psycopg2" 2>/dev/null || "${PY%python}pip" install --quiet "psycopg2-binary>=2.9"
"$PY" -c "import sys; sys.path.insert(0, 'infra/services'); import run_stack; print('PostgreSQL:', run_stack.pg_bindir())"

export SG2_SERVICES_TEST=1
export SG2_SERVICES_STRACE="${SG2_SERVICES_STRACE:-$(command -v strace >/dev/null && echo 1 || echo 0)}"
cmd=("$PY" -m pytest -q -p no:cacheprovider -m services tests/services "$@")
if [ "$(id -u)" = 0 ] && [ "${SG2_SERVICES_NETNS:-1}" = 1 ] && unshare --net true 2>/dev/null; then
  echo "network: loopback-only namespace (unshare --net)"
  exec unshare --net sh -c 'ip link set lo up && exec "$@"' sh "${cmd[@]}"
fi
echo "network: host namespace (not root or no unshare); connect() checks only"
exec "${cmd[@]}"
