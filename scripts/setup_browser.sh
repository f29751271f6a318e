#!/usr/bin/env bash
# Headless Chromium + ChromeDriver from Debian's packages, for the viewer's browser test. Idempotent; skipped
# (the test then skips itself) where apt-get is not usable.
set -u
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "[setup] chromium not installed and apt-get not usable as this user: the browser test will be skipped"; exit 0
fi
echo "[setup] installing chromium + chromium-driver (Debian)"
apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
  || echo "[setup] chromium install failed: the browser test will be skipped"
