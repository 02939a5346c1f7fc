#!/usr/bin/env bash
# Installs the system packages Cairn's tests and benchmarks use, only where
# missing: nats-server, fio, qemu-utils, libnbd-bin, fuse3, e2fsprogs,
# util-linux and mount (loop devices and ext4 over FUSE). Safe to rerun.
set -euo pipefail

declare -A packages=(
  [nats-server]=nats-server
  [fio]=fio
  [qemu-io]=qemu-utils
  [qemu-nbd]=qemu-utils
  [nbdinfo]=libnbd-bin
  [nbdcopy]=libnbd-bin
  [fusermount3]=fuse3
  [mkfs.ext4]=e2fsprogs
  [fsck.ext4]=e2fsprogs
  [losetup]=util-linux
  [fsfreeze]=util-linux
  [mount]=mount
)
missing=()
for tool in "${!packages[@]}"; do
  if ! command -v "$tool" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$tool" ]; then
    missing+=("${packages[$tool]}")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "==> installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$component"
  fi
done
echo "==> dependencies present: nats-server fio qemu-utils libnbd-bin fuse3 e2fsprogs util-linux mount"
