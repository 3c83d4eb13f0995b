#!/bin/sh
# keepalived vrrp_script / BIRD announcer check: exit 0 only while this
# host's ringlb says it takes new clients (GET /router/api/v1/system/health
# answers 200). It answers 503 as soon as a drain begins (SIGTERM, for
# [global] drain_announce before the listeners close), when a service has
# no usable backend, and nothing at all when ringlb is not running.
#
#   ringlb-check.sh [ADMIN_URL]      default http://127.0.0.1:9090
set -u
url="${1:-http://127.0.0.1:9090}"
exec curl --silent --fail --output /dev/null --max-time 1 \
  "$url/router/api/v1/system/health"
