#!/usr/bin/env bash
# Throwaway PostgreSQL for Vitrine's store tests.
#
#   dir=$(mktemp -d)                       # or leave DIR out: a temp dir is made
#   dsn=$(.ci/postgres.sh start "$dir")    # prints only the DSN on stdout
#   VITRINE_TEST_POSTGRES=$dsn go test ./overlay/...
#   .ci/postgres.sh stop "$dir"            # stops the server, removes DIR
#   .ci/postgres.sh outage "$dir" 3        # down for 3 s, then up again
#
# start: initialises a fresh cluster in DIR/data (an old cluster left in DIR by
# an earlier run is stopped and wiped first), listens on 127.0.0.1 only, on the
# first free port from $VITRINE_PG_PORT (default 55432), with trust auth (it
# only accepts loopback and a socket inside DIR), and creates database
# vitrine_test. The server's PID goes to DIR/postgres.pid, its log to
# DIR/postgres.log; progress and the stop command go to stderr.
# Uses Debian's PostgreSQL binaries (/usr/lib/postgresql/<v>/bin, override with
# $PG_BIN). As root, the server runs as the postgres OS user, since PostgreSQL
# refuses to run as root.
set -euo pipefail

log() { echo "postgres.sh: $*" >&2; }

pg_bin() {
	if [[ -n "${PG_BIN:-}" ]]; then
		echo "$PG_BIN"
		return
	fi
	local d
	for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
		if [[ -x "$d/initdb" ]]; then
			echo "$d"
			return
		fi
	done
	log "no PostgreSQL found under /usr/lib/postgresql (apt-get install postgresql)"
	exit 1
}

# as_pg runs a command as the user that owns the cluster.
as_pg() {
	if [[ $(id -u) -eq 0 ]]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

port_taken() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

stop_cluster() {
	local dir=$1 bin
	bin=$(pg_bin)
	if [[ -f "$dir/data/postmaster.pid" ]]; then
		(cd "$dir" && as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >&2) || true
	fi
}

start() {
	local dir=${1:-} bin port
	bin=$(pg_bin)
	if [[ -z "$dir" ]]; then
		dir=$(mktemp -d "${TMPDIR:-/tmp}/vitrine-pg.XXXXXX")
	fi
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	stop_cluster "$dir"
	rm -rf "$dir/data" "$dir/postgres.pid" "$dir/postgres.log"
	if [[ $(id -u) -eq 0 ]]; then
		chown postgres "$dir"
		if ! runuser -u postgres -- test -w "$dir"; then
			log "user postgres cannot reach $dir (a parent directory is closed to it); pick a DIR under /tmp"
			exit 1
		fi
	fi

	port=${VITRINE_PG_PORT:-55432}
	while port_taken "$port"; do
		port=$((port + 1))
		if ((port > ${VITRINE_PG_PORT:-55432} + 100)); then
			log "no free port near ${VITRINE_PG_PORT:-55432}"
			exit 1
		fi
	done

	cd "$dir"
	as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
		{ cat "$dir/initdb.log" >&2; exit 1; }
	as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
		-o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200" start >&2 ||
		{ cat "$dir/postgres.log" >&2; exit 1; }
	head -n 1 "$dir/data/postmaster.pid" >"$dir/postgres.pid"
	echo "$port" >"$dir/port"
	as_pg "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres vitrine_test
	log "running (pid $(cat "$dir/postgres.pid")); stop with: $0 stop $dir"
	echo "postgres://postgres@127.0.0.1:$port/vitrine_test?sslmode=disable"
}

# outage stops the server of DIR for SECONDS, then starts it again on its
# port with its data: a database restart in the middle of a test.
outage() {
	local dir=${1:?usage: postgres.sh outage DIR SECONDS} secs=${2:-2} bin port
	bin=$(pg_bin)
	port=$(cat "$dir/port")
	stop_cluster "$dir"
	sleep "$secs"
	cd "$dir"
	as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
		-o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200" start >&2 ||
		{ cat "$dir/postgres.log" >&2; exit 1; }
	head -n 1 "$dir/data/postmaster.pid" >"$dir/postgres.pid"
}

stop() {
	local dir=${1:?usage: postgres.sh stop DIR}
	stop_cluster "$dir"
	rm -rf "$dir"
}

case "${1:-start}" in
start) start "${2:-}" ;;
stop) stop "${2:-}" ;;
outage) outage "${2:-}" "${3:-2}" ;;
*)
	echo "usage: $0 [start [DIR]] | stop DIR | outage DIR SECONDS" >&2
	exit 2
	;;
esac
