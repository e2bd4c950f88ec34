#!/usr/bin/env bash
# Screenshots a report page as a reader sees it, 900 px wide:
#   scripts/browser/screenshot.sh results/demo/report/report.html docs/images/report-decision.png
#   scripts/browser/screenshot.sh PAGE OUT.png 1400 gallery   # from the section with id="gallery"
# Needs chromium (scripts/browser/install.sh).
set -euo pipefail
page=$(realpath "$1"); out=$2; height=${3:-1400}; anchor=${4:-}
url="file://$page"
[ -n "$anchor" ] && url="$url#$anchor"
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
  --user-data-dir="$profile" --window-size="900,$height" \
  --screenshot="$(realpath -m "$out")" "$url" 2>/dev/null
echo "$out"
