#!/usr/bin/env bash
# Benchmark flexidepth against its peers on the same GGUF file and thread count:
#   - llama.cpp's llama-bench, built from the C++ source shipped in the PyPI sdist of
#     llama-cpp-python (pinned, see LLAMA_CPP_PYTHON_VERSION),
#   - PyTorch + transformers on CPU (GGUF dequantized to f32 by transformers), bench/torch_bench.py,
#   - flexidepth itself (`flexidepth bench`).
# The engines run interleaved in rounds (round k: llama.cpp, flexidepth, torch) so that machine
# noise hits all of them alike; bench/summarize.py prints a markdown table with ratios.
#
# Not run by CI. Everything is installed outside the repo, under
# ${FLEXIDEPTH_BENCH_DIR:-$HOME/.cache/flexidepth/bench}; steps already done are skipped.
# Raw JSON of every run goes to $FLEXIDEPTH_BENCH_DIR/runs/<date>/.
set -euo pipefail

usage() {
    cat <<EOF
usage: bench/peers.sh [options]

  -m, --model PATH     GGUF file (default: \$FLEXIDEPTH_BENCH_MODEL or
                       ~/.cache/flexidepth/smollm2-135m-instruct.Q4_1.gguf)
  -t, --threads T      threads for every engine (default: \$THREADS or 2)
  -p, --prompt P       prompt tokens for the pp test (default: 512)
  -n, --gen N          generated tokens for the tg test (default: 128)
  -r, --reps R         repetitions per run, after one warm-up (default: 5)
      --rounds K       interleaved rounds (default: 3)
  -e, --engines LIST   comma-separated subset of llama,flexidepth,torch (default: all three)
      --dtype D        flexidepth --dtype (default: q)
      --configs LIST   flexidepth depth configurations (default: full; e.g. full,flexi:0.5,skip:
                       one column and one pair of ratios per configuration)
      --idle-wait S    before each run, wait up to S seconds for the CPUs to be >= 90% idle
                       (other jobs on a 2-core machine wreck the figures); 0 = don't wait (default: 300)
      --setup-only     install/build what is missing, run nothing
  -h, --help           this help

Environment: FLEXIDEPTH_BENCH_DIR (install + results folder), FLEXIDEPTH_BENCH_MODEL, THREADS,
PYTHON (interpreter used for pip download and the venv, default python3), TORCH_REQS (pip
requirements of the venv, space-separated; default pinned torch/transformers/gguf/accelerate).
EOF
}

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_DIR="${FLEXIDEPTH_BENCH_DIR:-$HOME/.cache/flexidepth/bench}"
MODEL="${FLEXIDEPTH_BENCH_MODEL:-$HOME/.cache/flexidepth/smollm2-135m-instruct.Q4_1.gguf}"
THREADS="${THREADS:-2}"
P=512
N=128
R=5
ROUNDS=3
ENGINES="llama,flexidepth,torch"
FD_DTYPE=q
FD_CONFIGS=full
SETUP_ONLY=0
IDLE_WAIT=300
IDLE_MIN=90
PYTHON="${PYTHON:-python3}"

LLAMA_CPP_PYTHON_VERSION=0.3.36
# PyTorch side, pinned to the versions of the reference figures (override: TORCH_REQS="torch transformers ...").
read -r -a TORCH_REQS <<<"${TORCH_REQS:-torch==2.15.0 transformers==5.24.0 gguf==0.19.0 accelerate==1.15.0}"

while [[ $# -gt 0 ]]; do
    case "$1" in
        -m | --model) MODEL="$2"; shift 2 ;;
        -t | --threads) THREADS="$2"; shift 2 ;;
        -p | --prompt) P="$2"; shift 2 ;;
        -n | --gen) N="$2"; shift 2 ;;
        -r | --reps) R="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        -e | --engines) ENGINES="$2"; shift 2 ;;
        --dtype) FD_DTYPE="$2"; shift 2 ;;
        --configs) FD_CONFIGS="$2"; shift 2 ;;
        --idle-wait) IDLE_WAIT="$2"; shift 2 ;;
        --setup-only) SETUP_ONLY=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

log() { printf '[peers %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[peers] error: %s\n' "$*" >&2; exit 1; }
want() { [[ ",$ENGINES," == *",$1,"* ]]; }

for e in ${ENGINES//,/ }; do
    case "$e" in llama | flexidepth | torch) ;; *) die "unknown engine '$e' (llama, flexidepth, torch)" ;; esac
done
[[ -f "$MODEL" ]] || die "model not found: $MODEL (scripts/fetch-models.sh fetches the default one)"
MODEL="$(cd "$(dirname "$MODEL")" && pwd)/$(basename "$MODEL")"
mkdir -p "$BENCH_DIR"

LLAMA_SRC="$BENCH_DIR/src/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp"
LLAMA_BENCH="$LLAMA_SRC/build/bin/llama-bench"
VENV="$BENCH_DIR/venv"
FLEXIDEPTH="$REPO/target/release/flexidepth"

# ---------------------------------------------------------------- llama.cpp (llama-bench)
setup_llama() {
    if [[ -x "$LLAMA_BENCH" ]]; then
        log "llama-bench present: $LLAMA_BENCH"
        return
    fi
    local dl="$BENCH_DIR/dl"
    local sdist="$dl/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
    if [[ ! -f "$sdist" ]]; then
        log "downloading the llama-cpp-python $LLAMA_CPP_PYTHON_VERSION sdist from PyPI"
        mkdir -p "$dl"
        "$PYTHON" -m pip download -q --no-deps --no-binary :all: \
            "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$dl"
        [[ -f "$sdist" ]] || die "pip download did not produce $sdist"
    fi
    if [[ ! -f "$LLAMA_SRC/CMakeLists.txt" ]]; then
        log "unpacking $sdist"
        mkdir -p "$BENCH_DIR/src"
        tar -xzf "$sdist" -C "$BENCH_DIR/src"
        [[ -f "$LLAMA_SRC/CMakeLists.txt" ]] || die "no vendor/llama.cpp in $sdist"
    fi
    command -v cmake >/dev/null || die "cmake is missing (apt-get install -y cmake)"
    log "building llama-bench (Release, GGML_NATIVE=ON, CPU only); this takes several minutes"
    local t0=$SECONDS
    # The sdist keeps the submodule's .git, so build-info picks up the llama.cpp commit.
    cmake -S "$LLAMA_SRC" -B "$LLAMA_SRC/build" -DCMAKE_BUILD_TYPE=Release \
        -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
        -DLLAMA_BUILD_APP=OFF -Wno-dev >"$BENCH_DIR/llama-cmake.log" 2>&1 ||
        die "cmake configure failed, see $BENCH_DIR/llama-cmake.log"
    cmake --build "$LLAMA_SRC/build" --target llama-bench -j "$(nproc)" >"$BENCH_DIR/llama-build.log" 2>&1 ||
        die "llama-bench build failed, see $BENCH_DIR/llama-build.log"
    [[ -x "$LLAMA_BENCH" ]] || die "build finished but $LLAMA_BENCH is missing"
    log "llama-bench built in $((SECONDS - t0)) s"
}

llama_build() {
    # "<short commit> (<build number>)", from the git metadata the sdist ships.
    local c n
    c="$(git -C "$LLAMA_SRC" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    n="$(git -C "$LLAMA_SRC" rev-list --count HEAD 2>/dev/null || echo '?')"
    echo "$c (llama-cpp-python $LLAMA_CPP_PYTHON_VERSION sdist, build $n)"
}

# ---------------------------------------------------------------- PyTorch + transformers
setup_torch() {
    local stamp="$VENV/.flexidepth-bench-ok"
    if [[ -f "$stamp" ]]; then
        log "torch venv present: $VENV"
        return
    fi
    log "creating $VENV with ${TORCH_REQS[*]} from PyPI (torch is big: several GB)"
    [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q "${TORCH_REQS[@]}"
    "$VENV/bin/python" -c 'import torch, transformers, gguf, accelerate' ||
        die "the torch venv does not import"
    "$VENV/bin/python" -m pip freeze >"$stamp"
}

# ---------------------------------------------------------------- flexidepth
setup_flexidepth() {
    log "cargo build --release (flexidepth)"
    (cd "$REPO" && cargo build --release -q) || die "cargo build --release failed"
    "$FLEXIDEPTH" bench --help >/dev/null 2>&1 ||
        die "'$FLEXIDEPTH bench' does not exist yet; run with --engines llama,torch"
}

want llama && setup_llama
want torch && setup_torch
want flexidepth && setup_flexidepth
if [[ $SETUP_ONLY == 1 ]]; then
    log "setup done"
    exit 0
fi

# ---------------------------------------------------------------- provenance
RUN_DIR="$BENCH_DIR/runs/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$RUN_DIR"
fd_commit="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if ! git -C "$REPO" diff --quiet HEAD -- crates Cargo.toml Cargo.lock 2>/dev/null; then
    fd_commit="$fd_commit-dirty"
fi
lscpu_field() { lscpu 2>/dev/null | sed -n "s/^$1:[[:space:]]*//p" | head -n1; }
cpu="$(lscpu_field 'Model name')"
cores="$(($(lscpu_field 'Core(s) per socket') * $(lscpu_field 'Socket(s)'))) cores x $(lscpu_field 'Thread(s) per core') thread(s)/core"
isa="$(lscpu_field Flags | tr ' ' '\n' | grep -xE 'avx2|avx512f|avx512_vnni|avx512_bf16|avx512_fp16|amx_tile' | paste -sd' ' -)"
{
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "machine=${cpu:-unknown}"
    echo "cpus=$(nproc) CPUs usable, $cores; ${isa:-no AVX2}"
    echo "mem=$(free -g 2>/dev/null | awk '/^Mem:/ {print $2 " GiB"}')"
    echo "flexidepth_commit=$fd_commit"
    want llama && echo "llama_build=$(llama_build)"
    echo "model=$(basename "$MODEL")"
    echo "model_sha256=$(sha256sum "$MODEL" | cut -c1-16)"
    echo "threads=$THREADS"
    echo "n_prompt=$P"
    echo "n_gen=$N"
    echo "reps=$R"
    echo "rounds=$ROUNDS"
    echo "engines=$ENGINES"
    echo "flexidepth_args=--dtype $FD_DTYPE --configs $FD_CONFIGS"
} >"$RUN_DIR/meta.txt"
log "results go to $RUN_DIR"

# ---------------------------------------------------------------- the interleaved rounds
run_llama() {
    "$LLAMA_BENCH" -m "$MODEL" -t "$THREADS" -p "$P" -n "$N" -r "$R" -o json >"$1" 2>"$1.log"
}
run_flexidepth() {
    "$FLEXIDEPTH" bench -m "$MODEL" -p "$P" -n "$N" -r "$R" -t "$THREADS" --dtype "$FD_DTYPE" \
        --configs "$FD_CONFIGS" -o json >"$1" 2>"$1.log"
}
run_torch() {
    "$VENV/bin/python" "$REPO/bench/torch_bench.py" -m "$MODEL" -p "$P" -n "$N" -r "$R" -t "$THREADS" >"$1" 2>"$1.log"
}

# Idle percentage of all CPUs over 2 s, from /proc/stat (fields: user nice system idle iowait ...).
cpu_idle_pct() {
    local a b tot=0 i
    read -r -a a < <(head -n1 /proc/stat)
    sleep 2
    read -r -a b < <(head -n1 /proc/stat)
    for i in 1 2 3 4 5 6 7 8; do tot=$((tot + b[i] - a[i])); done
    if ((tot > 0)); then echo $((100 * (b[4] - a[4] + b[5] - a[5]) / tot)); else echo 100; fi
}
wait_idle() {
    ((IDLE_WAIT > 0)) || return 0
    local t0=$SECONDS idle
    while idle=$(cpu_idle_pct) && ((idle < IDLE_MIN)); do
        if ((SECONDS - t0 >= IDLE_WAIT)); then
            log "CPUs still busy (${idle}% idle) after ${IDLE_WAIT} s; running anyway"
            echo "busy_run=$1 (${idle}% idle)" >>"$RUN_DIR/meta.txt"
            return 0
        fi
        log "CPUs busy (${idle}% idle): waiting"
        sleep 3
    done
}

for ((k = 1; k <= ROUNDS; k++)); do
    for e in llama flexidepth torch; do
        want "$e" || continue
        out="$RUN_DIR/round$k-$e.json"
        log "round $k/$ROUNDS: $e"
        wait_idle "round$k-$e"
        t0=$SECONDS
        if ! "run_$e" "$out"; then
            log "$e failed in round $k (see $out.log); its result is left out"
            mv "$out" "$out.failed" 2>/dev/null || true
            continue
        fi
        log "  done in $((SECONDS - t0)) s"
    done
done

python3 "$REPO/bench/summarize.py" "$RUN_DIR" | tee "$RUN_DIR/summary.md"
log "raw JSON and summary.md in $RUN_DIR"
