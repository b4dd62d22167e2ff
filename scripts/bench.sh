#!/usr/bin/env bash
# Runs the benchmarks against a real Kafka + Apicurio started for the occasion, then stops them.
#   scripts/bench.sh            # 1,000,000 commands
#   BENCH_COMMANDS=200000 scripts/bench.sh
# Built without the DataFusion query feature: the pipeline does not need it and the release
# build is much shorter.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cargo bench -p pipelines --no-default-features --bench inventory --no-run
dir="$(mktemp -d -t supplystream-bench-XXXXXX)"
trap 'scripts/stack.sh down "$dir"' EXIT
scripts/stack.sh up "$dir"
# shellcheck disable=SC1091
source "$dir/env"
cargo bench -p pipelines --no-default-features --bench inventory
