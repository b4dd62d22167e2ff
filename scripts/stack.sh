#!/usr/bin/env bash
# Provisions and runs real Apache Kafka (KRaft) and an Apicurio Registry (Confluent-compatible
# API) on loopback, on free ports, without Docker.
#
#   scripts/stack.sh up DIR [--brokers N]  start Kafka and Apicurio, wait until ready, write DIR/env
#   scripts/stack.sh bounce DIR I [--hard] stop broker I (SIGTERM, or SIGKILL with --hard), start
#                                          it again and wait until it has (N > 1 only)
#   scripts/stack.sh down DIR              stop everything (SIGTERM, then SIGKILL after 20 s)
#   scripts/stack.sh fetch                 only download the jars (cached outside the repo)
#
# One broker (the default): one combined broker + controller, replication factor 1; its
# files are DIR/kafka.{log,pid}. N brokers: one dedicated controller (DIR/controller.*) and
# brokers 1..N (DIR/kafka-I.{log,pid,properties}), replication factor min(N, 3) for every
# topic and min.insync.replicas=2, so a bounced broker loses nothing the others acknowledged.
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

# node_properties DIR ROLE NODE_ID PORT CPORT BROKERS: the server.properties of one node.
# ROLE is combined (one broker that is its own controller), controller or broker.
node_properties() {
  local dir="$1" role="$2" id="$3" port="$4" cport="$5" n="$6" data="$7"
  local rf=$(( n < 3 ? n : 3 )) isr=$(( n < 3 ? 1 : 2 ))
  case "$role" in
    combined) cat <<PROPS
process.roles=broker,controller
node.id=$id
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
PROPS
    ;;
    controller) cat <<PROPS
process.roles=controller
node.id=$id
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=CONTROLLER://127.0.0.1:$cport
PROPS
    ;;
    broker) cat <<PROPS
process.roles=broker
node.id=$id
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
PROPS
    ;;
  esac
  cat <<PROPS
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$data
num.partitions=3
auto.create.topics.enable=true
default.replication.factor=$rf
min.insync.replicas=$isr
unclean.leader.election.enable=false
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
transaction.state.log.num.partitions=3
group.initial.rebalance.delay.ms=0
# The churn tests run members with short sessions (-X session.timeout.ms=2000) so that a
# stopped or killed static member expires in 2 s, not the 10 s our clients default to.
group.min.session.timeout.ms=1000
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
PROPS
}

# log4j2 DIR NAME: a log4j2 configuration that writes DIR/NAME.log.
log4j2() {
  cat <<PROPS
appender.file.type=File
appender.file.name=file
appender.file.fileName=$1/$2.log
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
rootLogger.level=INFO
rootLogger.appenderRef.file.ref=file
PROPS
}

# start_node DIR NAME HEAP: starts the node configured in DIR/NAME.properties in the
# background, logging to DIR/NAME.log, its pid in DIR/NAME.pid.
start_node() {
  local dir="$1" name="$2" heap="$3"
  nohup java -Xms256m -Xmx"$heap" -XX:+UseG1GC -cp "$kafka_libs/*" \
    -Dlog4j2.configurationFile="$dir/$name.log4j2.properties" \
    kafka.Kafka "$dir/$name.properties" >>"$dir/$name.out" 2>&1 &
  echo $! > "$dir/$name.pid"
}

# started DIR NAME LINES: whether NAME's log says it started after its first LINES lines.
# No pipe: under pipefail, `tail | grep -q` failed whenever grep matched early and tail
# still had more than a pipe's worth to write (SIGPIPE, 141), so a broker that had started
# was waited on for 120 s and the bounce reported it "timed out".
started() {
  [ -f "$1/$2.log" ] || return 1
  awk -v from="$3" 'NR > from && /Kafka Server started/ { found = 1; exit } END { exit !found }' "$1/$2.log"
}

up() {
  local dir="$1" n=1
  shift
  while [ $# -gt 0 ]; do
    case "$1" in
      --brokers) n="${2:?--brokers needs a count}"; shift 2 ;;
      *) log "unknown option $1"; return 2 ;;
    esac
  done
  mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"
  fetch
  local cp="$kafka_libs/*" cluster_id cport rport ports=() brokers=""
  read -r -a ports < <(free_ports $((n + 2)))
  cport=${ports[$n]}; rport=${ports[$((n + 1))]}
  cluster_id=$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
  # format DIR NAME [--standalone]: formats the node's storage for the cluster.
  format() {
    java -cp "$cp" -Dlog4j2.configurationFile="$1/$2.log4j2.properties" kafka.tools.StorageTool \
      format ${3:-} -t "$cluster_id" -c "$1/$2.properties" >>"$1/format.log" 2>&1
  }
  if [ "$n" -eq 1 ]; then
    node_properties "$dir" combined 1 "${ports[0]}" "$cport" 1 "$dir/kafka-data" > "$dir/kafka.properties"
    log4j2 "$dir" kafka > "$dir/kafka.log4j2.properties"
    format "$dir" kafka --standalone
    log "Starting Kafka $kafka_version on 127.0.0.1:${ports[0]} (controller $cport)"
    start_node "$dir" kafka 1g
    brokers="127.0.0.1:${ports[0]}"
    echo kafka > "$dir/brokers"
  else
    node_properties "$dir" controller 0 "" "$cport" "$n" "$dir/controller-data" > "$dir/controller.properties"
    log4j2 "$dir" controller > "$dir/controller.log4j2.properties"
    format "$dir" controller --standalone
    log "Starting the KRaft controller on 127.0.0.1:$cport"
    start_node "$dir" controller 384m
    : > "$dir/brokers"
    for i in $(seq 1 "$n"); do
      local port=${ports[$((i - 1))]}
      node_properties "$dir" broker "$i" "$port" "$cport" "$n" "$dir/kafka-data-$i" > "$dir/kafka-$i.properties"
      log4j2 "$dir" "kafka-$i" > "$dir/kafka-$i.log4j2.properties"
      format "$dir" "kafka-$i" --no-initial-controllers
      log "Starting Kafka broker $i on 127.0.0.1:$port"
      start_node "$dir" "kafka-$i" 768m
      brokers="${brokers:+$brokers,}127.0.0.1:$port"
      echo "kafka-$i" >> "$dir/brokers"
    done
  fi

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

  local node
  while read -r node; do
    wait_for 90 "$node to start (see $dir/$node.log)" started "$dir" "$node" 0 \
      || { down "$dir"; return 1; }
  done < "$dir/brokers"
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
export SUPPLYSTREAM_BROKERS=$brokers
export SUPPLYSTREAM_REGISTRY=http://127.0.0.1:$rport/apis/ccompat/v7
ENV
  log "Ready: $(tr '\n' ' ' < "$dir/env")"
}

# bounce DIR I [--hard]: stops broker I cleanly (SIGTERM: it hands its leaderships over
# and flushes) or hard (SIGKILL: its log is recovered on start), then starts it again on
# the same port and data and waits until it says it has started.
bounce() {
  local dir="$1" i="$2" mode="${3:-}" name="kafka-$2"
  [ -f "$dir/$name.properties" ] || { log "no broker $i in $dir (bounces need --brokers N > 1)"; return 2; }
  local lines pid
  lines=$(wc -l < "$dir/$name.log")
  pid=$(cat "$dir/$name.pid")
  if [ "$mode" = "--hard" ]; then
    log "Killing broker $i (SIGKILL)"
    kill -9 "$pid" 2>/dev/null || true
  else
    log "Stopping broker $i (SIGTERM)"
    kill "$pid" 2>/dev/null || true
  fi
  for _ in $(seq 240); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -0 "$pid" 2>/dev/null && { log "broker $i did not stop in 60 s"; kill -9 "$pid"; sleep 1; }
  start_node "$dir" "$name" 768m
  wait_for 120 "broker $i to start again (see $dir/$name.log)" started "$dir" "$name" "$lines"
  log "Broker $i is back"
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
  local dir="$1" node
  stop_pid "$dir/apicurio.pid"
  # Brokers first, then the controller (a broker stopping cleanly asks it to move its
  # leaderships).
  if [ -f "$dir/brokers" ]; then
    while read -r node; do stop_pid "$dir/$node.pid" & done < "$dir/brokers"
    wait
  fi
  stop_pid "$dir/kafka.pid"
  stop_pid "$dir/controller.pid"
  log "Stopped stack in $dir"
}

usage="usage: $0 up DIR [--brokers N] | bounce DIR I [--hard] | down DIR | fetch"
case "${1:-}" in
  up) shift; up "${1:?$usage}" "${@:2}" ;;
  bounce) bounce "${2:?$usage}" "${3:?$usage}" "${4:-}" ;;
  down) down "${2:?$usage}" ;;
  fetch) fetch ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
