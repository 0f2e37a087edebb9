#!/usr/bin/env bash
# The GPU figures the issues ask for, in one run from the repository root on a CUDA machine whose python3
# has torch with CUDA (napari-pgsr's core needs no napari): restoration frames/s at 1200² in bf16 (#8),
# ProGAN images/s per resolution at width 1.0 in bf16 and the full schedule's time (#7), the GAN phase
# scored as it trains (#7), and the ProGAN recipe trained and scored on all three kinds (#7; its model file
# is kept in $OUT). Each part has its own time limit; logs go to $OUT (default benchmarks/results/gpu).
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
# the second run measured restore_eager, restore_compiled and gan_phase (gpu_h100.md); next: the recipe
# that met #7's goal there, trained as users do (quality.py, all three kinds; its U-Net reference at the same
# steps is in quality_unet_7200_cpu.md), and 256² fp32 restoring again. Both fit one call (< 600 s).
PARTS=${PARTS:-restore_eager quality_recipe}
for name in $PARTS; do
  case $name in restore_eager|restore_compiled|bench_gan|quality_recipe|gan_phase) ;;
    *) echo "unknown part '$name' (restore_eager restore_compiled bench_gan quality_recipe gan_phase)"; exit 2;; esac
done
part() {  # part NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.txt
  local name=$1 seconds=$2; shift 2
  [[ " $PARTS " == *" $name "* ]] || return 0
  echo "== $name (limit ${seconds} s)"
  SECONDS=0
  timeout "$seconds" "$@" 2>&1 | tee "$OUT/$name.txt"
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
part gan_phase "${GAN_PHASE_S:-480}" $python benchmarks/gan_phase.py --device "$DEVICE" $GAN_ARGS
