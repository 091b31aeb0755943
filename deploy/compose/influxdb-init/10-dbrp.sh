#!/bin/sh
# Map bucket "gapwatch" to database "gapwatch" / retention policy "autogen" so InfluxQL readers
# (Grafana, `gapwatch dashboard`, `gapwatch history`, `gapwatch retrain`) can query it through
# InfluxDB 2's v1-compatible /query API. Runs once, at first start (the influxdb image runs
# /docker-entrypoint-initdb.d/*.sh after setup).
set -eu
bucket_id=$(influx bucket list --name "${DOCKER_INFLUXDB_INIT_BUCKET}" --hide-headers | cut -f1)
influx v1 dbrp create --db gapwatch --rp autogen --bucket-id "${bucket_id}" --default
