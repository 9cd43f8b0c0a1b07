#!/usr/bin/env bash
# The whole test suite against real services: bootstrap (idempotent), then pytest.
#   scripts/test.sh                 everything
#   scripts/test.sh -m 'not slow'   any pytest arguments pass through
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/bootstrap.sh
set -a
# shellcheck source=/dev/null
. "${MW_STATE_DIR:-$ROOT/.state}/test.env"
set +a
start=$(date +%s)
status=0
.venv/bin/python -m pytest "$@" || status=$?
echo "test suite: exit $status after $(( $(date +%s) - start )) s"
# pytest exits 5 when it collected nothing: that is a failure here, not a pass.
exit "$status"
