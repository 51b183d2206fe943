#!/usr/bin/env bash
# Install Debian's Chromium and ChromeDriver for the browser tests when they are missing.
# Playwright drives this system browser (executable_path); it never downloads a browser of its own.
set -euo pipefail
if [ -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ]; then exit 0; fi
echo "Chromium is missing: installing Debian's chromium and chromium-driver"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
if command -v apt-get >/dev/null 2>&1; then
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium chromium-driver
else
  echo "No apt-get here: install Chromium yourself and set CHROMIUM_PATH=/path/to/chromium" >&2
  exit 1
fi
