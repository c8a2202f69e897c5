#!/usr/bin/env bash
# The GPU benchmark round recorded in benchmarks/README.md, as run on one 4 x H200 node (64 cores), in four calls on
# the same warm machine. Each part runs independent jobs on disjoint GPUs at once and writes under $OUT.
#   part 1 (carry .kit .benchextra):                       evaluator throughput | learner MFU + GPU learner tests
#   part 2 (carry .vllmkit .kit/activate.sh .benchextra):  pipeline c1 d_a      | pipeline d_b c2
#   part 3 (same carry as part 2):                         pipeline d_a_nccl d_a_lag1 | vLLM engine tests + benches
#   part 4 (same carry as part 2):                         pipeline c4 (4 GPUs) ; learner MFU --ranks 4
#   part 5 (2 x H200, same carry as part 2):                pipeline c1 d_a c2 d_a_lag1
#     bash benchmarks/gpu_round.sh <part>
set -u
part=${1:?part 1-4}
OUT=${OUT:-bench_out}; mkdir -p "$OUT"
source .kit/activate.sh || exit 1
find /tmp/kit/ray/core/src -type f -exec chmod +x {} + 2>/dev/null
if [ "$part" != 1 ]; then source .vllmkit/activate.sh || exit 1; fi
export PYTHONPATH=$PWD/.benchextra/site:$PWD${PYTHONPATH:+:$PYTHONPATH} WANDB_MODE=disabled
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader > "$OUT/gpus_part$part.txt" 2>&1
T=${PART_TIMEOUT_S:-560}
case $part in
1)
  (CUDA_VISIBLE_DEVICES=0 OUT=$OUT/eval timeout $T python3 benchmarks/eval_throughput.py --candidates 32 \
     --size-profile cpu_small --timeout-s 250 --compile-workers 40 > "$OUT/eval_throughput.log" 2>&1) &
  (export CUDA_VISIBLE_DEVICES=1,2,3
   OUT=$OUT/mfu timeout 100 python3 benchmarks/learner_mfu.py --cases liger_check --case-timeout-s 90
   OUT=$OUT/mfu timeout 330 python3 benchmarks/learner_mfu.py --cases ds_z3 ds_z3_liger --ranks 1 2 --steps 2 \
     --case-timeout-s 150
   CUDA_VISIBLE_DEVICES=1,2 timeout 120 python3 -m pytest -q -x -m gpu tests/test_learner_ranks.py \
     tests/test_learner_fused.py) > "$OUT/learner.log" 2>&1 &
  wait ;;
2)
  (CUDA_VISIBLE_DEVICES=0,1 timeout $T python3 benchmarks/pipeline_gpu.py --cases c1 d_a --steps 2 \
     --case-timeout-s 260 --out "$OUT/p01" > "$OUT/pipeline_p01.log" 2>&1) &
  (CUDA_VISIBLE_DEVICES=2,3 timeout $T python3 benchmarks/pipeline_gpu.py --cases d_b c2 --steps 2 \
     --case-timeout-s 260 --out "$OUT/p23" > "$OUT/pipeline_p23.log" 2>&1) &
  wait ;;
3)
  (CUDA_VISIBLE_DEVICES=0,1 timeout $T python3 benchmarks/pipeline_gpu.py --cases d_a_nccl d_a_lag1 --steps 3 \
     --case-timeout-s 260 --no-prewarm --out "$OUT/p01" > "$OUT/pipeline_p01.log" 2>&1) &
  (export CUDA_VISIBLE_DEVICES=2,3
   OUT=$OUT/ws timeout 200 python3 benchmarks/weight_sync_bench.py
   timeout 150 python3 -m pytest -q -m gpu tests/test_weight_transfer_gpu.py tests/test_engines.py -k \
     "continuous or transfer or nccl"
   CUDA_VISIBLE_DEVICES=2 OUT=$OUT/rollout timeout 180 python3 benchmarks/rollout_throughput.py --part vllm
  ) > "$OUT/vllm.log" 2>&1 &
  wait ;;
4)
  (timeout 330 python3 benchmarks/pipeline_gpu.py --cases c4 --steps 2 --case-timeout-s 320 --no-prewarm \
     --out "$OUT/p4" > "$OUT/pipeline_p4.log" 2>&1)
  (OUT=$OUT/mfu4 timeout 200 python3 benchmarks/learner_mfu.py --cases ds_z3_liger --ranks 4 --steps 2 \
     --case-timeout-s 190 > "$OUT/mfu4.log" 2>&1)
  ;;
5)  # rerun on a 2 x H200 node after the vLLM request-id fix: the 1-GPU baseline and the 2-GPU placements
  timeout $T python3 benchmarks/pipeline_gpu.py --cases c1 d_a c2 d_a_lag1 --steps 2 --case-timeout-s 230 \
     --out "$OUT/p" > "$OUT/pipeline.log" 2>&1
  tar czf "$OUT/pipeline_logs.tgz" -C "$OUT" p/pipeline_gpu.json p/pipeline_gpu.md $(cd "$OUT" && ls p/*.log) \
     $(cd "$OUT" && ls p/runs/*/metrics.jsonl 2>/dev/null) 2>/dev/null
  ;;
esac
ls -R "$OUT" | head -80
tail -n 25 "$OUT"/*.log
