#!/usr/bin/env bash
# Run a command in a network namespace of its own that has only a loopback interface, and
# remove the namespace afterwards: `make cluster-test` runs its containers (podman
# --network host) in there, so the container cluster's addresses are 127.0.0.1 (Ray resolves
# a loopback --node-ip-address to the machine's outside address otherwise), nothing it binds,
# even on 0.0.0.0, is reachable from outside, and its ports cannot clash with the machine's
# own services. nsenter rather than `ip netns exec`: the latter remounts /sys, which hides the
# cgroup mounts podman needs. Needs root (CAP_SYS_ADMIN), as podman's root mode does.
#
#   scripts/in_loopback_netns.sh NAME COMMAND [ARGS...]
set -euo pipefail
if [ "$#" -lt 2 ]; then
    echo "usage: $0 NAME COMMAND [ARGS...]" >&2
    exit 2
fi
name="$1"
shift
if [ "$(id -u)" -ne 0 ]; then
    echo "$0: needs root to make a network namespace (ip netns add)" >&2
    exit 2
fi
ip netns delete "$name" 2>/dev/null || true
ip netns add "$name"
trap 'ip netns delete "$name" 2>/dev/null || true' EXIT
ip -n "$name" link set lo up
status=0
nsenter --net="/run/netns/$name" "$@" || status=$?
exit "$status"
