#!/usr/bin/env bash
# Instructions and simulated cache misses per operation of the mixed workload
# (examples/mix_cost.rs), for larder and quick_cache: each runs under
# callgrind's cache simulation (a 32 KiB, 8-way L1 and a 1 MiB, 16-way L2, as
# on the development machine's cores) at two lengths, and the difference is
# divided by the operations between them, so set-up and warm-up cancel out.
# Needs valgrind. Deterministic but for the hashers' random seeds (a few
# tenths of a percent between runs).
#
#     bash benches/mix_cost.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --example mix_cost
short=1000000
long=3000000
count() { # subject operations -> "instructions l1-misses l2-misses"
  valgrind --tool=callgrind --cache-sim=yes --D1=32768,8,64 --LL=1048576,16,64 \
    --callgrind-out-file=/dev/null target/release/examples/mix_cost "$1" "$2" 2>&1 \
    | awk '/I +refs:/ { gsub(",", "", $4); i = $4 }
           /D1 +misses:/ { gsub(",", "", $4); d = $4 }
           /LLd +misses:/ { gsub(",", "", $4); l = $4 }
           END { print i, d, l }'
}
echo "| subject | instructions per op | L1 data misses per op | L2 data misses per op |"
echo "|---|---:|---:|---:|"
for subject in larder quick_cache; do
  read -r i1 d1 l1 < <(count "$subject" "$short")
  read -r i2 d2 l2 < <(count "$subject" "$long")
  awk -v s="$subject" -v n=$((long - short)) -v i="$((i2 - i1))" -v d="$((d2 - d1))" -v l="$((l2 - l1))" \
    'BEGIN { printf "| %s | %.1f | %.2f | %.2f |\n", s, i / n, d / n, l / n }'
done
