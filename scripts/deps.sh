#!/usr/bin/env bash
# Installs what building, running and testing metro needs on a Debian
# machine, when missing: Go modules (go mod download) and the Debian
# packages of the real initiators and the reference target.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v iscsi-test-cu >/dev/null || need+=(libiscsi-bin)
command -v qemu-img >/dev/null || need+=(qemu-utils)
[ -e /usr/lib/x86_64-linux-gnu/qemu/block-iscsi.so ] || ls /usr/lib/*/qemu/block-iscsi.so >/dev/null 2>&1 || need+=(qemu-block-extra)
command -v tgtd >/dev/null || need+=(tgt)
if [ ${#need[@]} -gt 0 ]; then
  echo "deps: installing ${need[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
go mod download
