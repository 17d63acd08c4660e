# Issue 38's ensemble table: GDAS, PC-NAS, VINNAS (the powered compare's seed-0 searches) and a PGNAS search of the
# same space, data split and budget; K = 5, every member 5 epochs under its method's retraining recipe.
cd /work/exp/ens
. /work/main/.venv/bin/activate
export OMP_NUM_THREADS=1 PYTHONPATH=/work/exp/code4
start=$(date +%s)
if [ ! -f pgnas/summary.json ]; then
python - <<'PY' > pgnas-search.log 2>&1
import dataclasses, bayesnas
from bayesnas.experiments.population import Population
from bayesnas.experiments.compare import method_config
config = method_config("pgnas", Population("/work/exp/chain/population"), 0,
                       {"options": {"finetune_epochs": 0, "baseline": False, "num_candidates": 50}})
print(config)
bayesnas.search(config, out="pgnas", device="cpu", progress=False, log_epochs=True, resume=False)
PY
fi
echo "pgnas search done after $(( $(date +%s) - start )) s" >> times.txt
for m in gdas pcnas vinnas pgnas; do
  run=/work/exp/chain/compare/$m/seed0; [ $m = pgnas ] && run=/work/exp/ens/pgnas
  python -m bayesnas ensemble $run --members 5 --epochs 5 --device cpu --no-progress --out /work/exp/ens/$m-ensemble > $m-ensemble.log 2>&1
  echo "$m ensemble rc $? after $(( $(date +%s) - start )) s" >> times.txt
done
