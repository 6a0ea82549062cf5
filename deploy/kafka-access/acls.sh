#!/usr/bin/env bash
# Who may do what on the SASL cluster: shops write order-requests and nothing else;
# orderstream (its own principal) reads and writes its topics, groups and transactions.
# Usage: acls.sh <bootstrap> <admin client config> [topic prefix]
# ACL is the command that runs Kafka's AclCommand (kafka-acls.sh in the Kafka image).
set -euo pipefail
set -f  # $ACL may hold a classpath wildcard (lib/*): never expand it here
bootstrap=$1 config=$2 prefix=${3:-}
acl=${ACL:-/opt/kafka/bin/kafka-acls.sh}
run() { $acl --bootstrap-server "$bootstrap" --command-config "$config" --add "$@" >/dev/null; }

# A shop: publish order requests (an idempotent producer needs IdempotentWrite too).
run --allow-principal User:shop --operation Write --operation Describe \
  --topic "${prefix}order-requests"
run --allow-principal User:shop --operation IdempotentWrite --cluster

# orderstream: every topic of the cluster (its own, its dead letters, Faust's
# changelogs), its consumer groups, its transactional ids (the intake's orders of several
# lines), and creating topics.
run --allow-principal User:orderstream --operation All \
  --topic '*' --group '*' --transactional-id '*'
run --allow-principal User:orderstream --operation All --cluster
echo "ACLs: shop may write ${prefix}order-requests only; orderstream may run the pipeline"
