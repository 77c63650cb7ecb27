#!/usr/bin/env bash
# The main job on the embedded defaults: set up, start the broker and Redis on loopback,
# run a worker, replay the real CDNOW purchase log through Kafka in event time, and print
# what a subscriber of churn.warnings received. Everything it started is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/stream-app demo "$@"
