#!/usr/bin/env bash
# The system tools some tests use, from Debian's packages: headless Chromium + ChromeDriver (the viewer's browser
# test) and espeak-ng (a known sentence spoken at test time, for the phone decoder's test). Idempotent; where
# apt-get is not usable the tests that need a missing tool skip themselves and say so.
set -u
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v espeak-ng >/dev/null || need+=(espeak-ng)
if [ ${#need[@]} = 0 ]; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "[setup] ${need[*]} not installed and apt-get not usable as this user: the tests that need them will be skipped"
  exit 0
fi
echo "[setup] installing ${need[*]} (Debian)"
apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null \
  || echo "[setup] installing ${need[*]} failed: the tests that need them will be skipped"
