#!/usr/bin/env bash
# Screenshots a report page as a reader sees it, 900 px wide:
#   scripts/browser/screenshot.sh results/demo/report/report.html docs/images/report-decision.png
# Needs chromium (scripts/browser/install.sh).
set -euo pipefail
page=$(realpath "$1"); out=$2; height=${3:-1400}
url="file://$page"
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
  --user-data-dir="$profile" --window-size="900,$height" \
  --screenshot="$(realpath -m "$out")" "$url" 2>/dev/null
echo "$out"
