#!/usr/bin/env bash
# System commands the test suite runs: installed from Debian's packages when missing
# (CI runs as root with apt reachable). openssl makes the TLS tests' certificates;
# ss (iproute2) reads a listening socket's accept queue.
set -euo pipefail
declare -A package=([openssl]=openssl [ss]=iproute2)
missing=()
for cmd in "${!package[@]}"; do
    command -v "$cmd" >/dev/null || missing+=("${package[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "missing commands for the tests; install: ${missing[*]}" >&2
    exit 1
fi
apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
