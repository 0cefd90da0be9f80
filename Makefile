# The two commands of README.md: `make lab` and `make test`.
GO ?= go
LAB_ARGS ?=

.PHONY: lab test build deps fuzz bench scenarios

build:
	$(GO) build -o bin/metro ./cmd/metro

deps:
	scripts/deps.sh

lab: deps build
	./bin/metro lab up $(LAB_ARGS)

test: deps
	scripts/test.sh

bench: deps build
	bench/run.sh

# The failure scenarios and the failover acceptance on the lab; rewrites
# docs/failure-scenarios.md from the run.
scenarios: deps
	scripts/failure-scenarios.sh
