#!/usr/bin/env bash
# The fault soak (issue 13): the real-Kafka suite on a three-broker KRaft cluster
# (replication factor 3, min.insync.replicas=2) at full size. The saga churn runs three
# instances of inventory and of every saga participant, members joining and leaving (at
# least 20 rebalances of every group, at least 20 SIGKILLs), while every broker is bounced
# (3 clean, 3 hard) and the registry is frozen twice (5 s and 90 s), with a read_committed
# reader watching the event logs throughout. Not part of .ci/run (its budget is 30
# minutes); .ci/run runs the same scenarios shorter, on one broker, without bounces.
#
#   scripts/soak.sh                  # every scenario
#   scripts/soak.sh under_churn      # the scenarios whose name contains a substring
#
# Logs of the services: target/debug/real-kafka-logs/. A failed run keeps the stack's
# directory (brokers' logs and data) and prints where.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --bin supplystream
SUPPLYSTREAM_REAL_KAFKA=1 SUPPLYSTREAM_SOAK=1 cargo test -p integration --test real_kafka -- "$@"
