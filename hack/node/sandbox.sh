#!/usr/bin/env bash
# Runs a command inside a sandbox of its own for a real single-node cluster, and tears
# the sandbox down afterwards however the command ends:
#
#   hack/node/sandbox.sh COMMAND [ARGS...]
#
# The sandbox is
#  - a network namespace made here (`ip netns add aws-jit-node-<pid>`), with only a
#    loopback link that holds every address the node uses: 10.77.0.10 (the node),
#    10.96.0.1 (the `kubernetes` Service, where the apiserver listens), and the pods'
#    bridge 10.88.0.0/24 that the CNI plugin adds. Nothing is routed out of it;
#  - a PID namespace: when COMMAND ends, the kernel kills everything started inside it,
#    containerd's shims and the containers included;
#  - a mount namespace with tmpfs on /run, /var/log and /var/lib: containerd's, runc's and
#    the pods' network namespace mounts live and die with it.
# COMMAND runs as the only child of pid 1 (a shell) there, with AWS_JIT_NODE_SANDBOX=<namespace>, and
# AWS_JIT_NODE_DIR and TMPDIR in a directory of the sandbox's (removed afterwards; kept
# with AWS_JIT_KEEP_NODE=1, for its logs).
#
# Afterwards: what is still in the network namespace is killed by PID, the namespace is
# deleted, the cgroups runc made are removed, and the sysctls the kubelet changes
# (vm.overcommit_memory, kernel.panic, kernel.panic_on_oops: global, not per namespace)
# are put back. One sandbox per machine at a time (a lock); needs root.
set -euo pipefail
shopt -s inherit_errexit

log() { printf 'node-sandbox: %s\n' "$*" >&2; }

[[ $# -gt 0 ]] || { log "usage: $0 COMMAND [ARGS...]"; exit 2; }
[[ $(id -u) == 0 ]] || { log "error: needs root (network namespaces, containerd, the kubelet)"; exit 1; }
for tool in ip nsenter unshare flock; do
	command -v "$tool" >/dev/null || { log "error: $tool is not installed"; exit 1; }
done

lock=${AWS_JIT_NODE_LOCK:-/run/lock/aws-jit-node.lock}
mkdir -p "$(dirname "$lock")"
exec 7>"$lock"
if ! flock -n 7; then
	log "another node sandbox runs on this machine; waiting for it"
	flock 7
fi

ns=aws-jit-node-$$
work=$(mktemp -d "${TMPDIR:-/tmp}/aws-jit-node.XXXXXX")
mkdir "$work/tmp"
sysctls=(vm.overcommit_memory kernel.panic kernel.panic_on_oops)
declare -A saved
for key in "${sysctls[@]}"; do
	saved[$key]=$(sysctl -n "$key")
done
# The cgroup directories before; what runc adds is removed afterwards.
cgroups_before=$(mktemp)
find /sys/fs/cgroup -mindepth 1 -type d 2>/dev/null | sort >"$cgroups_before" || true

teardown() {
	local status=$? pid key dir now removed=0
	trap - EXIT INT TERM HUP
	if ip netns list | grep -qw "$ns"; then
		for pid in $(ip netns pids "$ns" 2>/dev/null); do
			kill -KILL "$pid" 2>/dev/null || true
		done
		ip netns del "$ns" 2>/dev/null || log "warning: could not delete network namespace $ns"
	fi
	# Deepest first; a cgroup still holding a process would refuse (and be reported).
	while read -r dir; do
		if rmdir "$dir" 2>/dev/null; then
			removed=$((removed + 1))
		else
			log "warning: could not remove cgroup $dir"
		fi
	done < <(find /sys/fs/cgroup -mindepth 1 -type d 2>/dev/null | sort | comm -13 "$cgroups_before" - | sort -r)
	rm -f "$cgroups_before"
	for key in "${sysctls[@]}"; do
		now=$(sysctl -n "$key")
		if [[ $now != "${saved[$key]}" ]]; then
			if sysctl -q -w "$key=${saved[$key]}" >/dev/null; then
				log "restored $key to ${saved[$key]} (the run left $now)"
			else
				log "warning: could not restore $key to ${saved[$key]} (it is $now)"
			fi
		fi
	done
	if [[ -n ${AWS_JIT_KEEP_NODE:-} ]]; then
		log "keeping $work"
	else
		# The mounts went with the mount namespace: what is left are plain files.
		rm -rf "$work" || log "warning: could not remove $work"
	fi
	if ip netns list | grep -qw "$ns"; then
		log "warning: network namespace $ns is still there"
	fi
	log "torn down: network namespace $ns, $removed cgroups"
	exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT TERM HUP

ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" addr add 10.77.0.10/32 dev lo
ip -n "$ns" addr add 10.96.0.1/32 dev lo

status=0
# nsenter: the network namespace. unshare: a PID namespace (--fork, --kill-child: the
# command's death ends everything in it) and a private mount namespace, where /run,
# /var/log and /var/lib are tmpfs (what the kubelet and containerd write there at fixed
# paths, e.g. /var/log/containers and /var/lib/cni, stays in the sandbox) and /sys a sysfs of the network namespace's (as `ip netns exec` mounts it), with
# the cgroup hierarchies bound back under it (`ip netns exec` would leave them out, and
# the kubelet and runc need them).
prelude='
set -e
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=755 tmpfs /var/log
mount -t tmpfs -o mode=755 tmpfs /var/lib
keep=$AWS_JIT_NODE_DIR/.cgroup
mkdir -p "$keep"
mount --rbind /sys/fs/cgroup "$keep"
mount -t sysfs sysfs /sys
mount --rbind "$keep" /sys/fs/cgroup
umount -l "$keep"
set +e
"$@"
exit $?'
nsenter --net="/run/netns/$ns" unshare --pid --fork --kill-child --mount --propagation private --mount-proc \
	env AWS_JIT_NODE_SANDBOX="$ns" AWS_JIT_NODE_DIR="$work" TMPDIR="$work/tmp" \
	bash -c "$prelude" node-sandbox "$@" || status=$?
exit "$status"
