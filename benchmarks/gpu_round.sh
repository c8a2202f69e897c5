#!/usr/bin/env bash
# The GPU benchmark round recorded in benchmarks/README.md, as run on one 4 x H200 node (64 cores), in four calls on
# the same warm machine. Each part runs independent jobs on disjoint GPUs at once and writes under $OUT.
#   part 1 (carry .kit .benchextra):                       evaluator throughput | learner MFU + GPU learner tests
#   part 2 (carry .vllmkit .kit/activate.sh .benchextra):  pipeline c1 d_a      | pipeline d_b c2
#   part 3 (same carry as part 2):                         pipeline d_a_nccl d_a_lag1 | vLLM engine tests + benches
#   part 4 (same carry as part 2):                         pipeline c4 (4 GPUs) ; learner MFU --ranks 4
#   part 5 (2 x H200, same carry as part 2):                pipeline c1 d_a c2 d_a_lag1
# Round of 2026-11-22 on one 8 x H200 node (128 cores), three calls on the same warm machine:
#   part 6 (carry .kit .benchextra):   learner MFU 1 | 2 | 4 ranks, CUDA adversarial sweep, build-cache warm-up
#   part 7 (carry .vllmkit .kit/activate.sh .benchextra/tokenizer .benchextra/bin):
#                                      pipeline c2 d_b | d_a_nccl d_a_lag1 | k1 | k2 | vLLM engine test + rollout bench
#   part 8 (same carry as part 7):     pipeline k8c, then k8d_lag1 (all 8 GPUs)  [not run: part 7 used the time]
# then, on a fresh 8 x H200 node after the fixes that part 7's stack dumps led to:
#   part 9 (carry .kit .benchextra):   CUDA adversarial sweep + spin probe | build-cache warm-up
#   part 10 (same carry as part 7):    pipeline k8c (8 GPUs); then c2 (GPUs 0,1) | d_a_lag1 (GPUs 2,3)
#                                      [k8c did not start: pipeline_gpu.py then defaulted to GPUs 0-3; fixed]
#   part 11 (carry the activate.sh files, .benchextra/tokenizer .benchextra/bin): k8c on all 8 GPUs
# Round on one 2 x H200 node (32 cores), each case alone on the node:
#   part 12 (carry .kit .benchextra):  build-cache warm-up | CUDA adversarial sweep (GPU 1)
#   part 13 (same carry as part 7):    pipeline c2, then d_a_lag1
# Round on one H100 (16 cores):
#   part 15 (carry .kit .benchextra):  light-header GPU test, then evaluator throughput (light headers on)
#   part 16 (same carry as part 7):    rollout throughput, raw vLLM vs the vllm engine in a RolloutWorker
#   part 17 (carry the activate.sh files, .benchextra/tokenizer .benchextra/bin): vLLM engine + weight-transfer tests
#   part 18 (carry .kit .benchextra, and the KernelBench level-1 task files in kb/level1 of the working tree):
#            evaluator throughput with the KernelBench kernels, COMPILE_WORKERS compile workers (default 32 on 16
#            cores: oversubscribed, all 32 candidates start at once, so ~25 builds run as one wave instead of 16 + 9;
#            near-duplicates wait for their original's compile; the light prelude with AT_PER_OPERATOR_HEADERS and
#            the light include directory), then the light-header GPU test, then light_headers_check.py on every
#            CUDA source with and without the light include directory (LIGHT_TEST=0 / LIGHT_CHECK=0 skip them)
#            EVAL_EXTRA adds eval_throughput.py options (2026-12-07: "--also-fair", ours with
#            evaluator.compile_priority fifo, the default, then fair, then the baseline; EVAL_TIMEOUT_S=420)
#   part 19 (carry .kit .benchextra): GPU tests of liger (containment, ZeRO-3 with partitioned parameters), the fused
#            AdamW and the single-rank DeepSpeed learner, then learner MFU at micro-batch 8 with the fused AdamW
#            (learner.fused_optimizer) and without, liger on and off; on an H200 also liger at micro-batch 16
#   part 20 (carry .kit .benchextra, and kb/level1 as in part 18): after the verified side-stream hold
#            (kernel_eval/child.py SideStreamHold): evaluator throughput (ours with compile_priority=fifo, then the
#            baseline), the evaluator's GPU tests, then the CUDA adversarial sweep. Run once on 2026-12-07 with the
#            first version of the hold, which hung (benchmarks/README.md); the fixed hold was then measured with
#            the eval_throughput.py command of part 20 alone at --timeout-s 190 (device time was short) and with
#            benchmarks/probe_side_stream_hold.py
#   part 21 (carry .kit .benchextra, and kb/level1 as in part 18): light host headers (each main.cpp first against
#            kernel_eval.build's light host prelude instead of torch/extension.h): light_host_check.py on every
#            main.cpp (light, and the first LHC_FULL with torch/extension.h), then evaluator throughput as in part 20
#            Run on 2026-12-07 (one H100): LHC_FULL=6 EVAL_TIMEOUT_S=300, then LHC=0 EVAL_TIMEOUT_S=300 (3.18x, 3.49x).
#            EVAL_EXTRA=--also-full-host runs ours once more with light host headers off (same machine's A/B;
#            EVAL_TIMEOUT_S=440 leaves the baseline its ~190 s)
#   part 22 (same carry): the evaluator's GPU tests and the light-header GPU test, then the CUDA adversarial sweep
#            (2026-12-07, one H100: TEST_TIMEOUT_S=330 SWEEP_TIMEOUT_S=170; 9 passed, sweep 6/6)
#   parts 18 + 19 in one call (device time short; ~7 min):
#     EVAL_TIMEOUT_S=200 LIGHT_TEST=0 LIGHT_CHECK=0 bash benchmarks/gpu_round.sh 18
#     TEST_TIMEOUT_S=120 MFU_TIMEOUT_S=200 MFU_CASES="ds_z3 ds_z3_liger ds_z3_liger_foreach" MFU_STEPS=2 \
#       MFU_PROFILE= MFU16=0 bash benchmarks/gpu_round.sh 19
#     bash benchmarks/gpu_round.sh <part>
set -u
part=${1:?part 1-22}
OUT=${OUT:-bench_out}; mkdir -p "$OUT"
source .kit/activate.sh || exit 1
find /tmp/kit/ray/core/src -type f -exec chmod +x {} + 2>/dev/null
case $part in 1|6|9|12|15|18|19|20|21|22) ;; *) source .vllmkit/activate.sh || exit 1 ;; esac   # parts that run vLLM
export PYTHONPATH=$PWD/.benchextra/site:$PWD${PYTHONPATH:+:$PYTHONPATH} WANDB_MODE=disabled
FINAL=$OUT                     # parts 6-8 work in /tmp and bring back one tarball (at most 8 files come back)
if [ "$part" -ge 6 ]; then OUT=/tmp/gpu_round_part$part; rm -rf "$OUT"; mkdir -p "$OUT"; fi
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
6)
  (CUDA_VISIBLE_DEVICES=0 OUT=$OUT/mfu1 timeout 330 python3 benchmarks/learner_mfu.py --cases ds_z3 ds_z3_liger \
     --ranks 1 --steps 2 --micro-batches 4 8 --case-timeout-s 150 > "$OUT/mfu1.log" 2>&1) &
  (CUDA_VISIBLE_DEVICES=1,2 OUT=$OUT/mfu2 timeout 330 python3 benchmarks/learner_mfu.py --cases ds_z3 --ranks 2 \
     --steps 2 --micro-batches 4 8 --case-timeout-s 200 > "$OUT/mfu2.log" 2>&1) &
  (CUDA_VISIBLE_DEVICES=4,5,6,7 OUT=$OUT/mfu4 timeout 330 python3 benchmarks/learner_mfu.py --cases ds_z3 --ranks 4 \
     --steps 2 --micro-batches 4 8 --case-timeout-s 200 > "$OUT/mfu4.log" 2>&1) &
  (CUDA_VISIBLE_DEVICES=3 OUT=$OUT/adv timeout 330 python3 benchmarks/adversarial_sweep.py --backend cuda \
     --compile-jobs 8 > "$OUT/adv.log" 2>&1) &
  (timeout 330 python3 benchmarks/pipeline_gpu.py --prewarm-only --out "$OUT/prewarm" > "$OUT/prewarm.log" 2>&1) &
  wait
  tar czf "$FINAL/part6.tgz" -C "$OUT" --exclude=trajectories.jsonl . ;;
7)
  P="python3 benchmarks/pipeline_gpu.py --no-prewarm"
  (CUDA_VISIBLE_DEVICES=0,1 timeout 560 $P --cases c2 d_b --steps 2 --case-timeout-s 250 --out "$OUT/p01" \
     > "$OUT/p01.log" 2>&1) &
  (export CUDA_VISIBLE_DEVICES=2,3
   timeout 250 $P --cases d_a_nccl --steps 2 --case-timeout-s 240 --out "$OUT/p23n" > "$OUT/p23n.log" 2>&1
   timeout 300 $P --cases d_a_lag1 --steps 3 --case-timeout-s 290 --out "$OUT/p23l" > "$OUT/p23l.log" 2>&1) &
  (CUDA_VISIBLE_DEVICES=4 timeout 560 $P --cases k1 --steps 1 --case-timeout-s 550 --out "$OUT/pk1" \
     > "$OUT/pk1.log" 2>&1) &
  (CUDA_VISIBLE_DEVICES=5,6 timeout 560 $P --cases k2 --steps 2 --case-timeout-s 550 --out "$OUT/pk2" \
     > "$OUT/pk2.log" 2>&1) &
  (export CUDA_VISIBLE_DEVICES=7
   timeout 200 python3 -m pytest -q -m gpu tests/test_engines.py -k "continuous"
   OUT=$OUT/rollout timeout 330 python3 benchmarks/rollout_throughput.py --part vllm) > "$OUT/vllm.log" 2>&1 &
  wait
  tar czf "$FINAL/part7.tgz" -C "$OUT" --exclude=trajectories.jsonl . ;;
8)
  P="python3 benchmarks/pipeline_gpu.py --no-prewarm"
  timeout 270 $P --cases k8c --steps 2 --case-timeout-s 260 --out "$OUT/k8c" > "$OUT/k8c.log" 2>&1
  timeout 290 $P --cases k8d_lag1 --steps 3 --case-timeout-s 280 --out "$OUT/k8d" > "$OUT/k8d.log" 2>&1
  tar czf "$FINAL/part8.tgz" -C "$OUT" --exclude=trajectories.jsonl . ;;
9)
  (export CUDA_VISIBLE_DEVICES=3
   OUT=$OUT/adv timeout 250 python3 benchmarks/adversarial_sweep.py --backend cuda --compile-jobs 8 \
     --cache-dir /tmp/adv_builds > "$OUT/adv.log" 2>&1
   OUT=$OUT/adv timeout 90 python3 benchmarks/probe_cuda_spin.py > "$OUT/probe.log" 2>&1) &
  (timeout 250 python3 benchmarks/pipeline_gpu.py --prewarm-only --out "$OUT/prewarm" > "$OUT/prewarm.log" 2>&1) &
  wait
  tar czf "$FINAL/part9.tgz" -C "$OUT" . ;;
10)
  P="python3 benchmarks/pipeline_gpu.py --no-prewarm"
  timeout 295 $P --cases k8c --steps 2 --case-timeout-s 290 --out "$OUT/k8c" > "$OUT/k8c.log" 2>&1
  (CUDA_VISIBLE_DEVICES=0,1 timeout 205 $P --cases c2 --steps 2 --case-timeout-s 200 --out "$OUT/c2" \
     > "$OUT/c2.log" 2>&1) &
  (CUDA_VISIBLE_DEVICES=2,3 timeout 205 $P --cases d_a_lag1 --steps 2 --case-timeout-s 200 --out "$OUT/lag" \
     > "$OUT/lag.log" 2>&1) &
  wait
  tar czf "$FINAL/part10.tgz" -C "$OUT" --exclude=trajectories.jsonl . ;;
11)
  export CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7
  timeout 400 python3 benchmarks/pipeline_gpu.py --no-prewarm --cases k8c --steps 2 --case-timeout-s 390 \
    --out "$OUT/k8" > "$OUT/k8.log" 2>&1
  tar czf "$FINAL/part11.tgz" -C "$OUT" --exclude=trajectories.jsonl . ;;
12)
  (CUDA_VISIBLE_DEVICES=1 OUT=$OUT/adv timeout 400 python3 benchmarks/adversarial_sweep.py --backend cuda \
     --compile-jobs 8 --cache-dir /tmp/adv_builds > "$OUT/adv.log" 2>&1) &
  (timeout 400 python3 benchmarks/pipeline_gpu.py --prewarm-only --out "$OUT/prewarm" > "$OUT/prewarm.log" 2>&1) &
  wait
  tar czf "$FINAL/part12.tgz" -C "$OUT" . ;;
13)
  P="python3 benchmarks/pipeline_gpu.py --no-prewarm"
  timeout 325 $P --cases c2 --steps 2 --case-timeout-s 320 --out "$OUT/c2" > "$OUT/c2.log" 2>&1
  timeout 255 $P --cases d_a_lag1 --steps 3 --case-timeout-s 250 --out "$OUT/lag" > "$OUT/lag.log" 2>&1
  tar czf "$FINAL/part13.tgz" -C "$OUT" --exclude=trajectories.jsonl . ;;
15)
  timeout 130 python3 -m pytest -q -m gpu tests/test_light_headers.py > "$OUT/light_gpu_test.log" 2>&1
  OUT=$OUT/eval timeout 395 python3 benchmarks/eval_throughput.py --candidates 32 --size-profile cpu_small \
    --timeout-s 360 > "$OUT/eval.log" 2>&1
  tar czf "$FINAL/part15.tgz" -C "$OUT" . ;;
16)
  OUT=$OUT/rollout timeout 570 python3 benchmarks/rollout_throughput.py --part vllm > "$OUT/rollout.log" 2>&1
  tar czf "$FINAL/part16.tgz" -C "$OUT" . ;;
17)
  timeout 560 python3 -m pytest -q -m gpu tests/test_engines.py tests/test_weight_transfer_gpu.py -rA \
    > "$OUT/engine_tests.log" 2>&1
  tar czf "$FINAL/part17.tgz" -C "$OUT" . ;;
18)
  [ -d kb/level1 ] && export KERNELBENCH_DIR=$PWD/kb
  E=${EVAL_TIMEOUT_S:-340}
  OUT=$OUT/eval timeout $((E + 40)) python3 benchmarks/eval_throughput.py --candidates 32 --size-profile cpu_small \
    --timeout-s "$E" --compile-workers "${COMPILE_WORKERS:-32}" ${EVAL_EXTRA:-} > "$OUT/eval.log" 2>&1
  if [ "${LIGHT_TEST:-1}" = 1 ]; then
    timeout 170 python3 -m pytest -q -m gpu tests/test_light_headers.py > "$OUT/light_gpu_test.log" 2>&1
  fi
  if [ "${LIGHT_CHECK:-1}" = 1 ]; then    # every CUDA source light, with and without the light include directory
    OUT=$OUT/lhc timeout 200 python3 benchmarks/light_headers_check.py --jobs 16 --full 0 --without-include-dir \
      > "$OUT/light_headers_check.log" 2>&1
  fi
  tar czf "$FINAL/part18.tgz" -C "$OUT" . ;;
19)
  timeout ${TEST_TIMEOUT_S:-240} python3 -m pytest -q -m gpu tests/test_learner_fused.py tests/test_learner.py \
    -k "liger or models_built or fused_adamw or deepspeed_single" > "$OUT/learner_gpu_tests.log" 2>&1
  # MFU_CASES / MFU_STEPS / MFU_PROFILE / MFU16=0 shorten it when device time is short
  OUT=$OUT/mfu timeout ${MFU_TIMEOUT_S:-330} python3 benchmarks/learner_mfu.py \
    --cases ${MFU_CASES:-ds_z3 ds_z3_foreach ds_z3_liger ds_z3_liger_foreach} --steps ${MFU_STEPS:-3} \
    --micro-batches 8 --phases --profile-cases ${MFU_PROFILE-ds_z3_liger} --case-timeout-s 120 > "$OUT/mfu.log" 2>&1
  if [ "${MFU16:-1}" = 1 ] && \
     [ "$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)" -gt 100000 ]; then
    OUT=$OUT/mfu16 timeout 150 python3 benchmarks/learner_mfu.py --cases ds_z3_liger --steps 2 --samples 16 \
      --micro-batches 16 --case-timeout-s 140 > "$OUT/mfu16.log" 2>&1     # H200: 16 x 4k tokens per micro-batch
  fi
  tar czf "$FINAL/part19.tgz" -C "$OUT" . ;;
20)
  [ -d kb/level1 ] && export KERNELBENCH_DIR=$PWD/kb
  E=${EVAL_TIMEOUT_S:-280}
  OUT=$OUT/eval timeout $((E + 40)) python3 benchmarks/eval_throughput.py --candidates 32 --size-profile cpu_small \
    --timeout-s "$E" --compile-workers "${COMPILE_WORKERS:-32}" > "$OUT/eval.log" 2>&1
  timeout ${TEST_TIMEOUT_S:-150} python3 -m pytest -q -m gpu tests/test_evaluator_gpu.py -rA \
    > "$OUT/evaluator_gpu_tests.log" 2>&1
  OUT=$OUT/adv timeout ${SWEEP_TIMEOUT_S:-120} python3 benchmarks/adversarial_sweep.py --backend cuda \
    --compile-jobs 16 > "$OUT/adversarial.log" 2>&1
  tar czf "$FINAL/part20.tgz" -C "$OUT" . ;;
21)
  [ -d kb/level1 ] && export KERNELBENCH_DIR=$PWD/kb
  if [ "${LHC:-1}" = 1 ]; then                 # LHC=0 skips the per-file check
    OUT=$OUT/lhc timeout 150 python3 benchmarks/light_host_check.py --jobs 16 --full "${LHC_FULL:-8}" \
      > "$OUT/light_host_check.log" 2>&1
  fi
  E=${EVAL_TIMEOUT_S:-300}
  OUT=$OUT/eval timeout $((E + 40)) python3 benchmarks/eval_throughput.py --candidates 32 --size-profile cpu_small \
    --timeout-s "$E" --compile-workers "${COMPILE_WORKERS:-32}" ${EVAL_EXTRA:-} > "$OUT/eval.log" 2>&1
  tar czf "$FINAL/part21.tgz" -C "$OUT" . ;;
22)
  timeout ${TEST_TIMEOUT_S:-300} python3 -m pytest -q -m gpu tests/test_evaluator_gpu.py tests/test_light_headers.py \
    -rA > "$OUT/evaluator_gpu_tests.log" 2>&1
  OUT=$OUT/adv timeout ${SWEEP_TIMEOUT_S:-150} python3 benchmarks/adversarial_sweep.py --backend cuda \
    --compile-jobs 16 > "$OUT/adversarial.log" 2>&1
  tar czf "$FINAL/part22.tgz" -C "$OUT" . ;;
esac
ls -R "$OUT" | head -80
tail -n 25 "$OUT"/*.log
