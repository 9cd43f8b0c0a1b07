#!/usr/bin/env bash
# Run `meterward demo` with zero setup: installs the Python environment if needed, then starts
# the whole system on this machine (embedded PostgreSQL and broker unless MW_DATABASE_URL /
# MW_MQTT_URL point at real ones). Arguments pass through, e.g. `scripts/demo.sh --smoke`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/bootstrap.sh" --only python
exec "$ROOT/.venv/bin/meterward" demo "$@"
