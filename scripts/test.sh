#!/usr/bin/env bash
# The whole test suite: formatting and vet, unit and integration tests
# under the race detector, a short run of every fuzz target, and the
# end-to-end tests with real initiators (libiscsi, QEMU) against arrays
# started by the lab.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOFLAGS="${GOFLAGS:-} -mod=mod"

echo "== gofmt"
bad=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$bad" ]; then echo "gofmt would change: $bad"; exit 1; fi
echo "== go vet"
go vet ./...
echo "== staticcheck"
go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...
echo "== build"
go build -o bin/metro ./cmd/metro

echo "== unit and integration tests (race)"
go test -race -count=1 -timeout 20m $(go list ./... | grep -v /test/e2e) 2>&1 | tee /tmp/metro-test.log
# Each target runs a count of executions, not a duration: with a
# duration, Go's fuzz coordinator (go1.26) can report its own deadline as
# a failure, "context deadline exceeded", with no failing input
# (golang/go#75804). Counts are about 10 s of each target here; the
# store's model test is ~100× slower per input than the rest, and the
# iSCSI session target (a login, a real SCSI target and a teardown per
# input, and a corpus of some 500 inputs to replay first) takes ~15 s
# for 5000. FuzzPodRequests builds a replicator with its link, stores and
# pods per input (~50 inputs a second here): 2000 take about 45 s.
# Minimisation of new interesting inputs is capped as well.
echo "== fuzz (${FUZZEXECS:=20000} executions each; FuzzModel ${FUZZEXECS_MODEL:=2000}, FuzzSession ${FUZZEXECS_SESSION:=5000}, FuzzPodRequests ${FUZZEXECS_PODREQ:=2000})"
for pkg in $(go list ./... | grep -v /test/e2e); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for f in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/func //'); do
    n=$FUZZEXECS
    [ "$f" = FuzzModel ] && n=$FUZZEXECS_MODEL
    [ "$f" = FuzzSession ] && n=$FUZZEXECS_SESSION
    [ "$f" = FuzzPodRequests ] && n=$FUZZEXECS_PODREQ
    echo "-- $pkg $f"
    go test -run '^$' -fuzz "^${f}\$" -fuzztime "${n}x" -fuzzminimizetime 1s "$pkg" >/tmp/metro-fuzz.log 2>&1 || { cat /tmp/metro-fuzz.log; exit 1; }
  done
done
echo "== end-to-end (real initiators)"
METRO_BIN="$PWD/bin/metro" go test -count=1 -timeout 30m -v ./test/e2e/ 2>&1 | tee /tmp/metro-e2e.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|\s+\w+_test.go)' || true
grep -q '^ok' /tmp/metro-e2e.log || { tail -50 /tmp/metro-e2e.log; exit 1; }
