#!/usr/bin/env bash
# GSM8K on one CUDA GPU, in one command (about 9 minutes on an H200):
#
#   bash benchmarks/gsm8k_gpu.sh
#
# 1. smoke: the whole pipeline below with tiny sizes (fails fast on a broken set-up);
# 2. trains a larger backbone than the CPU one (`codd train-backbone`, bf16 autocast,
#    TRAIN_MIN minutes, the checkpoint with the best held-out bound kept) on GSM8K train
#    minus the dev slice of benchmarks/gsm8k_protocol.py, that slice serving as the held-out
#    set, so neither its weights nor the checkpoint choice see the dev slice or GSM8K test;
# 3. evaluates it: `benchmarks/diffusion_gsm8k.py --tag _gpu` (likelihood bound, NLL by
#    mask ratio, few-step generation at 1, 2, 4 and 8 tokens per step);
# 4. CoDD on it: `benchmarks/codd_gsm8k.py --out codd_gsm8k_gpu` (prior trained on the
#    frozen backbone's logits, NLL by mask ratio, gamma/tau chosen on validation
#    questions, generation at 2, 4 and 8 tokens per step);
# 5. with the time left (until DEADLINE seconds after the start, which also bounds steps 3
#    and 4), the kernel benchmark
#    `benchmarks/gpu_benchmark.py` (Triton vs torch, checked equal first).
#
# GSM8K is read from $CODD_GSM8K_DIR (default ../shared/data/gsm8k). Results land in
# benchmarks/results and docs/diffusion as with the CPU commands; with OUT set, they
# are also packed there (results.tgz, the backbone in bf16 as model.tgz.part-*).
# Every setting below can be overridden from the environment; STAGES picks the steps
# (e.g. STAGES="codd" MODEL=path/to/backbone reruns step 4 on an existing backbone).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
DEVICE=${DEVICE:-cuda}
PRECISION=${PRECISION:-bf16}
MODEL=${MODEL:-runs/gsm8k_backbone_gpu}
TRAIN_MIN=${TRAIN_MIN:-4.5}
HIDDEN=${HIDDEN:-384}
LAYERS=${LAYERS:-8}
HEADS=${HEADS:-6}
MLP=${MLP:-1024}
MAXLEN=${MAXLEN:-384}
BATCH=${BATCH:-128}
LR=${LR:-0.001}
DROPOUT=${DROPOUT:-0.1}
QUESTIONS=${QUESTIONS:-400}
VAL_QUESTIONS=${VAL_QUESTIONS:-100}
NLL_EXAMPLES=${NLL_EXAMPLES:-200}
STATES=${STATES:-256}
WINDOWS=${WINDOWS:-16000}
PRIOR_EPOCHS=${PRIOR_EPOCHS:-8}
DEADLINE=${DEADLINE:-540}
WEIGHTING=${WEIGHTING:-token}
STAGES=${STAGES:-smoke train eval codd kernels}
PY=${PY:-python3}
START=$(date +%s)
RESULTS=benchmarks/results
left() { local l=$(( DEADLINE - ($(date +%s) - START) )); echo $(( l > 1 ? l : 1 )); }
has() { [[ " $STAGES " == *" $1 "* ]]; }
log() { echo "[$(date +%H:%M:%S) +$(( $(date +%s) - START ))s] $*"; }

pack() {
  [ -n "${OUT:-}" ] || return 0
  log "packing results into $OUT"
  files=()
  for f in "$RESULTS"/diffusion_gsm8k_gpu.json "$RESULTS"/codd_gsm8k_gpu.json "$RESULTS"/codd_gsm8k_gpu.md \
           "$RESULTS"/codd_gsm8k_gpu.png "$RESULTS"/codd_gsm8k_gpu_prior.safetensors "$RESULTS"/codd_gsm8k_gpu_prior.json "$RESULTS"/gpu_quick_cuda.* \
           "$RESULTS"/gpu_nvidia* docs/diffusion/gsm8k-benchmark_gpu.md docs/diffusion/gsm8k_factorization_gpu.png \
           "$MODEL"/training_log.json "$MODEL"/codd_backbone.json runs/smoke_*.log runs/*_gpu.log runs/gpu_*.log; do
    [ -f "$f" ] && files+=("$f")
  done
  [ ${#files[@]} -gt 0 ] && tar czf "$OUT/results.tgz" "${files[@]}"
  if has train && [ -f "$MODEL/model.safetensors" ]; then
    mkdir -p runs/transport && rm -rf runs/transport/* && cp -r "$MODEL" runs/transport/backbone
    $PY - <<'EOF'
from safetensors.torch import load_file, save_file
p = "runs/transport/backbone/model.safetensors"
save_file({k: v.bfloat16() if v.is_floating_point() else v for k, v in load_file(p).items()}, p, metadata={"format": "pt"})
EOF
    tar czf - -C runs/transport backbone | split -b 15M - "$OUT/model.tgz.part-"
  fi
  ls -la "$OUT"
}
trap pack EXIT

mkdir -p runs
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"

# ------------------------------------------------------------------ 1. smoke
PRIOR_BACKEND=${PRIOR_BACKEND:-auto}
smoke() {
  rm -rf runs/smoke
  $PY -m diffusion.cli train-backbone --output runs/smoke --device "$DEVICE" --precision "$PRECISION" --hidden-size 32 \
    --layers 1 --heads 2 --intermediate-size 64 --max-steps 4 --train-limit 64 --eval-examples 8 --keep-best \
    --dropout "$DROPOUT" --no-progress > runs/smoke_train.log 2>&1 &&
  $PY benchmarks/diffusion_gsm8k.py --model runs/smoke --device "$DEVICE" --questions 4 --examples 8 --tag _smoke \
    --no-ship > runs/smoke_eval.log 2>&1 &&
  $PY benchmarks/codd_gsm8k.py --model runs/smoke --device "$DEVICE" --prior-backend "$1" --states 8 --window 32 \
    --train-examples 64 --num-windows 64 --epochs 1 --dev-size 20 --draws 1 --nll-examples 8 --questions 4 --val-questions 4 --gammas 1.0 \
    --taus 1.0 --batch-size 4 --out codd_smoke > runs/smoke_codd_$1.log 2>&1
}
if has smoke; then
log "smoke test"
smoke "$PRIOR_BACKEND" || { log "smoke failed"; tail -n 40 runs/smoke_*.log; exit 1; }
rm -f "$RESULTS"/codd_smoke* "$RESULTS"/diffusion_gsm8k_smoke.json docs/diffusion/*_smoke*
log "smoke passed (prior backend: $PRIOR_BACKEND)"
fi

# ------------------------------------------------------------------ 2. backbone
if has train; then
log "training the backbone for $TRAIN_MIN min (GSM8K train minus the dev slice)"
$PY benchmarks/gsm8k_protocol.py runs/gsm8k_fit
$PY -m diffusion.cli train-backbone --data runs/gsm8k_fit --output "$MODEL" --device "$DEVICE" --precision "$PRECISION" \
  --hidden-size "$HIDDEN" --layers "$LAYERS" --heads "$HEADS" --intermediate-size "$MLP" --max-length "$MAXLEN" --batch-size "$BATCH" \
  --lr "$LR" --warmup-steps 200 --weight-decay 0.1 --dropout "$DROPOUT" --epochs 1000 --max-minutes "$TRAIN_MIN" \
  --eval-every 500 --keep-best --no-progress --force 2>&1 | tee runs/train_gpu.log | grep -v "^\s*$" | tail -n 25
fi

# ------------------------------------------------------------------ 3. evaluation
if has eval; then
log "evaluating the backbone"
timeout "$(left)" $PY benchmarks/diffusion_gsm8k.py --model "$MODEL" --device "$DEVICE" --questions "$QUESTIONS" --batch-size 200 \
  --tag _gpu --no-ship > runs/eval_gpu.log 2>&1
tail -n 60 runs/eval_gpu.log
fi

# ------------------------------------------------------------------ 4. CoDD
if has codd; then
log "CoDD"
timeout "$(left)" $PY benchmarks/codd_gsm8k.py --model "$MODEL" --device "$DEVICE" --prior-backend "$PRIOR_BACKEND" --states "$STATES" \
  --train-examples 100000 --num-windows "$WINDOWS" --epochs "$PRIOR_EPOCHS" --prior-batch 128 --weighting "$WEIGHTING" --nll-examples "$NLL_EXAMPLES" \
  --questions "$QUESTIONS" --val-questions "$VAL_QUESTIONS" --batch-size 200 --out codd_gsm8k_gpu > runs/codd_gpu.log 2>&1
tail -n 40 runs/codd_gpu.log
fi

# ------------------------------------------------------------------ 5. kernels, with the time left
if has kernels && [ "$DEVICE" = cuda ] && [ "$(left)" -gt 40 ]; then
  log "kernel benchmark ($(left) s left)"
  timeout "$(( $(left) < 60 ? $(left) : 60 ))" $PY benchmarks/gpu_benchmark.py --quick --skip-pyjuice --out gpu_quick_cuda > runs/gpu_quick.log 2>&1
  tail -n 20 runs/gpu_quick.log
  [ "$(left)" -gt 30 ] && timeout "$(left)" $PY benchmarks/gpu_benchmark.py --skip-pyjuice > runs/gpu_full.log 2>&1
  tail -n 30 runs/gpu_full.log 2>/dev/null
fi
log "done"
