#!/bin/bash
# Interleaved decode speed of self-speculative decoding (issue 11): full depth vs --self-speculative L --draft-tokens K,
# greedy, SmolLM2-135M-Instruct Q4_1, one thread, 64 tokens, 5 rounds. Usage: bench/self-speculative.sh L K
B=./target/release/flexidepth
P="It is a truth universally acknowledged, that a single man in possession of a good fortune"
for r in 1 2 3 4 5; do
  $B -t 1 generate -p "$P" -n 64 --temperature 0 > /tmp/full.txt 2> /tmp/full.err
  echo "full $(grep decode: /tmp/full.err)"
  $B -t 1 generate -p "$P" -n 64 --self-speculative $1 --draft-tokens $2 > /tmp/spec.txt 2> /tmp/spec.err
  echo "spec $(grep decode: /tmp/spec.err) | $(grep self-spec /tmp/spec.err)"
  cmp -s /tmp/full.txt /tmp/spec.txt && echo "same text" || echo "TEXT DIFFERS"
done
