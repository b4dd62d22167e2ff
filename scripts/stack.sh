#!/usr/bin/env bash
# Provisions and runs a real Apache Kafka broker (single-node KRaft) and an Apicurio
# Registry (Confluent-compatible API) on loopback, on free ports, without Docker.
#
#   scripts/stack.sh up DIR     start both, wait until ready, write DIR/env
#   scripts/stack.sh down DIR   stop both (SIGTERM, then SIGKILL after 20 s)
#   scripts/stack.sh fetch      only download the jars (cached outside the repo)
#
# DIR/env holds SUPPLYSTREAM_BROKERS and SUPPLYSTREAM_REGISTRY for `source`.
# Downloads come from Maven Central through Maven and are cached in
# ${SUPPLYSTREAM_CACHE:-~/.cache/supplystream}.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${SUPPLYSTREAM_CACHE:-$HOME/.cache/supplystream}"
kafka_version="4.1.0"
apicurio_version="3.0.9" # runs on Java 17 (3.3.x needs Java 21)
kafka_libs="$cache/kafka-$kafka_version/libs"
apicurio_home="$cache/apicurio-$apicurio_version"

# The Quarkus runner jar: 3.0.x ships <name>-runner.jar, later ones quarkus-run.jar.
apicurio_jar() {
  find "$apicurio_home" -maxdepth 2 \( -name quarkus-run.jar -o -name '*-runner.jar' \) 2>/dev/null | head -n 1
}

log() { printf '[stack] %s\n' "$*" >&2; }

fetch() {
  if [ ! -f "$kafka_libs/kafka_2.13-$kafka_version.jar" ]; then
    log "Resolving Apache Kafka $kafka_version from Maven Central"
    mvn -q -B -f "$here/kafka/pom.xml" dependency:copy-dependencies \
      -Dkafka.version="$kafka_version" -DincludeScope=runtime -DoutputDirectory="$kafka_libs"
  fi
  if [ -z "$(apicurio_jar)" ]; then
    log "Resolving Apicurio Registry $apicurio_version from Maven Central"
    mkdir -p "$cache/downloads" "$apicurio_home"
    mvn -q -B -f "$here/kafka/pom.xml" dependency:copy -Dtransitive=false \
      -Dartifact="io.apicurio:apicurio-registry-app:$apicurio_version:tar.gz:all" \
      -DoutputDirectory="$cache/downloads"
    tar -xzf "$cache/downloads/apicurio-registry-app-$apicurio_version-all.tar.gz" -C "$apicurio_home"
    [ -n "$(apicurio_jar)" ] || { log "No runnable jar in the Apicurio archive"; return 1; }
  fi
}

free_ports() { # free_ports N: N distinct free loopback ports (all bound at once, then released)
  python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks: s.close()' "$1"
}

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local deadline=$((SECONDS + $1)) what="$2"; shift 2
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then log "Timed out waiting for $what"; return 1; fi
    sleep 0.5
  done
}

up() {
  local dir="$1"
  mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"
  fetch
  local port cport rport
  read -r port cport rport < <(free_ports 3)

  cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/kafka-data
num.partitions=3
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=3
group.initial.rebalance.delay.ms=0
# The churn tests run members with short sessions (-X session.timeout.ms=2000) so that a
# stopped or killed static member expires in 2 s, not the 10 s our clients default to.
group.min.session.timeout.ms=1000
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
PROPS
  cat > "$dir/log4j2.properties" <<PROPS
appender.file.type=File
appender.file.name=file
appender.file.fileName=$dir/kafka.log
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
rootLogger.level=INFO
rootLogger.appenderRef.file.ref=file
PROPS
  local cp="$kafka_libs/*"
  local cluster_id
  cluster_id=$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
  java -cp "$cp" -Dlog4j2.configurationFile="$dir/log4j2.properties" kafka.tools.StorageTool \
    format --standalone -t "$cluster_id" -c "$dir/server.properties" >"$dir/format.log" 2>&1
  log "Starting Kafka $kafka_version on 127.0.0.1:$port (controller $cport)"
  nohup java -Xms256m -Xmx1g -XX:+UseG1GC -cp "$cp" \
    -Dlog4j2.configurationFile="$dir/log4j2.properties" \
    kafka.Kafka "$dir/server.properties" >"$dir/kafka.out" 2>&1 &
  echo $! > "$dir/kafka.pid"

  log "Starting Apicurio Registry $apicurio_version on 127.0.0.1:$rport"
  local jar; jar="$(apicurio_jar)"
  # `cd` first, then java as its own background job: `$!` of a backgrounded `cd && java`
  # list is the subshell running it, and killing that left Apicurio running.
  (cd "$(dirname "$jar")" || exit 1
    nohup java -Xms128m -Xmx768m \
    -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$rport" \
    -Dquarkus.management.enabled=false \
    -Dapicurio.rest.deletion.artifact.enabled=true \
    -Dapicurio.rest.deletion.artifact-version.enabled=true \
    -jar "$jar" >"$dir/apicurio.out" 2>&1 &
    echo $! > "$dir/apicurio.pid")

  wait_for 90 "Kafka to start (see $dir/kafka.log)" grep -q "Kafka Server started" "$dir/kafka.log" \
    || { down "$dir"; return 1; }
  wait_for 120 "Apicurio to answer (see $dir/apicurio.out)" \
    curl -sf "http://127.0.0.1:$rport/apis/ccompat/v7/subjects" \
    || { down "$dir"; return 1; }
  # Schemas evolve under BACKWARD_TRANSITIVE (DESIGN.md); Apicurio enforces no compatibility
  # rule until one is configured.
  curl -sf -X PUT -H 'Content-Type: application/json' \
    -d '{"compatibility":"BACKWARD_TRANSITIVE"}' \
    "http://127.0.0.1:$rport/apis/ccompat/v7/config" >/dev/null \
    || { log "could not set Apicurio's global compatibility"; down "$dir"; return 1; }

  cat > "$dir/env" <<ENV
export SUPPLYSTREAM_BROKERS=127.0.0.1:$port
export SUPPLYSTREAM_REGISTRY=http://127.0.0.1:$rport/apis/ccompat/v7
ENV
  log "Ready: $(tr '\n' ' ' < "$dir/env")"
}

stop_pid() {
  local file="$1" pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

down() {
  local dir="$1"
  stop_pid "$dir/apicurio.pid"
  stop_pid "$dir/kafka.pid"
  log "Stopped stack in $dir"
}

case "${1:-}" in
  up) up "${2:?usage: stack.sh up DIR}" ;;
  down) down "${2:?usage: stack.sh down DIR}" ;;
  fetch) fetch ;;
  *) echo "usage: $0 up DIR | down DIR | fetch" >&2; exit 2 ;;
esac
