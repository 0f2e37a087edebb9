#!/usr/bin/env bash
# The GPU figures the issues ask for, in one run from the repository root on a CUDA machine whose python3
# has torch with CUDA (napari-pgsr's core needs no napari): restoration frames/s at 1200² in bf16 (#8),
# ProGAN images/s per resolution at width 1.0 in bf16 and the full schedule's time (#7), the GAN phase
# scored as it trains (#7), and the ProGAN recipe trained and scored on all three kinds (#7; its model file
# is kept in $OUT), or two seeds of it side by side, kept for scoring elsewhere. Each part has its own
# time limit; logs go to $OUT (default benchmarks/results/gpu).
#   bash benchmarks/gpu_checks.sh            # DEVICE=cpu and GAN_ARGS="..." make a quick dry run elsewhere
#   PARTS="restore_eager gan_phase" bash benchmarks/gpu_checks.sh   # only these parts
#   (a CPU dry run of quality_recipe: RECIPE_STEPS=3; quality.py takes the GPU when there is one)
set -u
OUT=${OUT:-benchmarks/results/gpu}
DEVICE=${DEVICE:-cuda}
# gan_phase: the second GPU run (gpu_h100.md) ran seed 0 of these settings; this is a second seed
GAN_ARGS=${GAN_ARGS:---warmup 5000 --gan-steps 2400 --every 600 --lambdas 0.01 --variants rot180-noise --no-offset --no-unet --scorers 8 --seed 1}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  $python -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__,
  torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"; } | tee "$OUT/env.txt"
# the second run measured restore_eager, restore_compiled and gan_phase (gpu_h100.md); next: two seeds of
# the recipe that met #7's goal there, trained as users do (quality.py; its U-Net reference at the same
# steps and seeds is in quality_unet_7200_cpu.md), scored afterwards on all three kinds.
PARTS=${PARTS:-recipe_seeds}
for name in $PARTS; do
  case $name in restore_eager|restore_compiled|bench_gan|quality_recipe|recipe_seeds|gan_phase) ;;
    *) echo "unknown part '$name' (restore_eager restore_compiled bench_gan quality_recipe recipe_seeds gan_phase)"; exit 2;; esac
done
part() {  # part NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.txt
  local name=$1 seconds=$2; shift 2
  [[ " $PARTS " == *" $name "* ]] || return 0
  echo "== $name (limit ${seconds} s)"
  SECONDS=0
  if declare -F "$1" > /dev/null; then "$@" 2>&1 | tee "$OUT/$name.txt"  # a function keeps its own limits
  else timeout "$seconds" "$@" 2>&1 | tee "$OUT/$name.txt"; fi
  echo "== $name: exit ${PIPESTATUS[0]} after ${SECONDS} s" | tee -a "$OUT/$name.txt"
}
part restore_eager "${RESTORE_S:-80}" $python benchmarks/bench_restore.py --device "$DEVICE" --sizes 1200 256 \
  --frames "${FRAMES:-64}" --rounds 2 --long --variants fp32 bf16
part restore_compiled "${COMPILED_S:-120}" $python benchmarks/bench_restore.py --device "$DEVICE" --sizes 1200 \
  --frames "${FRAMES:-64}" --rounds 2 --long --variants ${COMPILED_VARIANTS:-bf16-compiled fp32-compiled}
part bench_gan "${GAN_BENCH_S:-100}" $python benchmarks/bench_gan.py --device "$DEVICE" --widths 1.0 0.125 \
  --batch 16 --steps 4
part quality_recipe "${QUALITY_S:-500}" $python benchmarks/quality.py --steps "${RECIPE_STEPS:-7200}" \
  --models "ProGAN joint, progan-spots recipe (K=0)" --keep "$OUT" --out "$OUT/quality_recipe.md"
# the recipe's seeds, trained side by side (one process each: the small GAN leaves the card mostly idle),
# kept unscored in $OUT/seed_N: score them anywhere with quality.py --load (no GPU needed)
recipe_seeds() {
  local seed pids=() seeds=(${SEEDS:-0 1})
  for seed in "${seeds[@]}"; do  # 8 CPU threads each: the machine has 16 cores
    OMP_NUM_THREADS=8 timeout "${SEED_S:-560}" $python benchmarks/quality.py --steps "${RECIPE_STEPS:-7200}" --seed "$seed" \
      --models "ProGAN joint, progan-spots recipe (K=0)" --keep "$OUT/seed_$seed" --no-score \
      > "$OUT/recipe_seed_$seed.txt" 2>&1 &
    pids+=($!)
  done
  for seed in "${!pids[@]}"; do wait "${pids[$seed]}"; echo "seed ${seeds[$seed]}: exit $?"; done
  tail -n 3 "$OUT"/recipe_seed_*.txt
}
part recipe_seeds "${SEED_S:-560}" recipe_seeds
part gan_phase "${GAN_PHASE_S:-480}" $python benchmarks/gan_phase.py --device "$DEVICE" $GAN_ARGS
