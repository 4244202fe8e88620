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

  -m, --model LIST     GGUF file(s), comma-separated, all run in the same interleaved rounds (default:
                       \$FLEXIDEPTH_BENCH_MODEL, else both default models in ~/.cache/flexidepth:
                       smollm2-135m-instruct.Q4_1.gguf,qwen2.5-coder-0.5b-instruct.gguf)
  -t, --threads T      threads for every engine (default: \$THREADS or 2)
  -p, --prompt P       prompt tokens for the pp test (default: 512)
  -n, --gen N          generated tokens for the tg test (default: 128)
  -b, --batch LIST     batched decode: sequences decoded together, llama-batched-bench style (aggregate
                       tokens/s; default 1,2,4,8,16; "none" skips it)
      --batch-prompt P prompt tokens per sequence of the batched test (default: 128)
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
CACHE="${FLEXIDEPTH_CACHE:-$HOME/.cache/flexidepth}"
MODELS="${FLEXIDEPTH_BENCH_MODEL:-$CACHE/smollm2-135m-instruct.Q4_1.gguf,$CACHE/qwen2.5-coder-0.5b-instruct.gguf}"
BATCH="1,2,4,8,16"
BATCH_P=128
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
        -m | --model) MODELS="$2"; shift 2 ;;
        -b | --batch) BATCH="$2"; shift 2 ;;
        --batch-prompt) BATCH_P="$2"; shift 2 ;;
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
MODEL_PATHS=()
for m in ${MODELS//,/ }; do
    [[ -f "$m" ]] || die "model not found: $m (scripts/fetch-models.sh fetches the default ones)"
    MODEL_PATHS+=("$(cd "$(dirname "$m")" && pwd)/$(basename "$m")")
done
((${#MODEL_PATHS[@]} > 0)) || die "no model given"
[[ "$BATCH" == none || "$BATCH" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] ||
    die "--batch: a comma-separated list of positive sizes, or none (got '$BATCH')"
[[ "$BATCH_P" =~ ^[1-9][0-9]*$ ]] || die "--batch-prompt: a positive number of tokens (got '$BATCH_P')"
mkdir -p "$BENCH_DIR"

LLAMA_SRC="$BENCH_DIR/src/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp"
LLAMA_BENCH="$LLAMA_SRC/build/bin/llama-bench"
LLAMA_BATCHED_BENCH="$LLAMA_SRC/build/bin/llama-batched-bench"
TOOLS_VENV="$BENCH_DIR/tools"
VENV="$BENCH_DIR/venv"
FLEXIDEPTH="$REPO/target/release/flexidepth"

# ---------------------------------------------------------------- llama.cpp (llama-bench, llama-batched-bench)
# Build tools come as binary wheels into their own venv (cmake, ninja, scikit-build-core: seconds), and the sdist is
# downloaded with --no-build-isolation against them: without that, pip builds the sdist's build requirements from
# source to read its metadata, which bootstrapped cmake for 30+ minutes on a fresh machine.
setup_build_tools() {
    if [[ -x "$TOOLS_VENV/bin/cmake" && -x "$TOOLS_VENV/bin/ninja" ]]; then
        return
    fi
    log "installing cmake, ninja and scikit-build-core (binary wheels) into $TOOLS_VENV"
    [[ -x "$TOOLS_VENV/bin/python" ]] || "$PYTHON" -m venv "$TOOLS_VENV"
    "$TOOLS_VENV/bin/python" -m pip install -q --only-binary :all: cmake ninja scikit-build-core ||
        die "could not install the build tools into $TOOLS_VENV"
}

setup_llama() {
    if [[ -x "$LLAMA_BENCH" && -x "$LLAMA_BATCHED_BENCH" ]]; then
        log "llama-bench and llama-batched-bench present in $LLAMA_SRC/build/bin"
        return
    fi
    setup_build_tools
    local dl="$BENCH_DIR/dl"
    local sdist="$dl/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
    if [[ ! -f "$sdist" ]]; then
        log "downloading the llama-cpp-python $LLAMA_CPP_PYTHON_VERSION sdist from PyPI"
        mkdir -p "$dl"
        "$TOOLS_VENV/bin/python" -m pip download -q --no-deps --no-build-isolation \
            --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$dl"
        [[ -f "$sdist" ]] || die "pip download did not produce $sdist"
    fi
    if [[ ! -f "$LLAMA_SRC/CMakeLists.txt" ]]; then
        log "unpacking $sdist"
        mkdir -p "$BENCH_DIR/src"
        tar -xzf "$sdist" -C "$BENCH_DIR/src"
        [[ -f "$LLAMA_SRC/CMakeLists.txt" ]] || die "no vendor/llama.cpp in $sdist"
    fi
    # The CPU's own instruction sets, as -march=native would pick them, except AMX: a VM may list AMX in cpuid
    # without the kernel granting its tile state, and ggml's AMX matmul then dies with SIGILL (seen here).
    local isa_flags=(-DGGML_NATIVE=OFF) f opt
    local flags
    flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
    for f in avx:AVX avx2:AVX2 bmi2:BMI2 fma:FMA f16c:F16C avx_vnni:AVX_VNNI avx512f:AVX512 \
        avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16; do
        opt=OFF
        [[ "$flags" == *" ${f%%:*} "* ]] && opt=ON
        isa_flags+=("-DGGML_${f#*:}=$opt")
    done
    isa_flags+=(-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
    log "building llama-bench and llama-batched-bench (Release, CPU only, ${isa_flags[*]}); this takes minutes"
    local t0=$SECONDS
    # The sdist keeps the submodule's .git, so build-info picks up the llama.cpp commit.
    "$TOOLS_VENV/bin/cmake" -S "$LLAMA_SRC" -B "$LLAMA_SRC/build" -G Ninja \
        -DCMAKE_MAKE_PROGRAM="$TOOLS_VENV/bin/ninja" -DCMAKE_BUILD_TYPE=Release \
        "${isa_flags[@]}" -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
        -DLLAMA_BUILD_APP=OFF -Wno-dev >"$BENCH_DIR/llama-cmake.log" 2>&1 ||
        die "cmake configure failed, see $BENCH_DIR/llama-cmake.log"
    "$TOOLS_VENV/bin/cmake" --build "$LLAMA_SRC/build" --target llama-bench llama-batched-bench \
        -j "$(nproc)" >"$BENCH_DIR/llama-build.log" 2>&1 ||
        die "llama.cpp build failed, see $BENCH_DIR/llama-build.log"
    [[ -x "$LLAMA_BENCH" && -x "$LLAMA_BATCHED_BENCH" ]] || die "build finished but the binaries are missing"
    log "llama.cpp tools built in $((SECONDS - t0)) s"
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
# One folder per model under the run's folder: its meta.txt and round<k>-<engine>.json (bench/summarize.py reads it).
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
model_dir() { local b; b="$(basename "$1")"; echo "$RUN_DIR/${b%.gguf}"; }
for model in "${MODEL_PATHS[@]}"; do
    mkdir -p "$(model_dir "$model")"
    {
        echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
        echo "machine=${cpu:-unknown}"
        echo "cpus=$(nproc) CPUs usable, $cores; ${isa:-no AVX2}"
        echo "mem=$(free -g 2>/dev/null | awk '/^Mem:/ {print $2 " GiB"}')"
        echo "flexidepth_commit=$fd_commit"
        want llama && echo "llama_build=$(llama_build)"
        echo "model=$(basename "$model")"
        echo "model_sha256=$(sha256sum "$model" | cut -c1-16)"
        echo "threads=$THREADS"
        echo "n_prompt=$P"
        echo "n_gen=$N"
        echo "reps=$R"
        echo "rounds=$ROUNDS"
        echo "engines=$ENGINES"
        echo "batch=$BATCH"
        echo "batch_prompt=$BATCH_P"
        echo "flexidepth_args=--dtype $FD_DTYPE --configs $FD_CONFIGS"
    } >"$(model_dir "$model")/meta.txt"
done
log "results go to $RUN_DIR"

# ---------------------------------------------------------------- the interleaved rounds
# run_<engine> OUT MODEL: pp and tg; run_<engine>_batched OUT MODEL: aggregate decode of $BATCH sequences.
run_llama() {
    "$LLAMA_BENCH" -m "$2" -t "$THREADS" -p "$P" -n "$N" -r "$R" -o json >"$1" 2>"$1.log"
}
run_llama_batched() {
    local max_b
    max_b="$(tr ',' '\n' <<<"$BATCH" | sort -n | tail -n1)"
    # One sequence per batch slot, each with its own prompt (no -pps), decoded together; -c holds them all.
    "$LLAMA_BATCHED_BENCH" -m "$2" -t "$THREADS" -tb "$THREADS" -c $((max_b * (BATCH_P + N) + 64)) \
        -b 2048 -ub 512 -npp "$BATCH_P" -ntg "$N" -npl "$BATCH" --output-format jsonl >"$1" 2>"$1.log"
}
run_flexidepth() {
    "$FLEXIDEPTH" bench -m "$2" -p "$P" -n "$N" -r "$R" -t "$THREADS" --dtype "$FD_DTYPE" \
        --configs "$FD_CONFIGS" -o json >"$1" 2>"$1.log"
}
run_flexidepth_batched() {
    # -b decodes after a prompt of the first -p size per sequence (it also times single pp/tg runs: ignored here).
    "$FLEXIDEPTH" bench -m "$2" -p "$BATCH_P" -n "$N" -r 2 -t "$THREADS" --dtype "$FD_DTYPE" \
        --configs full -b "$BATCH" -o json >"$1" 2>"$1.log"
}
run_torch() {
    "$VENV/bin/python" "$REPO/bench/torch_bench.py" -m "$2" -p "$P" -n "$N" -r "$R" -t "$THREADS" >"$1" 2>"$1.log"
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
# wait_idle LABEL META: wait for idle CPUs; a run started busy is noted in META.
wait_idle() {
    ((IDLE_WAIT > 0)) || return 0
    local t0=$SECONDS idle
    while idle=$(cpu_idle_pct) && ((idle < IDLE_MIN)); do
        if ((SECONDS - t0 >= IDLE_WAIT)); then
            log "CPUs still busy (${idle}% idle) after ${IDLE_WAIT} s; running anyway"
            echo "busy_run=$1 (${idle}% idle)" >>"$2"
            return 0
        fi
        log "CPUs busy (${idle}% idle): waiting"
        sleep 3
    done
}
# run_one FUNCTION OUT MODEL LABEL
run_one() {
    local t0=$SECONDS
    log "$4"
    wait_idle "$(basename "$2")" "$(dirname "$2")/meta.txt"
    if ! "$1" "$2" "$3"; then
        log "$4 failed (see $2.log); its result is left out"
        mv "$2" "$2.failed" 2>/dev/null || true
        return 0
    fi
    log "  done in $((SECONDS - t0)) s"
}

for ((k = 1; k <= ROUNDS; k++)); do
    for model in "${MODEL_PATHS[@]}"; do
        dir="$(model_dir "$model")"
        for e in llama flexidepth torch; do
            want "$e" || continue
            run_one "run_$e" "$dir/round$k-$e.json" "$model" "round $k/$ROUNDS, $(basename "$dir"): $e"
        done
        [[ "$BATCH" == none ]] && continue
        for e in llama flexidepth; do
            want "$e" || continue
            run_one "run_${e}_batched" "$dir/batched-round$k-$e.json" "$model" \
                "round $k/$ROUNDS, $(basename "$dir"): $e batched ($BATCH)"
        done
    done
done

for model in "${MODEL_PATHS[@]}"; do
    dir="$(model_dir "$model")"
    python3 "$REPO/bench/summarize.py" "$dir" | tee "$dir/summary.md"
    echo
done
log "raw JSON and summary.md per model in $RUN_DIR"
