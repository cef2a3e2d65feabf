# bookinfo-up recipes. `just` lists them.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Load the testbed into the environment when it exists; under CI=true its absence is an error.
testbed_env := 'if tb="$(bash testbed/env.sh 2>/dev/null)"; then eval "$tb"; elif [ "${CI:-}" = true ]; then echo "error: the testbed is missing; run \`just testbed\`" >&2; exit 1; fi'

default:
    @just --list

# Build the tier-1 control plane and tools from source into ~/.cache/bookinfo-up (cached)
testbed:
    bash testbed/build.sh

# The testbed, built when missing (with everything present: nothing, in well under a second)
[private]
testbed-ready:
    @bash testbed/env.sh >/dev/null 2>&1 || bash testbed/build.sh

# Print `export` lines for the testbed: eval "$(just testbed-env)"
testbed-env:
    @bash testbed/env.sh

# Remove the testbed cache (binaries, Go module and build caches)
testbed-clean:
    rm -rf "${BOOKINFO_UP_TESTBED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bookinfo-up/testbed}"

# The kind tier (tier 2 here): node image and preloaded images built locally, a dockerd of its own (cached; needs root, debootstrap, docker.io)
testbed-kind: testbed-ready
    bash testbed/kind/build.sh

# Start the kind tier's dockerd and print `export` lines for it: eval "$(just kind-env)"
kind-env:
    @bash testbed/kind/env.sh

# Stop the kind tier's dockerd: its containers, networks and iptables rules go with it
kind-stop:
    bash testbed/kind/dockerd.sh stop

# The live tests on a real kind cluster from the kind tier (builds the tier when missing)
kind-test: testbed-ready
    @bash testbed/kind/env.sh --check >/dev/null 2>&1 || bash testbed/kind/build.sh
    {{testbed_env}}; start=$(date +%s); rc=0; cargo test --test lib kind_live -- --ignored --nocapture --test-threads 1 || rc=$?; echo "kind tests took $(( $(date +%s) - start )) s"; exit $rc

# The whole real plan on a kind cluster of the tier, faults included (builds the tier when missing); writes its zero-to-healthy time into bench/results.md
kind-bookinfo: testbed-ready
    @bash testbed/kind/env.sh --check >/dev/null 2>&1 || bash testbed/kind/build.sh
    {{testbed_env}}; start=$(date +%s); rc=0; BOOKINFO_UP_BENCH_RESULTS="$PWD/bench/results.md" cargo test --test lib kind_live_bookinfo -- --ignored --nocapture --test-threads 1 || rc=$?; echo "kind bookinfo test took $(( $(date +%s) - start )) s"; exit $rc

# Remove the kind tier's cache (stops its dockerd first)
testbed-kind-clean:
    bash testbed/kind/dockerd.sh stop
    rm -rf "${BOOKINFO_UP_KIND_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bookinfo-up/kind}"

build:
    cargo build --release

# Every test: unit, plan analysis snapshots, and the live tests on testbed clusters (builds the testbed when missing)
test: testbed-ready
    {{testbed_env}}; cargo test --all-targets --no-fail-fast

# Formatting, lints, and no `dbg!`/`todo!` on main
lint: invariants
    cargo fmt --check
    cargo clippy --all-targets -- -D warnings
    ! grep -rnE '\b(dbg|todo|unimplemented)!' src tests

# The architecture invariants that a search can check (ARCHITECTURE.md lists each with its
# command): lines of product code, test modules left out, that break one. Prints them; exit 1.
invariants:
    #!/usr/bin/env bash
    set -uo pipefail
    shopt -s lastpipe
    # Product code only: files outside src/**/tests.rs, up to their `#[cfg(test)]`.
    code() { find src -name '*.rs' ! -name tests.rs "$@" -print0 | xargs -0 awk 'FNR==1{t=0} /^#\[cfg\(test\)\]/{t=1} !t{print FILENAME":"FNR": "$0}'; }
    bad=0
    check() { local what=$1 found; found=$(cat); if [ -n "$found" ]; then echo "broken: $what"; echo "$found"; bad=1; else echo "holds:  $what"; fi; }
    code -path 'src/plan/*' | grep -E 'crate::(kube|process|provider|steps|run)::|reqwest' | check "analysis (src/plan) builds no client, runs no tool, fetches nothing"
    code | grep -vE '^src/(kube|steps|provider)/' | grep -E 'kube::Api\b|kube::Api<|\.client\.clone\(\)' | check "only kube/, steps/ and provider/ call the API"
    code ! -path src/process.rs | grep -E 'std::process::Command|duct::|Command::new' | check "every external program runs through process::Tool"
    code -path 'src/run/*' | grep -E '\be?print(ln)?!' | check "the runner never prints"
    code | grep -vE '^src/(cli\.rs|bin/)' | grep -E 'crate::cli\b' | check "nothing but the binaries imports cli"
    code | grep -vE '^src/(session/|cli\.rs)' | grep -E 'crate::session\b' | check "only cli imports session (report, run, steps do not)"
    code -path 'src/run/*' | grep -E 'crate::steps\b' | check "run does not import steps (it is given a StepWork)"
    code -path 'src/provider/istiod.rs' | grep -E 'super::kwok|provider::kwok' | check "the istiod provider does not import kwok"
    code | grep -E 'Tool::new\("kubectl"\)' | check "the product never runs kubectl"
    exit $bad

# What CI runs after `just testbed`
ci: lint test

# The seed's flow on a simulated kwok cluster (builds the testbed when missing); prints its time
sim: build testbed-ready
    {{testbed_env}}; start=$(date +%s.%N); target/release/bookinfo-up plans/sim.toml; printf "sim took %.2f s\n" "$(echo "$(date +%s.%N) - $start" | bc)"

# Take the simulated cluster down
sim-down: build testbed-ready
    {{testbed_env}}; target/release/bookinfo-down plans/sim.toml

# The real playground on kind (needs Docker and internet)
up: build
    target/release/bookinfo-up plans/bookinfo.toml

down: build
    target/release/bookinfo-down plans/bookinfo.toml

# Benchmarks on a kwok cluster, each writing its section of bench/results.md: A/B against the seed's kubectl steps (~6 min); `just bench scale`: bookinfo-up, kubectl, helm at 100 to 5,000 objects (~17 min)
bench *args: build
    tb="$(bash testbed/env.sh)"; eval "$tb"; python3 bench/run.py {{args}}

# Reliability under faults (issue #6): the API server killed mid-step, SIGINT at seeded
# instants, idempotence, down's safety, secrets in logs, remote manifests, and the plan
# loader fuzzed alongside for BOOKINFO_UP_FUZZ_SECS (default 600). ARGS filter tests, e.g.
# `just reliability fuzz`. Live tests run one at a time (BOOKINFO_UP_RELIABILITY_JOBS).
reliability *ARGS:
    {{testbed_env}}; start=$(date +%s); rc=0; cargo test --test reliability -- --ignored --nocapture --test-threads 16 {{ARGS}} || rc=$?; echo "reliability took $(( $(date +%s) - start )) s"; exit $rc
