#!/usr/bin/env bash
# The GPU measurements as one prepared run (about 8 minutes on one H100 / H200),
# for a session that is lent a GPU machine with a short device budget. Nothing here is needed on a
# CPU: the same benchmarks run there with their CPU settings (see each script's docstring).
#
#   here, once:      bash benchmarks/device_checks.sh --prepare    # packs the MNIST cache (~17 MB)
#   on the device:   bash benchmarks/device_checks.sh              # with .device-data carried along
#
# The device machine cannot reach the network, so MNIST travels as .device-data/mnist.tgz (git-
# ignored). Its torch may be older than requirements.txt pins; sdelib is used from the checkout
# (PYTHONPATH), nothing is installed there. Every result lands in $OUT (the tool's return folder)
# as JSON + log; copy the JSON into sdelib/results/ after reading it.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare" ]]; then
    cache=$(python -c "from sdelib.data import cache_dir, load_mnist; load_mnist('train'); load_mnist('test'); print(cache_dir())")
    mkdir -p .device-data
    tar czf .device-data/mnist.tgz -C "$cache" mnist-train.pt mnist-test.pt
    grep -qx "/.device-data/" .gitignore || echo "/.device-data/" >> .gitignore
    ls -l .device-data/mnist.tgz
    exit 0
fi

OUT=${OUT:-/tmp/device-checks}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 SDELIB_DATA=${SDELIB_DATA:-/tmp/sdelib-data}
mkdir -p "$SDELIB_DATA"
tar xzf .device-data/mnist.tgz -C "$SDELIB_DATA" || { echo "no .device-data/mnist.tgz: run --prepare here and carry .device-data"; exit 2; }
QUICK=${DEVICE_CHECKS_QUICK:-0}      # 1: a smoke test of this script on a CPU (minutes, tiny settings)
if [[ "$QUICK" == 1 ]]; then
    DEVICE=cpu; TRAIN="--seconds 5 --epochs 1 --train-images 512 --eval 64 --channels-last"
    LIKELIHOOD="--compare 2 --subset 4 --batch 4"; BF16="--bf16-check 4 --batch 4"; SAMPLERS="--quick --n 16 --batch 16"; SLOW=4
else
    DEVICE=cuda; TRAIN="--seconds 45 --epochs 30 --eval 2048 --bf16 --channels-last --compile"
    LIKELIHOOD="--compare 256 --subset 10000 --batch 2500"; BF16="--bf16-check 256 --batch 256"; SAMPLERS="--n 1000 --batch 1000"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
fi
python -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"

status=0
step() {   # step NAME TIMEOUT COMMAND...: run one check, keep its log, go on when it fails
    local name=$1 limit=$2; shift 2
    echo "=== $name: $*"
    timeout $((limit * ${SLOW:-1})) "$@" > "$OUT/$name.log" 2>&1; local rc=$?
    tail -n 25 "$OUT/$name.log"
    echo "=== $name: exit $rc"
    [[ $rc == 0 ]] || status=1
}

# Training speed: the tutorial loop's throughput for 45 s, projected to its 50 epochs, against the fast
# path's whole 30-epoch schedule with bf16, channels_last and compile, then its EMA test DSM loss.
step train_speed 300 python benchmarks/train_speed.py --full-run --device $DEVICE $TRAIN \
    --batch-size 128 --lr 5e-4 --out "$OUT/train_speed_${DEVICE}_full_run.json"
# Likelihood: scipy vs batched torchdiffeq on 256 images, then bpd of the full 10k test set (target <= 60 s).
step likelihood 140 python benchmarks/likelihood_speed.py $LIKELIHOOD --out "$OUT/likelihood_speed_$DEVICE.json"
# Likelihood in bf16: does a bf16 network leave the bits/dim unchanged, and is it faster on the GPU? (same JSON)
step bf16 40 python benchmarks/likelihood_speed.py $BF16 --out "$OUT/likelihood_speed_$DEVICE.json"
# Samplers: the sweep's wall times (and distances) on the GPU.
step samplers 110 python benchmarks/samplers.py $SAMPLERS --out "$OUT/samplers_$DEVICE.json"
ls -l "$OUT"
exit $status
