#!/usr/bin/env bash
# Run every medsr benchmark once, writing tables/CSVs/PNGs under benchmarks/results/.
# Ratios are measured within one run (these machines are noisy); absolute seconds are indicative only.
set -euo pipefail
out=${1:-benchmarks/results}
mkdir -p "$out"
medsr bench memory --csv "$out/memory3d.csv" --png "$out/memory3d.png" | tee "$out/memory3d.txt"
medsr bench memory --2d --csv "$out/memory2d.csv" --png "$out/memory2d.png" | tee "$out/memory2d.txt"
medsr bench loader | tee "$out/loader.txt"
medsr bench infer | tee "$out/infer.txt"
medsr bench prep | tee "$out/prep.txt"
medsr bench quality --minutes 10 --output "$out/quality" --configs configs/default.yaml | tee "$out/quality.txt"
medsr bench busy --output "$out/performance.md" | tee "$out/busy.txt"
