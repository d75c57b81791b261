#!/usr/bin/env bash
# Make sure the services the test suite needs answer: PostgreSQL (127.0.0.1:5432) and Redis
# (127.0.0.1:6379). Starts whichever is down with the machine's own service commands.
# The Milvus server is started by the test fixtures themselves (a subprocess).
set -u

pg_ok() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null || python3 - <<'PY' 2>/dev/null
import socket, sys
s = socket.socket(); s.settimeout(1)
sys.exit(0 if s.connect_ex(("127.0.0.1", 5432)) == 0 else 1)
PY
}
redis_ok() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

if ! pg_ok; then
  echo "ensure-services: starting PostgreSQL"
  if command -v pg_ctlcluster >/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
  for _ in $(seq 1 30); do pg_ok && break; sleep 1; done
fi
if ! redis_ok; then
  echo "ensure-services: starting Redis"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  for _ in $(seq 1 30); do redis_ok && break; sleep 1; done
fi

status=0
pg_ok || { echo "ensure-services: PostgreSQL is not answering on 127.0.0.1:5432"; status=1; }
redis_ok || { echo "ensure-services: Redis is not answering on 127.0.0.1:6379"; status=1; }
exit $status
