#!/usr/bin/env bash
# The Kafka container of compose.sasl.yml: the first start formats the storage with the
# SCRAM users (admin, orderstream, shop, passwords from the environment), then it runs
# the broker with server.properties.template filled in.
set -euo pipefail
conf=/tmp/server.properties
sed -e "s|@PORT@|9092|g" -e "s|@CONTROLLER_PORT@|9093|g" -e "s|@HOST@|kafka|g" \
  -e "s|@DATA_DIR@|/var/lib/kafka/data|g" -e "s|@ADMIN_PASSWORD@|${KAFKA_ADMIN_PASSWORD}|g" \
  /opt/orderstream/server.properties.template >"$conf"
if [ ! -f /var/lib/kafka/data/meta.properties ]; then
  /opt/kafka/bin/kafka-storage.sh format -t "$(/opt/kafka/bin/kafka-storage.sh random-uuid)" \
    -c "$conf" \
    --add-scram "SCRAM-SHA-512=[name=admin,password=${KAFKA_ADMIN_PASSWORD}]" \
    --add-scram "SCRAM-SHA-512=[name=orderstream,password=${ORDERSTREAM_KAFKA_PASSWORD}]" \
    --add-scram "SCRAM-SHA-512=[name=shop,password=${SHOP_KAFKA_PASSWORD}]"
fi
exec /opt/kafka/bin/kafka-server-start.sh "$conf"
