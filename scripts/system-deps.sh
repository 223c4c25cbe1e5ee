#!/usr/bin/env bash
# System tools the test suite needs besides Python: promtool (Debian's `prometheus` package)
# and amtool (`prometheus-alertmanager`), which check deploy/prometheus and deploy/alertmanager,
# Chromium (`chromium`), which the dashboard's browser test drives through Playwright,
# redis-server (online feature state, Celery broker) and nginx (the stack's load balancer).
# As root with apt-get, installs what is missing without starting the packages' services;
# otherwise prints what to install and exits 1 if something is missing.
set -euo pipefail

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v amtool >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "error: missing ${missing[*]}; install them, e.g." >&2
    echo "  sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

# The packages would start prometheus and alertmanager as services; a policy-rc.d that
# answers 101 ("action forbidden") keeps invoke-rc.d from starting them (as in Docker images).
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    made_policy=1
fi
cleanup() { if [ "$made_policy" -eq 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

echo ">> installing ${missing[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
command -v promtool >/dev/null && command -v amtool >/dev/null && command -v chromium >/dev/null
command -v redis-server >/dev/null && { command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; }
