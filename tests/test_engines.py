"""Generation engines: shapes, stops, sampling log-probs against a manual forward, seeded determinism, top-p,
weight loading. CPU tests use the tiny random model; one test loads the real SmolLM2 GGUF; GPU tests drive vLLM."""
from __future__ import annotations

import asyncio
import math
import os
import tempfile
import time

import pytest
import torch

from engines.base import SamplingParams, make_engine
from engines.driver import EngineDriver
from engines.hf_engine import HFEngine, sample_rows
from rlcore.losses import token_logprobs
from runtime.config import load_config

PROMPTS = [[1, 5, 6, 7, 8, 9], [1, 40, 41], [1, 2000, 300, 400, 500, 600, 700, 800, 900, 1000], [1, 77]]


@pytest.fixture(scope="module")
def cfg():
    return load_config(overrides=["model.tiny_random=true", "rollout.max_concurrent_sequences=3"])


@pytest.fixture(scope="module")
def engine(cfg):
    return make_engine(cfg.model, cfg.rollout, seed=0, device="cpu")


def forward_logprobs(model, prompt_ids, token_ids, temperature):
    """Teacher-forced log-probs of token_ids after prompt_ids: one unpadded forward, as the learner computes them."""
    ids = torch.tensor([prompt_ids + token_ids])
    with torch.no_grad():
        logits = model(ids).logits[:, len(prompt_ids) - 1:-1]                     # [1, T, V]
    return token_logprobs(logits, torch.tensor([token_ids]), temperature)[0]     # [T]


def test_sample_rows_top_p_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    # nucleus 0.6 keeps tokens 0 and 1 (mass before token 1 is 0.5 < 0.6, before token 2 is 0.8): probs 0.625, 0.375
    tok, lp = sample_rows(logits, torch.tensor([1.0]), torch.tensor([0.6]), torch.tensor([[0.01, 0.99, 0.99]]))
    assert tok.item() == 1 and lp.item() == pytest.approx(math.log(0.375), abs=1e-6)
    # token 2 is outside the nucleus: never drawn, however much noise favours it
    tok, _ = sample_rows(logits, torch.tensor([1.0]), torch.tensor([0.6]), torch.tensor([[0.5, 0.5, 1 - 1e-7]]))
    assert tok.item() in (0, 1)
    # top_p = 1, temperature 2: log-prob is log_softmax(logits / 2)
    tok, lp = sample_rows(logits, torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([[0.01, 0.01, 0.99]]))
    assert tok.item() == 2
    assert lp.item() == pytest.approx(torch.log_softmax(logits / 2, -1)[0, 2].item(), abs=1e-6)


def test_shapes_lengths_and_logprobs_match_forward(engine):
    # 4 prompts of different lengths, chunks of 3 (max_concurrent_sequences): padding and chunking both exercised
    params = SamplingParams(temperature=0.7, max_new_tokens=12, seed=11)
    gens = engine.generate(PROMPTS, params)
    assert [g.prompt_ids for g in gens] == PROMPTS
    for g in gens:
        assert 1 <= len(g.token_ids) <= 12 and len(g.logprobs) == len(g.token_ids)
        assert g.finish_reason == ("stop" if g.token_ids[-1] in engine.eos_ids else "length")
        assert g.text == engine.tokenizer.decode(g.token_ids, skip_special_tokens=True)
        ref = forward_logprobs(engine.model, g.prompt_ids, g.token_ids, 0.7)
        assert torch.allclose(torch.tensor(g.logprobs), ref, atol=1e-4), (g.logprobs, ref)
        # the temperature matters: the same tokens at T=1 have other log-probs
        assert not torch.allclose(torch.tensor(g.logprobs), forward_logprobs(engine.model, g.prompt_ids,
                                                                             g.token_ids, 1.0), atol=1e-3)


def test_seeded_determinism_and_batch_independence(engine):
    p = SamplingParams(temperature=1.0, max_new_tokens=10, seed=5)
    a = engine.generate(PROMPTS, p)
    b = engine.generate(PROMPTS, p)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    # prompt i uses seed + i: alone in its batch it draws the same tokens
    alone = engine.generate([PROMPTS[2]], SamplingParams(temperature=1.0, max_new_tokens=10, seed=7))
    assert alone[0].token_ids == a[2].token_ids
    other = engine.generate(PROMPTS, SamplingParams(temperature=1.0, max_new_tokens=10, seed=6))
    assert [g.token_ids for g in other] != [g.token_ids for g in a]


def test_eos_stops_a_row(engine):
    p = SamplingParams(temperature=1.0, max_new_tokens=6, seed=3)
    first = engine.generate([PROMPTS[0]], p)[0]
    assert first.finish_reason == "length" and len(first.token_ids) == 6
    saved = engine.eos_ids
    engine.eos_ids = [first.token_ids[2]]        # the third sampled token becomes the stop token
    try:
        stopped = engine.generate([PROMPTS[0], PROMPTS[1]], p)
    finally:
        engine.eos_ids = saved
    assert stopped[0].token_ids == first.token_ids[:3] and stopped[0].finish_reason == "stop"
    assert stopped[0].logprobs == pytest.approx(first.logprobs[:3], abs=1e-5)


def test_top_p_restricts_and_reports_nucleus_logprobs(engine):
    p = SamplingParams(temperature=1.0, top_p=0.3, max_new_tokens=8, seed=1)
    for g in engine.generate(PROMPTS, p):
        full = forward_logprobs(engine.model, g.prompt_ids, g.token_ids, 1.0)
        # renormalized over the nucleus: at least the full log-prob, never more than 0
        assert all(lp >= f - 1e-5 and lp <= 1e-6 for lp, f in zip(g.logprobs, full.tolist()))


def test_load_weights_changes_generation_and_rejects_foreign_state(cfg):
    eng = HFEngine(cfg.model, seed=0, device="cpu")
    p = SamplingParams(temperature=1.0, max_new_tokens=6, seed=2)
    before = eng.generate(PROMPTS[:2], p)
    state = {k: v.clone() for k, v in eng.model.state_dict().items()}
    state["model.norm.weight"] = state["model.norm.weight"] * 3.0
    eng.load_weights(state)
    after = eng.generate(PROMPTS[:2], p)
    assert [g.logprobs for g in after] != [g.logprobs for g in before]
    with pytest.raises(ValueError, match="unexpected"):
        eng.load_weights({"not.a.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="max_new_tokens"):
        eng.generate([[1]], SamplingParams(max_new_tokens=0))
    with pytest.raises(ValueError, match="empty"):
        eng.generate([[]], SamplingParams())


def test_real_smollm2_chat_generation():
    """The embedded default model: a chat prompt gives decodable text and forward-consistent log-probs."""
    cfg = load_config(overrides=["rollout.max_concurrent_sequences=4"])
    eng = make_engine(cfg.model, cfg.rollout, seed=0, device="cpu")
    ids = eng.tokenizer.apply_chat_template([{"role": "user", "content": "Write one word: hello"}],
                                            add_generation_prompt=True, tokenize=True, return_dict=False)
    g = eng.generate([list(ids)], SamplingParams(temperature=0.5, max_new_tokens=8, seed=0))[0]
    assert g.text.strip() and len(g.logprobs) == len(g.token_ids)
    ref = forward_logprobs(eng.model, g.prompt_ids, g.token_ids, 0.5)
    assert torch.allclose(torch.tensor(g.logprobs), ref, atol=1e-4)


# ------------------------------------------------------------------------------------------- streaming and driver
def test_hf_streaming_matches_batch_and_aborts(engine):
    """The cache-less streaming mode: requests join between steps, seeded tokens equal generate_each's."""
    st = HFEngine(None, model=engine.model, tokenizer=engine.tokenizer, streaming=True)
    p = SamplingParams(temperature=0.8, max_new_tokens=7, seed=20)
    ref = engine.generate(PROMPTS, p)
    handles = {st.start_request(PROMPTS[i], p.for_row(i)): i for i in (0, 1)}
    done = st.step() + st.step()
    handles.update({st.start_request(PROMPTS[i], p.for_row(i)): i for i in (2, 3)})    # join mid-flight
    extra = st.start_request(PROMPTS[0], SamplingParams(max_new_tokens=50))
    assert st.num_in_flight() == 5
    st.abort([extra, "no-such-handle"])
    while st.num_in_flight():
        done += st.step()
    assert sorted(handles[h] for h, _ in done) == [0, 1, 2, 3]
    for h, g in done:
        r = ref[handles[h]]
        assert g.token_ids == r.token_ids and g.finish_reason == r.finish_reason
        assert g.logprobs == pytest.approx(r.logprobs, abs=1e-4) and g.prompt_ids == PROMPTS[handles[h]]
    with pytest.raises(NotImplementedError, match="streaming"):
        engine.start_request(PROMPTS[0], p)
    with pytest.raises(ValueError, match="max_new_tokens"):
        st.start_request(PROMPTS[0], SamplingParams(max_new_tokens=0))
    assert st.num_in_flight() == 0


async def _timed(driver, prompt, params, log, tag):
    g, version = await driver.generate(prompt, params)
    log.append((tag, time.perf_counter()))
    return g, version


def _late_request_run(eng) -> list[str]:
    """Three long requests, then (once they are decoding) one short one: the order in which they return."""
    async def run():
        d = EngineDriver(lambda: eng, max_in_flight=8, batch_wait_s=0.0, name="t")
        order: list = []
        early = [asyncio.ensure_future(_timed(d, PROMPTS[i], SamplingParams(max_new_tokens=40, seed=i), order,
                                              "early")) for i in range(3)]
        while d.stats.admitted < 3 or (eng.supports_streaming and d.stats.engine_calls < 2):
            await asyncio.sleep(0.005)          # the early requests are in the engine (and decoding, if streaming)
        late = await _timed(d, PROMPTS[3], SamplingParams(max_new_tokens=2, seed=9), order, "late")
        await asyncio.gather(*early)
        d.close()
        assert len(late[0].token_ids) <= 2
        return [tag for tag, _ in order]
    return asyncio.run(run())


def test_driver_late_request_is_not_blocked_when_streaming(engine):
    st = HFEngine(None, model=engine.model, tokenizer=engine.tokenizer, streaming=True)
    assert _late_request_run(st)[0] == "late"            # continuous batching: returns while the others decode
    assert _late_request_run(engine)[-1] == "late"       # hf batches: waits for the running call, then runs alone


class _StepRecorder:
    """A streaming engine that records how many requests were in flight at each step."""
    def __init__(self, eng):
        self.eng, self.in_flight_at_step = eng, []

    def __getattr__(self, name):
        return getattr(self.eng, name)

    def step(self):
        self.in_flight_at_step.append(self.eng.num_in_flight())
        return self.eng.step()


def test_driver_start_window_gathers_a_burst_before_the_first_step(engine):
    """A request that finds the engine idle waits for company: a burst of requests 20 ms apart starts as one batch
    (streaming too), the window closes at once when max_in_flight requests wait, and batch_wait 0 means no window."""
    async def burst(d, n, gap_s):
        reqs = []
        for i in range(n):
            reqs.append(asyncio.ensure_future(d.generate(PROMPTS[i % 4], SamplingParams(max_new_tokens=3, seed=i))))
            await asyncio.sleep(gap_s)
        return await asyncio.wait_for(asyncio.gather(*reqs), 60)

    async def run():
        rec = _StepRecorder(HFEngine(None, model=engine.model, tokenizer=engine.tokenizer, streaming=True))
        d = EngineDriver(lambda: rec, max_in_flight=8, batch_wait_s=0.3, name="t")
        await burst(d, 5, 0.02)
        gathered = (rec.in_flight_at_step[0], d.stats.windows)
        t = time.perf_counter()                     # max_in_flight waiting closes the window (cap: 10 x 5 s)
        d.batch_wait_s, d.max_in_flight = 5.0, 4
        gens = await burst(d, 4, 0.0)
        full = time.perf_counter() - t
        d.close()
        d0 = EngineDriver(lambda: rec, max_in_flight=8, batch_wait_s=0.0, name="t0")
        await burst(d0, 2, 0.0)
        d0.close()
        return gathered, full, gens, d0.stats.windows
    (first_step, windows), full, gens, windows0 = asyncio.run(run())
    assert first_step == 5 and windows == 1
    assert full < 5.0 and all(len(g.token_ids) == 3 for g, _ in gens)
    assert windows0 == 0


def test_driver_fails_requests_the_engine_lost_instead_of_hanging(engine):
    """If the engine no longer holds requests the driver has in flight (lost: e.g. a request-id mix-up), their
    callers get an error and a weight update filed behind them still runs, instead of both waiting forever."""
    st = HFEngine(None, model=engine.model, tokenizer=engine.tokenizer, streaming=True)

    async def run():
        d = EngineDriver(lambda: st, max_in_flight=8, batch_wait_s=0.0, name="t")
        reqs = [asyncio.ensure_future(d.generate(PROMPTS[i], SamplingParams(max_new_tokens=200, seed=i)))
                for i in range(2)]
        while d.stats.admitted < 2:
            await asyncio.sleep(0.005)
        st._live.clear()                              # the engine forgets them behind the driver's back
        results = await asyncio.wait_for(asyncio.gather(*reqs, return_exceptions=True), 30)
        update = await asyncio.wait_for(d.call(lambda: "loaded"), 30)
        d.close()
        return results, update, d.stats.failed_requests

    results, update, failed = asyncio.run(run())
    assert all(isinstance(r, RuntimeError) and "lost by the engine" in str(r) for r in results), results
    assert update == "loaded" and failed == 2


def test_driver_drains_before_a_weight_update(cfg, engine):
    """Requests in flight when an update is filed finish under the old weights and say so; later ones use the new."""
    from engines.models import load_model
    model = load_model(cfg.model, seed=0, device="cpu")
    st = HFEngine(None, model=model, tokenizer=engine.tokenizer, streaming=True)
    old = {k: v.clone() for k, v in model.state_dict().items()}
    new = {k: v + 0.05 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1)) if v.is_floating_point()
           else v for k, v in old.items()}

    def load(state, version):
        st.load_weights(state)
        st.weight_version = version
        return version

    async def run():
        d = EngineDriver(lambda: st, max_in_flight=8, batch_wait_s=0.0, name="t")
        params = [SamplingParams(max_new_tokens=25, seed=i) for i in range(2)]
        first = [asyncio.ensure_future(d.generate(PROMPTS[i], params[i])) for i in range(2)]
        while d.stats.engine_calls < 3:
            await asyncio.sleep(0.01)
        assert await d.call(load, new, 1) == 1
        assert all(f.done() for f in first)          # drained: the update waited for both
        after = await d.generate(PROMPTS[2], SamplingParams(max_new_tokens=5, seed=3))
        d.close()
        return [f.result() for f in first], after, d.stats.drains
    first, after, drains = asyncio.run(run())
    assert drains == 1
    ref_old = HFEngine(None, model=load_model(cfg.model, seed=0, device="cpu"), tokenizer=None)
    for g, version in first:
        assert version == 0 and len(g.token_ids) == 25
        assert torch.allclose(torch.tensor(g.logprobs), forward_logprobs(ref_old.model, g.prompt_ids, g.token_ids,
                                                                         1.0), atol=1e-4)
    g, version = after
    assert version == 1
    assert torch.allclose(torch.tensor(g.logprobs), forward_logprobs(model, g.prompt_ids, g.token_ids, 1.0), atol=1e-4)


# ------------------------------------------------------------------------------------------------------------ GPU
def _small_qwen2(path: str, seed: int) -> dict:
    """A small random Qwen2 checkpoint (head_dim 64, so vLLM's attention kernels accept it) written to `path`."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    c = Qwen2Config(vocab_size=4096, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                    tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    c.architectures = ["Qwen2ForCausalLM"]
    torch.manual_seed(seed)
    m = Qwen2ForCausalLM(c).to(torch.bfloat16)
    m.save_pretrained(path, safe_serialization=True)
    return {k: v.clone() for k, v in m.state_dict().items()}


@pytest.mark.gpu
@pytest.mark.parametrize("weight_sync", ["ipc", "disk"])
def test_vllm_engine_logprobs_weights_sleep(weight_sync):
    pytest.importorskip("vllm")
    from transformers import Qwen2ForCausalLM
    tmp = tempfile.mkdtemp()
    a, b = os.path.join(tmp, "a"), os.path.join(tmp, "b")
    _small_qwen2(a, 1)
    state_b = _small_qwen2(b, 2)
    cfg = load_config(overrides=[f"model.name_or_path={a}", "model.dtype=bfloat16", "rollout.engine=vllm",
                                 "rollout.gpus_per_worker=1", "rollout.gpu_memory_utilization=0.3",
                                 "rollout.max_context_tokens=256", "rollout.max_new_tokens=32",
                                 f"rollout.weight_sync={weight_sync}", "rollout.vllm_enforce_eager=true"])
    eng = make_engine(cfg.model, cfg.rollout, seed=0)
    prompts = [[1 + i, 100 + i, 200 + i, 300] for i in range(8)]
    p = SamplingParams(temperature=1.0, max_new_tokens=16, seed=0)

    def max_diff(gens, path):
        m = Qwen2ForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda().eval()
        d = 0.0
        for g in gens:
            ref = forward_logprobs(m.cpu().float(), g.prompt_ids, g.token_ids, 1.0)
            d = max(d, (torch.tensor(g.logprobs) - ref).abs().max().item())
        return d

    g1, g2 = eng.generate(prompts, p), eng.generate(prompts, p)
    assert [g.token_ids for g in g1] == [g.token_ids for g in g2]
    assert max_diff(g1, a) < 0.1                  # bf16 engine vs an fp32 forward of the same bf16 weights
    eng.load_weights(state_b)
    gb = eng.generate(prompts, p)
    assert max_diff(gb, b) < 0.1 and max_diff(gb, a) > 0.3
    eng.sleep(1)
    eng.wake_up()
    assert [g.token_ids for g in eng.generate(prompts, p)] == [g.token_ids for g in gb]
    eng.close()


@pytest.mark.gpu
def test_vllm_continuous_batching_staggered_arrivals():
    """64 turn-sized requests through the EngineDriver (the RolloutWorker's engine thread) on vLLM: 48 long ones, then
    16 short ones 0.5 s later, then a weight update while the long ones decode. The short ones return long before
    the long ones (no waiting behind a batch); the update waits for the long ones, which carry version 0 and match
    the old weights' log-probs; seeded requests repeat exactly and match the blocking generate_each path."""
    pytest.importorskip("vllm")
    from transformers import Qwen2ForCausalLM
    tmp = tempfile.mkdtemp()
    a, b = os.path.join(tmp, "a"), os.path.join(tmp, "b")
    _small_qwen2(a, 1)
    state_b = _small_qwen2(b, 2)
    cfg = load_config(overrides=[f"model.name_or_path={a}", "model.dtype=bfloat16", "rollout.engine=vllm",
                                 "rollout.gpus_per_worker=1", "rollout.gpu_memory_utilization=0.3",
                                 "rollout.max_context_tokens=256", "rollout.max_new_tokens=768",
                                 "rollout.vllm_enforce_eager=true"])
    eng = make_engine(cfg.model, cfg.rollout, seed=0)
    assert eng.supports_streaming
    long_p = [[1 + i, 100 + i, 200 + i, 300] for i in range(48)]
    short_p = [[7, 3000 + i, 11] for i in range(16)]

    def load(state, version):
        eng.load_weights(state)
        eng.weight_version = version
        return version

    async def run():
        d = EngineDriver(lambda: eng, max_in_flight=256, batch_wait_s=0.005, name="gpu-test")
        t0 = time.perf_counter()
        done: dict = {}

        async def one(key, prompt, params):
            g, v = await d.generate(prompt, params)
            done[key] = (g, v, time.perf_counter() - t0)

        tasks = [asyncio.ensure_future(one(("long", i), p, SamplingParams(max_new_tokens=640, seed=i)))
                 for i, p in enumerate(long_p)]
        await asyncio.sleep(0.5)
        t_short = time.perf_counter() - t0
        tasks += [asyncio.ensure_future(one(("short", i), p, SamplingParams(max_new_tokens=8, seed=100 + i)))
                  for i, p in enumerate(short_p)]
        await asyncio.gather(*tasks[48:])
        t_short_done = time.perf_counter() - t0
        long_running = sum(k not in done for k in [("long", i) for i in range(48)])
        assert await d.call(load, state_b, 1) == 1
        t_update = time.perf_counter() - t0
        await asyncio.gather(*tasks)
        # after the update: the same seeded request twice and with another seed; a cancelled one is aborted
        p = SamplingParams(max_new_tokens=16, seed=7)
        r1, r2 = await d.generate(long_p[0], p), await d.generate(long_p[0], p)
        r3 = await d.generate(long_p[0], SamplingParams(max_new_tokens=16, seed=8))
        victim = asyncio.ensure_future(d.generate(long_p[1], SamplingParams(max_new_tokens=640)))
        await asyncio.sleep(0.2)
        victim.cancel()
        r4 = await d.generate(long_p[2], SamplingParams(max_new_tokens=4, seed=1))
        await asyncio.sleep(0.1)
        in_flight = eng.num_in_flight()
        d.close()
        return done, t_short, t_short_done, long_running, t_update, (r1, r2, r3, r4), in_flight, d.stats
    done, t_short, t_short_done, long_running, t_update, (r1, r2, r3, r4), in_flight, stats = asyncio.run(run())
    assert len(done) == 64 and stats.failed_requests == 0
    longs = [done[("long", i)] for i in range(48)]
    shorts = [done[("short", i)] for i in range(16)]
    t_long_last = max(t for _, _, t in longs)
    print(f"short requests sent at {t_short:.2f} s, all done at {t_short_done:.2f} s; long ones still running then: "
          f"{long_running}/48, last long done at {t_long_last:.2f} s; update returned at {t_update:.2f} s; "
          f"steps {stats.engine_calls}, max in flight {stats.batch_size_max}")
    # not blocked behind the long batch: the short ones finish while most long ones still decode
    assert long_running >= 40 and t_short_done - t_short < 0.5 * (t_long_last - t_short)
    # drained: the update returned only after every long request; all of those were sampled under version 0
    assert t_update >= t_long_last - 0.05
    assert all(v == 0 for _, v, _ in longs + shorts)
    for g, _, _ in longs + shorts:
        assert len(g.logprobs) == len(g.token_ids) >= 1 and all(lp <= 1e-6 for lp in g.logprobs)
        assert g.finish_reason == ("stop" if g.token_ids[-1] == 2 else "length")
    m_a = Qwen2ForCausalLM.from_pretrained(a, dtype=torch.bfloat16).float().eval()
    m_b = Qwen2ForCausalLM.from_pretrained(b, dtype=torch.bfloat16).float().eval()
    for g, _, _ in longs[:4] + shorts[:4]:
        d_a = (torch.tensor(g.logprobs) - forward_logprobs(m_a, g.prompt_ids, g.token_ids, 1.0)).abs().max().item()
        assert d_a < 0.1, d_a
    (g1, v1), (g2, _), (g3, _), (g4, v4) = r1, r2, r3, r4
    assert v1 == 1 and v4 == 1 and g1.token_ids == g2.token_ids and g1.token_ids != g3.token_ids
    assert (torch.tensor(g1.logprobs) - forward_logprobs(m_b, g1.prompt_ids, g1.token_ids, 1.0)).abs().max() < 0.1
    blocking = eng.generate_each([long_p[0]], [SamplingParams(max_new_tokens=16, seed=7)])[0]
    assert blocking.token_ids == g1.token_ids
    assert len(g4.token_ids) == 4 and in_flight == 0
    eng.close()


def test_vllm_request_handles_map_to_external_ids():
    """LLM.enqueue returns vLLM's internal ids ("<id>-<8 random chars>"); outputs carry the external id. The engine
    maps one to the other (a mismatch lost every streamed request on the GPU before)."""
    from engines.vllm_engine import _external_id
    assert _external_id("0-9cbb578a") == "0"
    assert _external_id("17-abcdef12") == "17"
    assert _external_id("a-b-12345678") == "a-b"
    assert _external_id("42") == "42"                 # VLLM_DISABLE_REQUEST_ID_RANDOMIZATION
    assert _external_id("req-short") == "req-short"    # not vLLM's suffix: left alone


def test_a_model_directory_without_tokenizer_files_has_no_tokenizer(tmp_path):
    """transformers turns a directory with only config.json into an empty tokenizer whose eos is id 0; the vllm
    engine added that id to its stop tokens, so a random model stopped on token 0 ("stop" with a non-EOS last
    token on GPU). load_tokenizer refuses it; the vllm engine then runs on token ids alone, eos from the config."""
    from transformers import Qwen2Config

    from engines.models import ModelLoadError, load_tokenizer
    Qwen2Config(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                num_key_value_heads=2, bos_token_id=1, eos_token_id=2).save_pretrained(str(tmp_path))
    cfg = load_config(overrides=[f"model.name_or_path={tmp_path}"])
    with pytest.raises(ModelLoadError, match="no vocabulary files"):
        load_tokenizer(cfg.model)
