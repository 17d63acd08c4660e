# Issue 39's ranking evidence: 24 genotypes of the Fashion-MNIST chain population (fp32, 4 seeds) trained again in
# the fast mode (bf16 + channels-last, auto's pick on this machine), 2 training seeds, same recipe and split.
cd /work/exp/prec

. /work/main/.venv/bin/activate
export OMP_NUM_THREADS=1 PYTHONPATH=/work/exp/code5
start=$(date +%s)
python -m bayesnas bench population --space chain --dataset fashion-mnist --config fast.json --n 24 --seeds 2 \
  --device cpu --no-progress --out /work/exp/prec/pop-fast > pop-fast.log 2>&1
echo "fast population rc $? after $(( $(date +%s) - start )) s" >> times.txt
