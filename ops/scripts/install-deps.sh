#!/usr/bin/env bash
# Installs the system packages Cairn's tests and benchmarks use, only where
# missing: nats-server, fio, qemu-utils, libnbd-bin, fuse3, e2fsprogs,
# util-linux and mount (loop devices and ext4 over FUSE), python3 with venv,
# restic (the peer of `just bench-push`), and s3s-fs from crates.io (the S3
# server of integration/tests/repo.rs and the benchmark; pinned to 0.14.1
# as DESIGN.md says, for rustc 1.95).
# Then the Python client test's packages (integration/py/requirements.txt:
# nats-py, jsonschema, PyYAML from PyPI) into a venv at target/py-venv
# (CAIRN_PY_VENV overrides; integration/tests/nats_py.rs looks there).
# Safe to rerun.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)

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
  [python3]=python3
  [restic]=restic
)
missing=()
for tool in "${!packages[@]}"; do
  if ! command -v "$tool" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$tool" ]; then
    missing+=("${packages[$tool]}")
  fi
done
# python3 -m venv needs ensurepip, which Debian ships separately.
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
  missing+=(python3-venv)
fi
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

if ! command -v s3s-fs >/dev/null 2>&1; then
  echo "==> cargo install s3s-fs@0.14.1"
  cargo install --quiet --locked s3s-fs@0.14.1 --features binary
fi

venv=${CAIRN_PY_VENV:-$root/target/py-venv}
requirements=$root/integration/py/requirements.txt
if ! cmp -s "$requirements" "$venv/cairn-requirements.txt" ||
  ! "$venv/bin/python" -c 'import nats, jsonschema, yaml' >/dev/null 2>&1; then
  echo "==> python venv $venv (nats-py, jsonschema, PyYAML)"
  python3 -m venv --clear "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/cairn-requirements.txt"
fi
echo "==> dependencies present: nats-server fio qemu-utils libnbd-bin fuse3 e2fsprogs util-linux mount python3 restic s3s-fs ($venv)"
