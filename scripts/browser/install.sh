#!/usr/bin/env bash
# Installs headless Chromium (Debian's `chromium` package) for the report's
# page tests: they lay the HTML report out at 900 px and screenshot it.
# Needs root (apt); does nothing when a chromium is already on PATH.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "browser/install.sh: installing chromium needs root (apt-get install chromium)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
command -v chromium >/dev/null
