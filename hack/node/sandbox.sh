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
#  - a mount namespace with tmpfs on /run, /var/log and /var/lib (what the kubelet and
#    containerd write at fixed paths there, e.g. /var/log/containers and /var/lib/cni,
#    stays in it) and a sysfs of the network namespace's: containerd's, runc's and the
#    pods' mounts live and die with it.
# COMMAND runs as the only child of pid 1 (a shell) there, with
# AWS_JIT_NODE_SANDBOX=<namespace>, and AWS_JIT_NODE_DIR and TMPDIR in a directory of the
# sandbox's (removed afterwards; kept with AWS_JIT_KEEP_NODE=1, for its logs).
#
# Afterwards: what is still in the network namespace is killed by PID, the namespace is
# deleted, the cgroups runc made for the pods are removed, and the sysctls the kubelet
# changes (global, not per namespace) are put back. SIGINT, SIGTERM and SIGHUP tear down
# too. If a run is killed outright (SIGKILL), the next one finds its state file and
# undoes what it left first. One sandbox per machine at a time (a lock); needs root.
set -euo pipefail
shopt -s inherit_errexit

log() { printf 'node-sandbox: %s\n' "$*" >&2; }

[[ $# -gt 0 ]] || { log "usage: $0 COMMAND [ARGS...]"; exit 2; }
[[ $(id -u) == 0 ]] || { log "error: needs root (network namespaces, containerd, the kubelet)"; exit 1; }
[[ -z ${AWS_JIT_NODE_SANDBOX:-} ]] || { log "error: already inside the node sandbox $AWS_JIT_NODE_SANDBOX"; exit 1; }
for tool in ip nsenter unshare flock sysctl; do
	command -v "$tool" >/dev/null || { log "error: $tool is not installed"; exit 1; }
done

state_dir=/run/lock/aws-jit-node
mkdir -p "$state_dir"
chmod 700 "$state_dir"
exec 7>"$state_dir/lock"
if ! flock -n 7; then
	log "another node sandbox runs on this machine; waiting for it (30 minutes at most)"
	flock -w 1800 7 || { log "error: the other node sandbox still runs"; exit 1; }
fi
# What a run killed outright left: its sysctls' values from before it, its namespace and
# its directory (written below, removed by a finished teardown).
state=$state_dir/state
sysctls=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
	kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
if [[ -f $state ]]; then
	log "a previous run did not tear down; undoing what it left"
	while read -r kind a b; do
		case $kind in
		sysctl) sysctl -q -w "$a=$b" >/dev/null || log "warning: could not restore $a" ;;
		netns)
			for pid in $(ip netns pids "$a" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
			ip netns del "$a" 2>/dev/null || true
			;;
		dir) [[ $a == */aws-jit-node.* ]] && rm -rf "$a" ;;
		esac
	done <"$state"
	rm -f "$state"
fi

ns=aws-jit-node-$$
work=$(mktemp -d "${TMPDIR:-/tmp}/aws-jit-node.XXXXXX")
mkdir "$work/tmp"
declare -A saved
{
	for key in "${sysctls[@]}"; do
		saved[$key]=$(sysctl -n "$key")
		printf 'sysctl %s %s\n' "$key" "${saved[$key]}"
	done
	printf 'netns %s\ndir %s\n' "$ns" "$work"
} >"$state.tmp"
mv "$state.tmp" "$state"
# The cgroup directories before; the pods' that runc adds are removed afterwards.
cgroups_before=$work/cgroups-before
find /sys/fs/cgroup -mindepth 1 -type d 2>/dev/null | sort >"$cgroups_before" || true

child=
teardown() {
	local status=$? pid key dir now removed=0
	trap - EXIT INT TERM HUP
	set +e
	[[ -n $child ]] && kill -TERM "$child" 2>/dev/null
	if ip netns list | grep -qw "$ns"; then
		for pid in $(ip netns pids "$ns" 2>/dev/null); do
			kill -KILL "$pid" 2>/dev/null
		done
		[[ -n $child ]] && wait "$child" 2>/dev/null
		ip netns del "$ns" 2>/dev/null || log "warning: could not delete network namespace $ns"
	fi
	# Only what runc made for the pods: containerd's CRI puts each container in
	# <hierarchy>/k8s.io/<id>; those directories, when new since the start. Deepest
	# first; a cgroup still holding a process would refuse (and be reported).
	while read -r dir; do
		if rmdir "$dir" 2>/dev/null; then
			removed=$((removed + 1))
		else
			log "warning: could not remove cgroup $dir"
		fi
	done < <(find /sys/fs/cgroup -mindepth 1 -type d 2>/dev/null | sort | comm -13 "$cgroups_before" - |
		grep -E '^/sys/fs/cgroup/[^/]+/k8s\.io(/|$)' | sort -r)
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
	rm -f "$state"
	log "torn down: network namespace $ns, $removed cgroups"
	exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" addr add 10.77.0.10/32 dev lo
ip -n "$ns" addr add 10.96.0.1/32 dev lo

# nsenter: the network namespace. unshare: a PID namespace (--fork, --kill-child: the
# command's death ends everything in it) and a private mount namespace, where /run,
# /var/log and /var/lib are tmpfs and /sys a sysfs of the network namespace's (as `ip
# netns exec` mounts it), with the cgroup hierarchies bound back under it (`ip netns
# exec` would leave them out, and the kubelet and runc need them).
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
# In the background, so a signal to this script runs its teardown at once (bash runs
# traps only between commands, and `wait` is one).
nsenter --net="/run/netns/$ns" unshare --pid --fork --kill-child --mount --propagation private --mount-proc \
	env AWS_JIT_NODE_SANDBOX="$ns" AWS_JIT_NODE_DIR="$work" TMPDIR="$work/tmp" \
	bash -c "$prelude" node-sandbox "$@" &
child=$!
status=0
wait "$child" || status=$?
child=
exit "$status"
