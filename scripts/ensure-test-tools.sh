#!/usr/bin/env bash
# Tools the integration suite uses beside Python packages: headless Chromium (the Flower test
# looks at Flower's tasks page). Installed from Debian's packages when missing.
set -u
if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "ensure-test-tools: installing chromium (Debian package)"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
command -v chromium >/dev/null || { echo "ensure-test-tools: chromium missing (apt-get install chromium)"; exit 1; }
