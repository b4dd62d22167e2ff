#!/usr/bin/env bash
# Runs the benchmarks against a real Kafka + Apicurio started for the occasion, then stops them.
#   scripts/bench.sh                 # inventory (1,000,000 commands), then the saga (20,000 orders)
#   BENCH_COMMANDS=200000 BENCH_ORDERS=5000 scripts/bench.sh
#   scripts/bench.sh inventory       # one of them (with the Kafka Streams peer, bench/kafka-streams)
#   scripts/bench.sh soak            # 10M commands over 100K skus: state and RSS stay bounded
#   BENCH_SOAK_COMMANDS=2000000 scripts/bench.sh soak
#   BENCH_KAFKA="fetch.queue.backoff.ms=1000" scripts/bench.sh inventory   # librdkafka properties on every client
#   BENCH_BATCH_SIZE=10000 scripts/bench.sh inventory   # commands per transaction (--batch-size)
# Built without the DataFusion query feature: the pipelines do not need it and the release
# build is much shorter. Each bench gets a fresh stack (the saga's inventory service must not
# inherit the inventory bench's million commands).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
benches=("${@:-inventory saga}")
read -r -a benches <<<"${benches[*]}"
for bench in "${benches[@]}"; do
  cargo bench -p pipelines --no-default-features --bench "$bench" --no-run
  if [ "$bench" = inventory ]; then
    # The Kafka Streams peer (bench/kafka-streams), from Maven Central with the machine's Java.
    mvn -q -B -f bench/kafka-streams/pom.xml clean package dependency:copy-dependencies
  fi
done
for bench in "${benches[@]}"; do
  dir="$(mktemp -d -t supplystream-bench-XXXXXX)"
  trap 'scripts/stack.sh down "$dir"' EXIT
  scripts/stack.sh up "$dir"
  # shellcheck disable=SC1091
  source "$dir/env"
  cargo bench -p pipelines --no-default-features --bench "$bench"
  scripts/stack.sh down "$dir"
  trap - EXIT
  # Kept only when a bench fails (the trap stops the stack and leaves its logs).
  rm -rf "$dir"
done
