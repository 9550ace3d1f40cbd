#!/usr/bin/env bash
# The system tools the tests drive: nginx -t, shellcheck, systemd-analyze verify, and the
# chromium that the browser tests run under Playwright (which cannot download its own here).
# Installs the missing ones from Debian/Ubuntu packages when it can (root, or sudo).
set -euo pipefail

declare -A package=(
  [nginx]=nginx [shellcheck]=shellcheck [systemd-analyze]=systemd [chromium]=chromium
)
missing=()
for tool in "${!package[@]}"; do
  if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$tool" ]; then
    missing+=("${package[$tool]}")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "the ops tests need: ${missing[*]} (apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "installing test tools: ${missing[*]}" >&2
"${as_root[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends \
  "${missing[@]}" >/dev/null
