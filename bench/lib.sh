# bench/lib.sh: helpers shared by the benchmark scripts, which source it.
# A script sets W (its work directory) and KEEP (non-empty: keep W).

say() { echo "== $(date +%T) $*" >&2; }
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
waitport() { # waitport PORT SECONDS
	local i
	for ((i = 0; i < $2 * 10; i++)); do
		if (: </dev/tcp/127.0.0.1/"$1") 2>/dev/null; then return 0; fi
		sleep 0.1
	done
	echo "nothing listens on 127.0.0.1:$1" >&2
	return 1
}

# stop PID…: SIGTERM to each process, then wait for all of them.
stop() {
	local p
	for p; do kill -TERM "$p" 2>/dev/null || true; done
	for p; do wait "$p" 2>/dev/null || true; done
}

# finish: remove the work directory, or say where it is kept.
finish() { if [[ -n $KEEP ]]; then echo "work directory kept: $W" >&2; else rm -rf "$W"; fi; }

# need_files N: raise this shell's open-files limit (which the brokers and
# the generator inherit) to N, or fail with the limits.
need_files() {
	if (($(ulimit -n) < $1)); then ulimit -n "$1" 2>/dev/null || ulimit -n "$(ulimit -Hn)"; fi
	if (($(ulimit -n) < $1)); then
		echo "$(basename "$0"): $1 open files per process needed, ulimit -n allows $(ulimit -n) (hard $(ulimit -Hn))" >&2
		exit 1
	fi
}
