#!/usr/bin/env bash
# A committed Fashion-MNIST ground truth from scratch on the CPU cores of one machine: the reference population,
# then every method's comparison against it, each step over NPROC processes of one torch thread (torchrun), with
# the configurations pinned in benchmarks/results/<space>-fashion-mnist/; wall seconds per step in
# OUT/timing.txt, each step's output in OUT/<step>.log. From the repository root, in the installed virtualenv:
#   bash benchmarks/ground_truth.sh chain|cells OUT [NPROC (default 2)]
# chain: the 63 networks of the space x 4 training seeds, then 20 search seeds of GDAS, GDAS with the uniform gate,
# PC-NAS and One-Shot, 10 of VINNAS (its fashion preset on the population's data) and 3 of trained random search,
# all in one comparison (powered/compare-config.json). cells: 50 sampled networks x 1 seed, 3 search seeds per
# method, and GDAS with the uniform gate (the earlier, unpowered comparison).
set -euo pipefail
space=${1:?usage: bash benchmarks/ground_truth.sh chain|cells OUT [NPROC]}
out=${2:?usage: bash benchmarks/ground_truth.sh chain|cells OUT [NPROC]}
nproc=${3:-2}
pinned=benchmarks/results/$space-fashion-mnist
case $space in
    chain) population=(--all --seeds 4); pinned=$pinned/powered; remedies=()
           methods=vinnas,gdas,gdas-uniform-gate,oneshot,pcnas,random ;;
    cells) population=(--n 50 --seeds 1); remedies=(gdas-uniform-gate); methods=vinnas,gdas,oneshot,pcnas,random ;;
    *) echo "ground_truth.sh: unknown space '$space' (chain or cells)" >&2; exit 2 ;;
esac
mkdir -p "$out"
export OMP_NUM_THREADS=1
bayesnas() { torchrun --nproc-per-node "$nproc" --master-port "${MASTER_PORT:-29531}" -m -- bayesnas "$@" --device cpu; }
step() {  # step NAME COMMAND...: run it, its output into OUT/NAME.log, its wall seconds into OUT/timing.txt
    local name=$1 start=$SECONDS
    shift
    "$@" >"$out/$name.log" 2>&1
    echo "$name $((SECONDS - start)) s" | tee -a "$out/timing.txt"
}
start=$SECONDS
echo "$(date -u +%FT%TZ) $space: $nproc processes on $(getconf _NPROCESSORS_ONLN) cores:" \
    "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)" | tee -a "$out/timing.txt"
step population bayesnas bench population --space "$space" --dataset fashion-mnist \
    --config "benchmarks/results/$space-fashion-mnist/population-config.json" "${population[@]}" --train-epochs 5 \
    --out "$out/population"
# the slowest method first: a rank that finishes early takes the next search
step compare bayesnas bench compare --population "$out/population" --methods "$methods" \
    --seeds 3 --config "$pinned/compare-config.json" --out "$out/compare"
for remedy in "${remedies[@]+"${remedies[@]}"}"; do
    step "$remedy" bayesnas bench compare --population "$out/population" --methods "${remedy%%-*}" --seeds 3 \
        --config "$pinned/$remedy/compare-config.json" --out "$out/$remedy"
done
echo "all $((SECONDS - start)) s" | tee -a "$out/timing.txt"
