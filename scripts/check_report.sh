#!/usr/bin/env bash
# Render a run's report.html in headless Chromium (Debian's `chromium`) and save a screenshot,
# proving the report opens offline. Usage: scripts/check_report.sh RUN_DIR [OUT.png]
set -euo pipefail
run_dir=${1:?usage: scripts/check_report.sh RUN_DIR [OUT.png]}
out=${2:-$run_dir/report.png}
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --window-size=1100,2400 \
  --screenshot="$out" "file://$(realpath "$run_dir")/report.html" >/dev/null 2>&1
test -s "$out" && echo "rendered $out ($(stat -c %s "$out") bytes)"
