#!/usr/bin/env bash
# The GPU measurements of issues 10 and 15, prepared as one command for a session that is lent a GPU
# (the device tool: 15 minutes in all, at most 10 a command), so that none of that time goes on set-up.
#
#   bash benchmarks/gpu_session.sh prepare    # here, once: data and the missing wheel into .gpu/ (git-ignored)
#   device run, carry [".gpu"], timeout_s 590:
#       bash benchmarks/gpu_session.sh run    # there: writes everything under $OUT
#
# What `run` measures, each step with its own time limit so that one slow step cannot eat the others':
#   1. the GPU and torch it found;
#   2. benchmarks/profile_step.py on anime-dcgan, as the run chooses (cuDNN autotuned, fp32 with TF32
#      where the probe picks it), then channels-last, then bf16 channels-last: ms a step, the kernels'
#      share of it (low: launch-bound, so a CUDA graph would pay), the top operators;
#   3. benchmarks/throughput.py: images/s against the reference loops, fp32 and bf16, with the
#      fraction of the measured matmul peak;
#   4. the full anime-dcgan recipe (400 epochs of the 6,000 faces), stopped at 150 s if it is slower:
#      its metrics.jsonl says how far it got.
# Then the figures go into docs/performance.md's GPU section, with the device named.
# GPU_DEVICE=cpu runs the same steps on the CPU with a few steps each (throughput.py left out): a check of the
# script itself (70 s on the 2-core Zen 3).
set -u
cd "$(dirname "$0")/.." || exit 1
GPU=.gpu

prepare() {
    grep -qx "/$GPU/" .git/info/exclude 2>/dev/null || echo "/$GPU/" >>.git/info/exclude
    mkdir -p "$GPU/data" "$GPU/wheels"
    cp -r ../shared/data/anime-faces ../shared/data/mnist "$GPU/data/"
    # the device image has torch, torchvision, matplotlib, jinja2, safetensors and the rest, but not plotly
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 --platform any -d "$GPU/wheels" plotly
    du -sh "$GPU"
}

step() {  # step LIMIT_S NAME COMMAND...: run it with a time limit, its output into the log
    local limit=$1 name=$2
    shift 2
    echo "### $name (limit ${limit} s)" | tee -a "$LOG"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
    echo "### $name: rc ${PIPESTATUS[0]}, $((SECONDS - start)) s" | tee -a "$LOG"
}

run() {
    OUT=${OUT:-/tmp/gpu-session}
    mkdir -p "$OUT"
    LOG="$OUT/session.log"
    local device=${GPU_DEVICE:-cuda} py=${PYTHON:-python3} data="$GPU/data"
    if ls "$GPU"/wheels/*.whl >/dev/null 2>&1; then
        $py -m pip install -q --no-index --no-deps --target /tmp/site "$GPU"/wheels/*.whl && export PYTHONPATH=/tmp/site
    fi
    export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
    local profile=(--warmup 20 --steps 30) full=(--max-time 2.5) bf16=bf16
    local throughput=(--recipes anime-dcgan,mnist-conv,mnist-quick --precisions fp32,bf16 --repeats 2)
    if [ "$device" = cpu ]; then  # the script's own check: a few steps of each, and no emulated bf16
        profile=(--warmup 1 --steps 2 --set data.max_images=64 --set train.batch_size=16)
        full=(--max-steps 2 --set data.max_images=64 --batch-size 16)
        bf16=fp32
    fi
    step 30 device $py -c "import torch; print(torch.__version__, torch.version.cuda, \
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"
    local anime=(anime-dcgan --device "$device" --data-root "$data/anime-faces" "${profile[@]}")
    step 75 profile-default $py benchmarks/profile_step.py "${anime[@]}" --json "$OUT/profile-default.json"
    step 75 profile-channels-last $py benchmarks/profile_step.py "${anime[@]}" --set train.channels_last=true \
        --json "$OUT/profile-channels-last.json"
    step 75 profile-bf16 $py benchmarks/profile_step.py "${anime[@]}" --set train.channels_last=true \
        --set train.precision=$bf16 --json "$OUT/profile-bf16.json"
    if [ "$device" != cpu ]; then  # on the CPU its matmul-peak probe alone takes minutes (bf16 emulated)
        step 150 throughput $py benchmarks/throughput.py --device "$device" "${throughput[@]}" --mnist-root "$data/mnist" \
            --anime-root "$data/anime-faces" --set train.report=false --json "$OUT/throughput.json"
    fi
    rm -rf /tmp/gpu-full
    step 170 full-anime-dcgan $py -m ganforge train anime-dcgan --device "$device" --data-root "$data/anime-faces" \
        --out /tmp/gpu-full --set eval.every=0 --set train.report=false "${full[@]}"
    cp /tmp/gpu-full/metrics.jsonl "$OUT/full-anime-dcgan-metrics.jsonl" 2>/dev/null
    cp /tmp/gpu-full/config.json "$OUT/full-anime-dcgan-config.json" 2>/dev/null
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: bash benchmarks/gpu_session.sh prepare|run" >&2; exit 2 ;;
esac
