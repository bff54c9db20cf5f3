#!/usr/bin/env bash
# Headless Chromium for the report and A/B-study browser tests (Debian's `chromium` package).
# Idempotent: does nothing when a chromium binary is already on PATH. Needs root (or sudo) and apt.
set -euo pipefail
for bin in chromium chromium-browser; do
    if command -v "$bin" >/dev/null 2>&1; then
        echo "install_browser: $(command -v "$bin") is already installed ($("$bin" --version 2>/dev/null || echo '?'))"
        exit 0
    fi
done
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
echo "install_browser: installed $(command -v chromium) ($(chromium --version 2>/dev/null || echo '?'))"
