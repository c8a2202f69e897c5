"""`vllm` engine: vLLM's offline `LLM` inside the RolloutWorker process (GPU only; vllm is imported lazily).

- Prompts go in as token ids and come out as token ids (skip_tokenizer_init=True): vLLM never tokenizes; the text is
  decoded here with the model's transformers tokenizer. EOS ids are passed as stop_token_ids (without a tokenizer
  vLLM does not know them).
- Log-probs: SamplingParams(logprobs=0) returns the sampled token's log-prob; logprobs_mode="processed_logprobs" makes
  it the log-prob after temperature (and top-p), the same distribution the hf engine reports (engines/base.py).
- Weight updates, in place, then reset_prefix_cache() (the cached KV of earlier prompts was computed with the old
  weights). rollout.weight_sync:
    "ipc"  (default, colocated): the CPU state dict is copied to this GPU and handed to vLLM's engine process through
           CUDA IPC handles with the weight-transfer API (start_weight_update / update_weights / finish_weight_update).
    "disk": the state dict is written as safetensors to a temporary directory (in /dev/shm when it exists) and vLLM
           reloads it with collective_rpc("reload_weights", weights_path=...). Slower; works whatever the transport.
    "nccl": (disaggregated placement) the engine's workers join one NCCL group with the learner's rank 0
           (`init_weight_transfer`, once) and each `receive_weights(meta)` runs vLLM's update_weights while the
           learner broadcasts the tensors that `meta` lists (engines/weight_transfer.py is the trainer side; no host
           copy, no object store). A state dict given to load_weights (e.g. by a test) is loaded through "disk".
           A broadcast that fails halfway leaves the engine's layers half reloaded: the run must restart from its
           checkpoint (the controller's timeouts surface it).
- sleep(level=1) offloads weights to CPU memory and drops the KV cache; level=2 drops the weights too (a
  load_weights must follow wake_up).
- Models: a Hugging Face directory or hub name is given to vLLM as is; random models (tiny_random, random_init) and
  GGUF files are first written as a transformers checkpoint to a temporary directory (vLLM reads neither directly).
- A weight update while asleep (colocated: the pipeline syncs weights after training, before the next wake_up) first
  wakes the weights alone (sleep level 1 unmaps them; writing into them would be an illegal address), loads, and
  leaves the KV cache asleep; wake_up then wakes what is still asleep.
- Streaming (continuous batching, `supports_streaming`): `start_request` hands one request to the running vLLM engine
  with the public `LLM.enqueue` (same prompt rendering and request ids as LLM.generate; final output only) and `step`
  runs one `LLM.llm_engine.step()` -- exactly the loop LLM.generate runs internally, except that requests may be added
  between steps. vLLM's engine core schedules them into its next iteration (chunked prefill alongside the decodes
  in flight). engines/driver.py drives this from the RolloutWorker's engine thread.
  `generate_each` (a blocking LLM.generate) refuses to run while streamed requests are in flight (it would collect
  their outputs too); so do load_weights and sleep (the driver drains first).
Limits: one engine per process; requests are not preempted for a weight update (the update waits for them).

GPU check: `python -m pytest tests/test_engines.py -m gpu -q` and `python benchmarks/rollout_throughput.py --part vllm`;
NCCL sync (2 GPUs): `python -m pytest tests/test_weight_transfer_gpu.py -m gpu -q`.
"""
from __future__ import annotations

import base64
import logging
import os
import pickle
import shutil
import tempfile
from typing import Optional

import torch

from engines.base import Engine, Generation, SamplingParams
from engines.models import ModelLoadError, load_model, load_tokenizer, resolve_source

log = logging.getLogger(__name__)


def materialize_checkpoint(model_cfg, seed: int) -> tuple[str, Optional[str]]:
    """(directory vLLM can load, temporary directory to delete later or None)."""
    source, gguf = resolve_source(model_cfg.name_or_path, model_cfg.gguf_file)
    if not model_cfg.tiny_random and not getattr(model_cfg, "random_init", False) and not gguf:
        return source, None
    tmp = tempfile.mkdtemp(prefix="sandbox-rl-vllm-model-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    model = load_model(model_cfg, seed=seed, device="cpu")
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(tmp, safe_serialization=True)
    try:
        load_tokenizer(model_cfg).save_pretrained(tmp)
    except ModelLoadError as e:       # vLLM runs on token ids (skip_tokenizer_init); the eos comes from the config
        log.warning("checkpoint for vLLM without a tokenizer: %s", e)
    del model
    return tmp, tmp


def _external_id(internal_id: str) -> str:
    """The id a request was added under, from the internal id vLLM returns for it (it appends "-" and 8 random
    characters unless VLLM_DISABLE_REQUEST_ID_RANDOMIZATION is set)."""
    head, sep, tail = internal_id.rpartition("-")
    return head if sep and len(tail) == 8 else internal_id


class VLLMEngine(Engine):
    supports_streaming = True

    def __init__(self, model_cfg, rollout_cfg, seed: int = 0):
        if not torch.cuda.is_available():
            raise RuntimeError("rollout.engine=vllm needs a CUDA GPU in the RolloutWorker (set rollout.gpus_per_worker "
                               ">= 1), or use rollout.engine=hf")
        # update_weights carries pickled CUDA IPC handles; vLLM refuses pickle in its RPC unless this is set.
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        # The engine core is a child process: if this process already touched CUDA (a learner, a test, a Ray worker
        # that imported torch.cuda), a forked child cannot use it. Spawn is always safe.
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        from vllm import LLM
        self.weight_sync = rollout_cfg.weight_sync
        try:
            self.tokenizer = load_tokenizer(model_cfg)
        except Exception as e:          # token ids in, token ids out: only Generation.text needs it
            log.warning("vllm engine without a tokenizer (Generation.text will be empty): %s", e)
            self.tokenizer = None
        path, self._tmp_model_dir = materialize_checkpoint(model_cfg, seed)
        kw = dict(model=path, skip_tokenizer_init=True, tensor_parallel_size=rollout_cfg.tensor_parallel_size,
                  gpu_memory_utilization=rollout_cfg.gpu_memory_utilization, enable_sleep_mode=rollout_cfg.enable_sleep,
                  max_model_len=rollout_cfg.max_context_tokens + rollout_cfg.max_new_tokens, seed=seed,
                  dtype=model_cfg.dtype, logprobs_mode="processed_logprobs",
                  enforce_eager=rollout_cfg.vllm_enforce_eager, trust_remote_code=model_cfg.trust_remote_code)
        if rollout_cfg.tensor_parallel_size > 1:     # inside a Ray actor vLLM would otherwise pick its Ray executor
            kw["distributed_executor_backend"] = "mp"
        if rollout_cfg.quantization:
            kw["quantization"] = rollout_cfg.quantization
        if self.weight_sync in ("ipc", "nccl"):
            kw["weight_transfer_config"] = {"backend": self.weight_sync}
        self.llm = LLM(**kw)
        if self.weight_sync == "ipc":
            self.llm.init_weight_transfer_engine({"init_info": {}})
        try:
            hf_cfg = self.llm.llm_engine.model_config.hf_config
        except AttributeError:        # vLLM moved it: read the checkpoint's config instead
            from transformers import AutoConfig
            hf_cfg = AutoConfig.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
        self._tied = bool(getattr(hf_cfg, "tie_word_embeddings", False))
        self._dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[model_cfg.dtype]
        eos = self.tokenizer.eos_token_id if self.tokenizer is not None else None
        gen_eos = getattr(hf_cfg, "eos_token_id", None)
        ids = set([eos] if eos is not None else []) | set(gen_eos if isinstance(gen_eos, list) else
                                                           [gen_eos] if gen_eos is not None else [])
        self.eos_ids = sorted(ids)
        self.weight_version = 0
        self._nccl_ready = False                     # init_weight_transfer done (weight_sync=nccl)
        self._live: dict[str, list[int]] = {}        # streamed requests in flight: handle -> prompt
        # LLM.enqueue returns vLLM's internal request ids ("<id>-<8 random chars>"), while RequestOutput.request_id
        # and abort_request (by default) use the external id it was added under: handle -> external id and back
        self._ext: dict[str, str] = {}
        self._by_ext: dict[str, str] = {}
        self._asleep_tags: set[str] = set()           # vLLM memory tags still asleep ("weights", "kv_cache")

    def __repr__(self) -> str:
        return f"VLLMEngine(weight_sync={self.weight_sync}, weight_version={self.weight_version})"

    def _vllm_params(self, p: SamplingParams):
        from vllm import SamplingParams as VSP
        p.validate()
        return VSP(temperature=p.temperature, top_p=p.top_p, max_tokens=p.max_new_tokens, seed=p.seed, logprobs=0,
                   detokenize=False, stop_token_ids=self.eos_ids)

    def _idle(self, what: str) -> None:
        if self._live:
            raise RuntimeError(f"VLLMEngine.{what}: {len(self._live)} streamed requests are in flight; finish or abort "
                               f"them first")

    def generate_each(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[Generation]:
        if len(prompts) != len(params):
            raise ValueError(f"generate_each: {len(prompts)} prompts but {len(params)} SamplingParams")
        self._idle("generate_each")
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts],
                                 [self._vllm_params(p) for p in params], use_tqdm=False)
        return [self._generation(prompt, o) for prompt, o in zip(prompts, outs)]

    def _generation(self, prompt: list[int], o) -> Generation:
        c = o.outputs[0]
        toks = list(c.token_ids)
        lps = [c.logprobs[i][t].logprob for i, t in enumerate(toks)] if c.logprobs else []
        reason = "stop" if c.finish_reason == "stop" else "length"
        return Generation(prompt_ids=list(prompt), token_ids=toks, logprobs=lps, text=self._decode(toks),
                          finish_reason=reason)

    # ------------------------------------------------------------------------------------------------ streaming
    def start_request(self, prompt: list[int], params: SamplingParams) -> str:
        if not prompt:
            raise ValueError("VLLMEngine.start_request: empty prompt (needs at least one token id)")
        (rid,) = self.llm.enqueue([{"prompt_token_ids": list(prompt)}], [self._vllm_params(params)], use_tqdm=False)
        self._live[rid] = list(prompt)
        ext = _external_id(rid)
        self._ext[rid], self._by_ext[ext] = ext, rid
        return rid

    def step(self) -> list[tuple[str, Generation]]:
        if not self._live:
            return []
        engine = self.llm.llm_engine
        if not engine.has_unfinished_requests():
            # stepping now would block on an empty output queue forever
            lost, self._live, self._ext, self._by_ext = sorted(self._live), {}, {}, {}
            raise RuntimeError(f"VLLMEngine.step: vLLM has no unfinished requests but {len(lost)} were in flight "
                               f"(e.g. {lost[:3]}); they are lost")
        done = []
        for o in engine.step():
            if not getattr(o, "finished", False):
                continue
            handle = o.request_id if o.request_id in self._live else self._by_ext.get(o.request_id)
            prompt = self._live.pop(handle, None) if handle is not None else None
            self._by_ext.pop(self._ext.pop(handle, ""), None)
            if prompt is None:            # aborted by us meanwhile
                continue
            done.append((handle, self._generation(prompt, o)))
        return done

    def abort(self, handles: list[str]) -> None:
        handles = [h for h in handles if self._live.pop(h, None) is not None]
        external = [self._ext.pop(h, h) for h in handles]
        for e in external:
            self._by_ext.pop(e, None)
        if handles:
            try:
                self.llm.llm_engine.abort_request(handles, internal=True)     # the handles are internal ids
            except TypeError:                                                 # a vLLM without `internal`
                self.llm.llm_engine.abort_request(external)

    def num_in_flight(self) -> int:
        return len(self._live)

    def _decode(self, toks: list[int]) -> str:
        return self.tokenizer.decode(toks, skip_special_tokens=True) if self.tokenizer is not None else ""

    def _named_tensors(self, state: dict[str, torch.Tensor], device: str):
        for name, t in state.items():
            if self._tied and name == "lm_head.weight":
                continue          # vLLM ties lm_head to the embedding; sending it would be skipped anyway
            yield name, t.to(device=device, dtype=self._dtype).contiguous()

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        self._idle("load_weights")
        self._wake_weights()
        if self.weight_sync == "ipc":
            self._load_ipc(state)
        else:
            self._load_disk(state)
        self.llm.reset_prefix_cache()

    def _wake_weights(self) -> None:
        if "weights" in self._asleep_tags:            # unmapped while asleep: map them back before writing
            self.llm.wake_up(tags=["weights"])
            self._asleep_tags.discard("weights")

    def _load_ipc(self, state: dict[str, torch.Tensor]) -> None:
        from vllm.distributed.weight_transfer.ipc_engine import IPCWeightTransferEngine
        llm = self.llm

        def send(info) -> None:
            fields = {"names": info.names, "dtype_names": info.dtype_names, "shapes": info.shapes,
                      "packed": info.packed,
                      "ipc_handles_pickled": base64.b64encode(pickle.dumps(info.ipc_handles)).decode()}
            if info.tensor_sizes is not None:
                fields["tensor_sizes"] = info.tensor_sizes
            llm.update_weights({"update_info": fields})

        llm.start_weight_update()
        gpu = list(self._named_tensors(state, "cuda"))     # alive until vLLM has copied them (finish_weight_update)
        IPCWeightTransferEngine.trainer_send_weights(iter(gpu), {"send_mode": send, "packed": True})
        llm.finish_weight_update()
        del gpu
        torch.cuda.empty_cache()

    def init_weight_transfer(self, master_address: str, master_port: int, rank_offset: int, world_size: int) -> None:
        """Join the NCCL weight-transfer group (weight_sync=nccl). Blocks until the learner's rank 0 and every other
        engine worker have joined: call it concurrently with the learner's side."""
        if self.weight_sync != "nccl":
            raise RuntimeError(f"VLLMEngine.init_weight_transfer: rollout.weight_sync is {self.weight_sync!r}, "
                               f"not 'nccl'")
        self.llm.init_weight_transfer_engine({"init_info": {
            "master_address": str(master_address), "master_port": int(master_port),
            "rank_offset": int(rank_offset), "world_size": int(world_size)}})
        self._nccl_ready = True

    def receive_weights(self, meta: dict) -> None:
        """Receive one NCCL broadcast of the weights that `meta` (engines.weight_transfer.transfer_metadata) lists,
        while the learner sends them; then drop the prefix cache (its KV was computed with the old weights)."""
        from engines.weight_transfer import check_update_info
        self._idle("receive_weights")
        if not self._nccl_ready:
            raise RuntimeError("VLLMEngine.receive_weights: init_weight_transfer was not called (weight_sync=nccl)")
        check_update_info(meta)
        self._wake_weights()
        llm = self.llm
        llm.start_weight_update()
        llm.update_weights({"update_info": dict(meta)})
        llm.finish_weight_update()
        llm.reset_prefix_cache()

    def _load_disk(self, state: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file
        tmp = tempfile.mkdtemp(prefix="sandbox-rl-weights-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        try:
            save_file(dict(self._named_tensors(state, "cpu")), os.path.join(tmp, "model.safetensors"),
                      metadata={"format": "pt"})
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": tmp})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def sleep(self, level: int = 1) -> None:
        self._idle("sleep")            # vLLM's sleep would abort them
        if self._asleep_tags:
            return                     # already asleep (vLLM would only warn)
        self.llm.sleep(level=level)
        self._asleep_tags = {"weights", "kv_cache"}

    def wake_up(self) -> None:
        if self._asleep_tags == {"weights", "kv_cache"}:
            self.llm.wake_up()
        elif self._asleep_tags:        # the weights woke for an update: only the rest (re-mapping them would fail)
            self.llm.wake_up(tags=sorted(self._asleep_tags))
        self._asleep_tags = set()

    def close(self) -> None:
        del self.llm
        if self._tmp_model_dir:
            shutil.rmtree(self._tmp_model_dir, ignore_errors=True)
