#!/usr/bin/env bash
# Kafka's admin tools without a Kafka download: runs them from the jars that
# scripts/stack.sh fetched into .stack/kafka/lib.
#
#   scripts/kafka-tool.sh NAME ARGS...
#
# NAME is the usual script name (ARGS are passed on unchanged), e.g.
#   scripts/kafka-tool.sh kafka-topics --bootstrap-server 127.0.0.1:9092 --list
#   scripts/kafka-tool.sh kafka-consumer-groups --bootstrap-server 127.0.0.1:9092 --describe --group G
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KAFKA_HOME="$ROOT/.stack/kafka"
LIB="$KAFKA_HOME/lib"
TOOLS_LOG4J="$KAFKA_HOME/tools-log4j2.properties"

usage() {
  cat >&2 <<'EOF'
usage: scripts/kafka-tool.sh NAME ARGS...
NAME: kafka-topics | kafka-consumer-groups | kafka-console-producer |
      kafka-console-consumer | kafka-get-offsets | kafka-broker-api-versions |
      kafka-configs
EOF
  exit 2
}

[[ $# -ge 1 ]] || usage
name="$1"
shift

# Main classes as in Kafka 4.0's bin/*.sh (most tools moved from kafka.admin.* in
# the Scala core to org.apache.kafka.tools.* in the kafka-tools jar).
case "$name" in
  kafka-topics) main=org.apache.kafka.tools.TopicCommand ;;
  kafka-consumer-groups) main=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
  kafka-console-producer) main=org.apache.kafka.tools.ConsoleProducer ;;
  kafka-console-consumer) main=org.apache.kafka.tools.consumer.ConsoleConsumer ;;
  kafka-get-offsets) main=org.apache.kafka.tools.GetOffsetShell ;;
  kafka-broker-api-versions) main=org.apache.kafka.tools.BrokerApiVersionsCommand ;;
  kafka-configs) main=kafka.admin.ConfigCommand ;; # still in the Scala core in 4.0
  -h | --help) usage ;;
  *)
    echo "kafka-tool: unknown tool '$name'" >&2
    usage
    ;;
esac

compgen -G "$LIB/kafka-tools-[0-9]*.jar" >/dev/null \
  || { echo "kafka-tool: no Kafka jars in $LIB; run scripts/stack.sh up first" >&2; exit 1; }

# Quiet logging: only errors, on stderr, so stdout carries just the tool's output.
if [[ ! -f "$TOOLS_LOG4J" ]]; then
  cat >"$TOOLS_LOG4J.$$" <<'EOF'
# Written by scripts/kafka-tool.sh.
status = error
appender.stderr.type = Console
appender.stderr.name = stderr
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = ERROR
rootLogger.appenderRef.stderr.ref = stderr
EOF
  mv "$TOOLS_LOG4J.$$" "$TOOLS_LOG4J"
fi

# Short-lived JVM: small heap, C1 only (starts faster; these tools do little work).
exec java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
  -Dlog4j2.configurationFile="$TOOLS_LOG4J" -cp "$LIB/*" "$main" "$@"
