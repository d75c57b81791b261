#!/usr/bin/env bash
# Tools the test suite uses beside Python packages, installed from Debian's packages when
# missing: headless Chromium (the Flower test looks at Flower's tasks page) and docker-compose
# (the compose test validates docker-compose.yml offline with `docker-compose config -q`).
set -u
missing=()
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing+=(chromium)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "ensure-test-tools: installing ${missing[*]} (Debian packages)"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { echo "ensure-test-tools: chromium missing (apt-get install chromium)"; exit 1; }
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || { echo "ensure-test-tools: docker-compose missing (apt-get install docker-compose)"; exit 1; }
exit 0
