# cachesync: make demo (see it work), make test (the whole suite), make bench.
GO ?= go

.PHONY: all deps build test demo bench vet clean

all: build

deps:
	@bash scripts/install-deps.sh

build:
	$(GO) build -o bin/cachesync ./cmd/cachesync

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }

test: deps vet
	$(GO) test -race -timeout 9m ./...

demo: deps build
	$(GO) run ./examples/demo

bench: deps build
	$(GO) run ./bench

clean:
	rm -rf bin .demo
