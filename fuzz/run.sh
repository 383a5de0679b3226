#!/usr/bin/env bash
# Run every fuzz target for RUNS executions (default 1,000,000) or SECONDS seconds (default
# 1800), whichever comes first, 1 GiB RSS limit, 10 s per input; prints one line per target.
#   cargo install cargo-fuzz && cargo +nightly fuzz build -O   (in fuzz/)
#   bash fuzz/run.sh [TARGET ...]
set -uo pipefail
cd "$(dirname "$0")"
RUNS=${RUNS:-1000000}
SECONDS_MAX=${SECONDS:-1800}
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(idx image weights patch report)
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" artifacts
    log="artifacts/$t.log"
    cargo +nightly fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
        -runs="$RUNS" -max_total_time="$SECONDS_MAX" -rss_limit_mb=1024 -timeout=10 \
        > "$log" 2>&1
    rc=$?
    done_line=$(grep -E "^Done [0-9]+ runs" "$log" | tail -1)
    peak=$(grep -oE "rss: [0-9]+Mb" "$log" | tail -1)
    echo "$t: exit $rc; ${done_line:-no Done line (see $log)}; last $peak"
done
