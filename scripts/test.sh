#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every check.
# Safe to run repeatedly; installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# Debian packages: a real Prometheus (+ promtool) and Alertmanager for the
# daemon, dashboard and alert-rule tests; a real forward proxy (tinyproxy)
# for the proxy tests; nginx and wrk for the side-by-side ceiling.
need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)
command -v tinyproxy >/dev/null 2>&1 || need+=(tinyproxy-bin)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]} (apt)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Grafana's published dashboard types, to type-check dashboards/*.json.
if [ -f tests/dashboards/package.json ] && [ ! -d tests/dashboards/node_modules ]; then
  echo "== installing @grafana/schema + typescript (npm)"
  (cd tests/dashboards && npm ci --no-audit --no-fund --loglevel=error)
fi

command -v cargo-nextest >/dev/null 2>&1 || cargo install cargo-nextest --locked

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo nextest run"
cargo nextest run --no-fail-fast "$@"
