#!/usr/bin/env bash
# Debian packages the tests use as real components: Prometheus + promtool, Pushgateway,
# Chromium (MLflow UI check), wrk (gateway benchmark). Installs only what is missing.
set -euo pipefail
need=()
command -v prometheus >/dev/null || need+=(prometheus)
command -v promtool >/dev/null || need+=(prometheus)
command -v prometheus-pushgateway >/dev/null || need+=(prometheus-pushgateway)
command -v chromium >/dev/null || need+=(chromium)
command -v wrk >/dev/null || need+=(wrk)
command -v psql >/dev/null || need+=(postgresql-client)
command -v redis-server >/dev/null || need+=(redis-server)
if ((${#need[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages: ${need[*]} (run as root, or: sudo apt-get install -y ${need[*]})" >&2
    exit 1
  fi
  # Debian starts a package's service when it is installed; the fixtures start their own on free
  # ports, so forbid that through the standard policy hook (invoke-rc.d exit 101: "action forbidden").
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# A service an earlier install did start is stopped through its own init script.
for svc in prometheus prometheus-pushgateway; do
  if [ -x "/etc/init.d/$svc" ] && [ "$(id -u)" = 0 ]; then
    "/etc/init.d/$svc" status >/dev/null 2>&1 && "/etc/init.d/$svc" stop >/dev/null 2>&1
  fi
done
true
