#!/usr/bin/env bash
# Vitrine's whole test suite, on a machine that has only Go: installs what the
# tests need from Debian (ffmpeg for the test clips, PostgreSQL for the store,
# nats-server for the cluster, pebble for ACME),
# starts a throwaway PostgreSQL on 127.0.0.1, checks formatting and vet, then
# runs every test with the race detector.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v ffmpeg >/dev/null || need+=(ffmpeg)
command -v openssl >/dev/null || need+=(openssl)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v promtool >/dev/null || need+=(prometheus)
[[ -x /usr/bin/chromium ]] || need+=(chromium)
command -v npm >/dev/null || need+=(nodejs npm)
command -v ip >/dev/null || need+=(iproute2)
[[ -x /usr/sbin/nats-server ]] || need+=(nats-server)
command -v pebble >/dev/null || need+=(pebble)
if ((${#need[@]})); then
	sudo=""
	[[ $(id -u) -eq 0 ]] || sudo=sudo
	echo "test.sh: installing ${need[*]}" >&2
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

pgdir=$(mktemp -d)
trap '.ci/postgres.sh stop "$pgdir" >/dev/null 2>&1 || true' EXIT
VITRINE_TEST_POSTGRES=$(.ci/postgres.sh start "$pgdir")
export PATH="$PATH:/usr/sbin"
export VITRINE_TEST_POSTGRES

go mod download
unformatted=$(gofmt -l cmd media overlay signaling web)
if [[ -n "$unformatted" ]]; then
	echo "test.sh: gofmt -w needed on: $unformatted" >&2
	exit 1
fi
go vet ./...
go test -race -count=1 -timeout 15m ./...
# Each fuzz target 3,000 inputs on top of its seed corpus (run above), a
# count and not a duration: with a duration Go 1.26's engine can fail a
# target with a bare "context deadline exceeded" as the time runs out
# (go.dev/issue/75804, fixed in Go 1.27); it did so on FuzzCueAPI. A
# longer run: go test -run '^$' -fuzz NAME -fuzztime 10m -fuzzminimizetime 10x ./PACKAGE
# Targets that run goroutines (RTMP, pion) cover a little differently on
# every run, and the engine spent minutes minimizing inputs that were not
# new: 10 runs is its bound.
for target in signaling:FuzzViewerMessage signaling:FuzzTokens overlay/chat:FuzzCleanText media:FuzzKeyframeStart media/bwe:FuzzFeedback \
	signaling:FuzzSDPFrag signaling:FuzzCueAPI signaling:FuzzCatalogImport overlay:FuzzCatalogCSV overlay:FuzzCatalogJSON \
	media:FuzzOffer media:FuzzOfferSession media/rtmp:FuzzConn media/rtsp:FuzzAnnounce media/ingest:FuzzH264 media/ingest:FuzzAAC; do
	fuzzlog=$(mktemp)
	if ! go test -run '^$' -fuzz "^${target#*:}\$" -fuzztime 3000x -fuzzminimizetime 10x "./${target%%:*}/" >"$fuzzlog" 2>&1; then
		cat "$fuzzlog" >&2
		exit 1
	fi
	rm -f "$fuzzlog"
done

# The pages, in Debian's Chromium driven by playwright-core, against the
# binary as users run it.
npm ci --prefix web/e2e --no-audit --no-fund >/dev/null
bindir=$(mktemp -d)
go build -o "$bindir/vitrine" ./cmd/vitrine
VITRINE_BIN="$bindir/vitrine" npm test --prefix web/e2e
