# cachesync: make demo (see it work), make test (the whole suite, as CI
# runs it), make check (vet, gofmt, staticcheck), make unit (the tests that
# need no server, in seconds), make bench.
GO ?= go

.PHONY: all deps build check vet unit test fuzz demo bench clean

all: build

deps:
	@bash scripts/install-deps.sh

build:
	$(GO) build -o bin/cachesync ./cmd/cachesync

# staticcheck is a tool of the module (go.mod's tool line): a pinned version.
check:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) tool staticcheck ./...

vet: check

# The unit tier: under -short no test starts a server (internal/testenv
# skips the ones that need one).
unit:
	$(GO) test -short ./...

# The refresh package runs after the others, on its own: its tests check
# timings (a key refreshed ahead within half of a 1 s TTL), and with another
# package's tests beside them on 2 cores PostgreSQL's backends (each in a
# scheduling group of its own) waited seconds for a CPU.
test: deps check
	$(GO) test -race -timeout 6m $$($(GO) list ./... | grep -v '/internal/refresh$$')
	$(GO) test -race -timeout 3m ./internal/refresh
	$(MAKE) --no-print-directory fuzz FUZZTIME=10000x

# The fuzz tests of what hostile input reaches first: key spellings, key
# parsing, request bodies. Their seeds run in every go test; here each is
# fuzzed for FUZZTIME (make fuzz FUZZTIME=10m to search longer). make test
# counts inputs rather than time: with a duration, Go 1.26's fuzzing
# coordinator can fail a target with "context deadline exceeded" when the
# time is up on a busy machine (go.dev/issue/75804, fixed in Go 1.27).
FUZZTIME ?= 1m
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzCanonical$$' -fuzztime $(FUZZTIME) ./internal/pgtext
	$(GO) test -run '^$$' -fuzz '^FuzzParseKey$$' -fuzztime $(FUZZTIME) ./internal/binding
	$(GO) test -run '^$$' -fuzz '^FuzzReadRow$$' -fuzztime $(FUZZTIME) ./internal/httpapi

# The demo runs as make's own child, not under go run, so a SIGTERM to make
# reaches it (go run dies of one without passing it on) and it stops its
# servers and removes their temp dirs.
demo: deps build
	$(GO) build -o bin/demo ./examples/demo
	bin/demo

bench: deps build
	$(GO) build -o bin/bench ./bench
	bin/bench

clean:
	rm -rf bin .demo
