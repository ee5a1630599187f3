#!/usr/bin/env bash
# Builds (once) the pinned binaries the tests run, moto's server in a virtualenv, and the
# tests' IAM policy evaluator.
#
#   eval "$(hack/ensure-tools.sh)"           # interactively
#   exports=$(hack/ensure-tools.sh)          # in a script under set -e: a failure stops
#   eval "$exports"                          # it (eval "$(...)" would carry on)
#
# Binaries: kube-apiserver, kubectl, and for the tests' node kubelet, kube-scheduler and
# kube-controller-manager (hack/tools/k8s), etcd (hack/tools/etcd) and helm
# (hack/tools/helm), built with Go from those modules into
#   ${AWS_JIT_CACHE:-$HOME/.cache/aws-jit}/bin/<hash of go.mod/go.sum, flags, go version>/
# The GitOps health checker (hack/tools/kstatus: kstatus and Argo CD's Lua VM), built
# the same way into ${AWS_JIT_CACHE}/kstatus/<hash of its module and sources>/.
# moto (and cfn-lint): a virtualenv at ${AWS_JIT_CACHE}/venv/<hash of
# hack/requirements-moto.txt>/.
# The IAM policy evaluator (hack/policy-eval, Node.js): its packages at
# ${AWS_JIT_CACHE}/policy-eval/<hash of package.json/package-lock.json>/node_modules
# (npm ci from the lockfile), its CLI copied beside them as cli/evaluate-<hash>.mjs.
# The node's containerd, runc and CNI plugins (hack/node/packages.txt, Debian's packages
# unpacked, not installed) and its pause binary (hack/node/pause.c, static) at
# ${AWS_JIT_CACHE}/node/<hash of both>/.
# Each is skipped when already there, so a second run builds nothing (and needs no
# network). The binaries and the evaluator's packages are built in a temporary directory
# renamed into place when complete; the venv (which cannot move) is marked complete
# last. Either way an interrupted build is never mistaken for a finished one. Logs go to
# stderr; stdout carries only the `export` lines to eval.
set -euo pipefail
# Command substitutions keep errexit (bash clears it there by default), so a failure
# inside $(…) stops it too; and a $(…) is never an argument of another command (whose
# status would hide its failure): assigned on a line of its own, then used.
shopt -s inherit_errexit

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${AWS_JIT_CACHE:-$HOME/.cache/aws-jit}
tools=$root/hack/tools
requirements=$root/hack/requirements-moto.txt

log() { printf 'ensure-tools: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# name, module dir (under hack/tools), package to build
binaries=(
	"kube-apiserver k8s k8s.io/kubernetes/cmd/kube-apiserver"
	"kubectl k8s k8s.io/kubernetes/cmd/kubectl"
	"etcd etcd go.etcd.io/etcd/server/v3"
	"helm helm helm.sh/helm/v4/cmd/helm"
	# The single-node cluster of the tests under a real kubelet (hack/node/).
	"kubelet k8s k8s.io/kubernetes/cmd/kubelet"
	"kube-scheduler k8s k8s.io/kubernetes/cmd/kube-scheduler"
	"kube-controller-manager k8s k8s.io/kubernetes/cmd/kube-controller-manager"
)

# The version a module requires, e.g. `modversion k8s k8s.io/kubernetes` -> v1.37.2.
modversion() {
	awk -v m="$2" '$1 == m && $2 ~ /^v/ { print $2; exit } $1 == "require" && $2 == m { print $3; exit }' \
		"$tools/$1/go.mod"
}

# The ldflags that stamp a binary with its release version (the default strings
# are v0.0.0-master / v4.x, which version checks, e.g. a chart's kubeVersion, reject).
ldflags_for() {
	local flags='-s -w'
	case $1 in
	kube-apiserver | kubectl | kubelet | kube-scheduler | kube-controller-manager)
		local v major minor pkg
		v=$(modversion k8s k8s.io/kubernetes)
		[[ $v =~ ^v([0-9]+)\.([0-9]+)\. ]] || die "cannot read k8s.io/kubernetes' version from $tools/k8s/go.mod"
		major=${BASH_REMATCH[1]} minor=${BASH_REMATCH[2]}
		for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
			flags+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
			flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
		done
		;;
	helm)
		local v
		v=$(modversion helm helm.sh/helm/v4)
		[[ $v =~ ^v[0-9]+\. ]] || die "cannot read helm.sh/helm/v4's version from $tools/helm/go.mod"
		flags+=" -X helm.sh/helm/v4/internal/version.version=$v"
		flags+=" -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
		;;
	esac
	printf '%s' "$flags"
}

bin_key() {
	# Everything that decides the binaries: the modules, what is built with which flags,
	# and the toolchain.
	local entry name mod flags inputs mods=() files=()
	# The modules of these binaries only (hack/tools/kstatus has a key of its own).
	for entry in "${binaries[@]}"; do
		read -r _ mod _ <<<"$entry"
		[[ " ${mods[*]} " == *" $mod "* ]] || mods+=("$mod")
	done
	readarray -t mods < <(printf '%s\n' "${mods[@]}" | sort)
	for mod in "${mods[@]}"; do files+=("./$mod/go.mod"); done
	for mod in "${mods[@]}"; do files+=("./$mod/go.sum"); done
	inputs=$(cd "$tools" && sha256sum "${files[@]}")
	for entry in "${binaries[@]}"; do
		read -r name _ <<<"$entry"
		flags=$(ldflags_for "$name")
		inputs+=$'\n'"$entry $flags"
	done
	inputs+=$'\n'$(GOTOOLCHAIN=local go env GOVERSION GOOS GOARCH)
	printf '%s\n' "$inputs" | sha256sum | cut -c1-16
}

bin_complete() {
	local dir=$1 entry
	[[ -f $dir/.complete ]] || return 1
	for entry in "${binaries[@]}"; do
		read -r name _ <<<"$entry"
		[[ -x $dir/$name ]] || return 1
	done
}

build_binaries() {
	local dest=$1 entry name mod pkg start flags
	# Leftovers of a killed build (we hold the lock: no other build is running).
	rm -rf "$cache"/bin/.tmp.*
	build_tmp=$(mktemp -d "$cache/bin/.tmp.XXXXXX")
	chmod 755 "$build_tmp" # mktemp makes it 0700
	# Removed on any exit, a signal included; after the rename there is nothing to remove.
	trap 'rm -rf "$build_tmp"' EXIT
	trap 'exit 130' INT TERM HUP
	for entry in "${binaries[@]}"; do
		read -r name mod pkg <<<"$entry"
		log "building $name ($pkg)"
		start=$SECONDS
		flags=$(ldflags_for "$name")
		# -mod=readonly: go.mod/go.sum are complete and checked in; never rewrite them here.
		GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS='-mod=readonly -buildvcs=false' \
			go -C "$tools/$mod" build -trimpath -ldflags="$flags" -o "$build_tmp/$name" "$pkg" >&2
		log "built $name in $((SECONDS - start))s"
	done
	touch "$build_tmp/.complete"
	mv -T "$build_tmp" "$dest"
	trap - EXIT INT TERM HUP
}

ensure_binaries() {
	local key dest
	command -v go >/dev/null || die "go is not installed (needed to build the test binaries)"
	key=$(bin_key)
	dest=$cache/bin/$key
	if bin_complete "$dest"; then
		log "binaries up to date in $dest"
	else
		mkdir -p "$cache/bin"
		# One builder at a time; whoever waited finds the work done.
		exec 8>"$cache/bin/.lock"
		flock 8
		if bin_complete "$dest"; then
			log "binaries up to date in $dest"
		else
			rm -rf "$dest" # an incomplete leftover (no .complete marker)
			log "building binaries into $dest (the first build takes several minutes)"
			build_binaries "$dest"
		fi
		exec 8>&-
	fi
	bin_dir=$dest
}

ensure_moto() {
	local key dest
	[[ -f $requirements ]] || die "missing $requirements"
	key=$(sha256sum <"$requirements" | cut -c1-16)
	dest=$cache/venv/$key
	if [[ -x $dest/bin/moto_server && -f $dest/.complete ]]; then
		log "moto venv up to date in $dest"
	else
		mkdir -p "$cache/venv"
		exec 9>"$cache/venv/.lock"
		flock 9
		if [[ -x $dest/bin/moto_server && -f $dest/.complete ]]; then
			log "moto venv up to date in $dest"
		else
			command -v python3 >/dev/null || die "python3 is not installed (needed for moto)"
			rm -rf "$dest"
			log "creating moto venv in $dest"
			# A venv hardcodes its own path in its scripts, so it is built at its final path
			# and marked complete last; an interrupted build lacks .complete and is redone.
			python3 -m venv "$dest" >&2
			"$dest/bin/pip" install --quiet -r "$requirements" >&2
			touch "$dest/.complete"
		fi
		exec 9>&-
	fi
	moto_server=$dest/bin/moto_server
	cfn_lint=$dest/bin/cfn-lint
	[[ -x $cfn_lint ]] || die "no cfn-lint in $dest (hack/requirements-moto.txt pins it)"
	aws_cli=$dest/bin/aws
	[[ -x $aws_cli ]] || die "no aws CLI in $dest (hack/requirements-moto.txt pins it)"
}

# The policy evaluator's packages depend only on the lockfile (keyed by it, installed
# once: offline afterwards); the CLI is a file copied next to them (keyed by its own
# hash too), so editing it never reinstalls anything. Node resolves the CLI's imports
# from the node_modules above it.
ensure_policy_eval() {
	local dir=$root/hack/policy-eval key dest cli tmp version
	[[ -f $dir/package-lock.json && -f $dir/package.json && -f $dir/evaluate.mjs ]] ||
		die "missing hack/policy-eval/{package.json,package-lock.json,evaluate.mjs}"
	command -v node >/dev/null || die "node is not installed (needed for the IAM policy evaluator)"
	key=$(cat "$dir/package.json" "$dir/package-lock.json" | sha256sum | cut -c1-16)
	dest=$cache/policy-eval/$key
	if [[ -f $dest/.complete ]]; then
		log "policy evaluator up to date in $dest"
	else
		command -v npm >/dev/null || die "npm is not installed (needed for the IAM policy evaluator)"
		mkdir -p "$cache/policy-eval"
		exec 7>"$cache/policy-eval/.lock"
		flock 7
		if [[ -f $dest/.complete ]]; then
			log "policy evaluator up to date in $dest"
		else
			rm -rf "$dest" "$cache"/policy-eval/.tmp.*
			log "installing the policy evaluator into $dest"
			eval_tmp=$(mktemp -d "$cache/policy-eval/.tmp.XXXXXX")
			chmod 755 "$eval_tmp"
			trap 'rm -rf "$eval_tmp"' EXIT
			trap 'exit 130' INT TERM HUP
			cp "$dir/package.json" "$dir/package-lock.json" "$eval_tmp/"
			# Exactly the lockfile (npm ci fails if package.json disagrees with it); no
			# install scripts, no audit or funding calls.
			npm ci --prefix "$eval_tmp" --ignore-scripts --no-audit --no-fund --loglevel=error >&2
			touch "$eval_tmp/.complete"
			mv -T "$eval_tmp" "$dest"
			trap - EXIT INT TERM HUP
		fi
		exec 7>&-
	fi
	key=$(sha256sum <"$dir/evaluate.mjs" | cut -c1-16)
	cli=$dest/cli/evaluate-$key.mjs
	if [[ ! -x $cli ]]; then
		mkdir -p "$dest/cli"
		tmp=$(mktemp "$dest/cli/.tmp.XXXXXX")
		cp "$dir/evaluate.mjs" "$tmp"
		chmod 755 "$tmp"
		mv "$tmp" "$cli"
	fi
	# One run proves node can load it (and logs what it evaluates with).
	version=$("$cli" --version)
	log "policy evaluator $cli: $version"
	policy_eval=$cli
}

# The tests' GitOps health checker (hack/tools/kstatus: kstatus from sigs.k8s.io/cli-utils
# and Argo CD's Lua VM, gopher-lua), a binary at ${AWS_JIT_CACHE}/kstatus/<hash of its
# module, sources and go version>/kstatus. Keyed apart from the binaries above: editing
# it never rebuilds kube-apiserver.
ensure_kstatus() {
	local dir=$tools/kstatus key dest inputs
	[[ -f $dir/go.mod && -f $dir/go.sum ]] || die "missing hack/tools/kstatus/{go.mod,go.sum}"
	inputs=$(cd "$dir" && sha256sum go.mod go.sum ./*.go)
	inputs+=$'\n'$(GOTOOLCHAIN=local go env GOVERSION GOOS GOARCH)
	key=$(printf '%s\n' "$inputs" | sha256sum | cut -c1-16)
	dest=$cache/kstatus/$key
	if [[ -x $dest/kstatus && -f $dest/.complete ]]; then
		log "kstatus up to date in $dest"
	else
		mkdir -p "$cache/kstatus"
		exec 6>"$cache/kstatus/.lock"
		flock 6
		if [[ -x $dest/kstatus && -f $dest/.complete ]]; then
			log "kstatus up to date in $dest"
		else
			rm -rf "$dest" "$cache"/kstatus/.tmp.*
			log "building kstatus into $dest"
			kstatus_tmp=$(mktemp -d "$cache/kstatus/.tmp.XXXXXX")
			chmod 755 "$kstatus_tmp"
			trap 'rm -rf "$kstatus_tmp"' EXIT
			trap 'exit 130' INT TERM HUP
			GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS='-mod=readonly -buildvcs=false' \
				go -C "$dir" build -trimpath -ldflags='-s -w' -o "$kstatus_tmp/kstatus" . >&2
			touch "$kstatus_tmp/.complete"
			mv -T "$kstatus_tmp" "$dest"
			trap - EXIT INT TERM HUP
		fi
		exec 6>&-
	fi
	kstatus=$dest/kstatus
}

# The node's runtime (see the top of this file). apt-get download fetches exactly the
# pinned versions; an index too old to know them is refreshed once.
ensure_node() {
	local list=$root/hack/node/packages.txt pause=$root/hack/node/pause.c key dest pkgs=()
	[[ -f $list && -f $pause ]] || die "missing hack/node/packages.txt or hack/node/pause.c"
	key=$(cat "$list" "$pause" | sha256sum | cut -c1-16)
	dest=$cache/node/$key
	if [[ -f $dest/.complete ]]; then
		log "node runtime up to date in $dest"
	else
		command -v apt-get >/dev/null || die "apt-get is not installed (the node's runtime comes from Debian)"
		command -v gcc >/dev/null || die "gcc is not installed (needed for the node's pause binary)"
		mkdir -p "$cache/node"
		exec 5>"$cache/node/.lock"
		flock 5
		if [[ -f $dest/.complete ]]; then
			log "node runtime up to date in $dest"
		else
			rm -rf "$dest" "$cache"/node/.tmp.*
			log "unpacking the node runtime into $dest"
			node_tmp=$(mktemp -d "$cache/node/.tmp.XXXXXX")
			chmod 755 "$node_tmp"
			trap 'rm -rf "$node_tmp"' EXIT
			trap 'exit 130' INT TERM HUP
			readarray -t pkgs < <(awk '!/^#/ && NF == 2 { print $1 "=" $2 }' "$list")
			mkdir "$node_tmp/debs" "$node_tmp/root"
			if ! (cd "$node_tmp/debs" && apt-get download -q -o APT::Sandbox::User=root "${pkgs[@]}" >&2); then
				log "refreshing the package index (apt-get update)"
				apt-get update -q >&2
				(cd "$node_tmp/debs" && apt-get download -q -o APT::Sandbox::User=root "${pkgs[@]}" >&2)
			fi
			for deb in "$node_tmp"/debs/*.deb; do
				dpkg-deb -x "$deb" "$node_tmp/root"
			done
			rm -rf "$node_tmp/debs"
			gcc -static -O2 -o "$node_tmp/pause" "$pause" >&2
			touch "$node_tmp/.complete"
			mv -T "$node_tmp" "$dest"
			trap - EXIT INT TERM HUP
		fi
		exec 5>&-
	fi
	node_root=$dest
}

ensure_binaries
ensure_node
ensure_kstatus
ensure_moto
ensure_policy_eval

printf 'export AWS_JIT_BIN_DIR=%q\n' "$bin_dir"
printf 'export AWS_JIT_MOTO_SERVER=%q\n' "$moto_server"
printf 'export AWS_JIT_CFN_LINT=%q\n' "$cfn_lint"
printf 'export AWS_JIT_AWS_CLI=%q\n' "$aws_cli"
# A command: reads the cases as JSON on stdin (see hack/policy-eval/README.md).
printf 'export AWS_JIT_POLICY_EVAL=%q\n' "$policy_eval"
# Reads objects (JSON/YAML) on stdin, prints kstatus's verdict on each (and Argo CD's,
# with -argocd-health FILE): see hack/tools/kstatus/main.go.
printf 'export AWS_JIT_KSTATUS=%q\n' "$kstatus"
# containerd, runc and the CNI plugins under usr/, and the pause binary.
printf 'export AWS_JIT_NODE_RUNTIME=%q\n' "$node_root"
# shellcheck disable=SC2016 # $PATH is expanded by whoever evals this line, not here
printf 'export PATH=%q:"$PATH"\n' "$bin_dir"
