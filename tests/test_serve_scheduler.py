"""The real-time pacing of serve/scheduler.py, driven by a fake clock (no thread, no sockets): streams
stay within the look-ahead of their playback clocks, streams opened at different times share batched
steps, a prompt takes effect at the stream's next step, a stall is counted as an underrun (never a
silent skip), an idle stream's clock stops, and a failing engine step closes only its streams."""
import json

import pytest
import torch
from _serve_testing import FakeClock, single_threaded_models

from motionstreamer.runtime.engine import GenerationConfig, StreamingEngine
from motionstreamer.serve.protocol import CLOSE_INTERNAL, Close, StreamOptions
from motionstreamer.serve.scheduler import ServerFull, StreamScheduler

PERIOD = 4 / 30
LOOKAHEAD = 2


@pytest.fixture(scope="module")
def models():
    with single_threaded_models() as m:
        yield m


class RecordingEngine(StreamingEngine):
    """The real engine; remembers which streams each step was asked for."""

    def step(self, stream_ids=None):
        self.batches.append(sorted(stream_ids))
        return super().step(stream_ids)


def make(models, max_streams=4, **kw):
    bundle, text = models
    engine = RecordingEngine(bundle, text, capacity=max_streams + 1,
                             config=GenerationConfig(sampling_steps=1, on_action_end="continue", max_latents=10**6))
    engine.batches = []
    out = []
    clock = FakeClock()
    sched = StreamScheduler(engine, out.extend, max_streams=max_streams, max_jobs=1, lookahead=LOOKAHEAD,
                            clock=clock, **kw)
    return sched, engine, clock, out


def frames_of(out, sink):
    return [json.loads(m) for s, m in out if s == sink and isinstance(m, str) and '"type":"frames"' in m]


def streaming(sched, clock, prompt="a person walks forward", seconds=0.3, name="A"):
    """A stream opened with a prompt and run for `seconds` of (fake) time."""
    key = sched.open(name, StreamOptions(seed=0))
    sched.push(key, prompt)
    run_until(sched, clock, clock.t + seconds)
    return key


def run_until(sched, clock, t_end, dt=0.01, check=None):
    while clock.t < t_end:
        sched.poll()
        if check:
            check()
        clock.t += dt


def test_lookahead_bound_and_shared_batches(models):
    sched, engine, clock, out = make(models)
    a = sched.open("A", StreamOptions(seed=0))
    sched.push(a, "a person walks forward")
    run_until(sched, clock, clock.t + 0.05)
    b = sched.open("B", StreamOptions(seed=1))                # opened 50 ms later, off the A's phase
    sched.push(b, "a person jumps up")

    def check():
        for live in sched._live.values():
            if live.anchor is not None:
                ahead = (live.frames - (clock.t - live.anchor) * 30) / 4
                assert ahead <= LOOKAHEAD + 1 + 1e-6, ahead     # + the latent playing now

    run_until(sched, clock, clock.t + 3.0, check=check)
    fa, fb = frames_of(out, "A"), frames_of(out, "B")
    # real time: 3 s = 22.5 latents, + look-ahead and the opening catch-up
    assert 22 <= len(fa) <= 22.5 + LOOKAHEAD + 2 and 21 <= len(fb) <= 22.5 + LOOKAHEAD + 2
    assert [m["latent"] for m in fa] == list(range(len(fa)))
    assert all(m["underruns"] == 0 for m in fa + fb)
    # after the first few steps both streams fall due together: one batched step for both
    ids = {sched._live[a].sid, sched._live[b].sid}
    late = engine.batches[-15:]
    assert all(set(bt) == ids for bt in late), late


def test_prompt_takes_effect_at_the_next_step(models):
    sched, engine, clock, out = make(models)
    a = streaming(sched, clock, seconds=1.0)
    sent = clock.t
    n_before = len(frames_of(out, "A"))
    sched.push(a, "a person waves with the right hand")
    produced_at = None
    while produced_at is None:
        sched.poll()
        if any(m["prompt"] == "a person waves with the right hand" for m in frames_of(out, "A")):
            produced_at = clock.t
        clock.t += 0.01
    first = next(m for m in frames_of(out, "A") if m["prompt"] == "a person waves with the right hand")
    assert first["latent"] == n_before                      # the very next latent of the stream
    assert {"kind": "prompt_change", "latent": n_before, "prompt": "a person waves with the right hand"} \
        in first["events"]
    assert produced_at - sent <= PERIOD + 0.011             # within one latent period (fake clock: exact)
    acks = [json.loads(m) for s, m in out if s == "A" and '"type":"ack"' in m]
    assert acks[-1]["queue"] == ["a person waves with the right hand"] and first["queue"] == []


def test_stall_is_an_underrun_and_the_clock_reanchors(models):
    sched, engine, clock, out = make(models)
    streaming(sched, clock, "a person jogs forward", seconds=1.0)
    clock.t += 1.0                                          # the engine thread was stalled for a second
    run_until(sched, clock, clock.t + 1.0)
    fa = frames_of(out, "A")
    under = [m["underruns"] for m in fa]
    assert under[-1] == 1 and sched.stats["underruns"] == 1
    assert [m["latent"] for m in fa] == list(range(len(fa)))  # no latent skipped
    assert len(fa) <= 15 + LOOKAHEAD + 2 + 2                  # no burst to "catch up" 1 s after the stall


def test_idle_stream_is_not_stepped_and_its_clock_stops(models):
    sched, engine, clock, out = make(models)
    a = sched.open("A", StreamOptions(seed=0))
    run_until(sched, clock, clock.t + 0.5)
    assert engine.batches == []                             # no prompt: nothing to generate
    sched.push(a, "a person walks forward", seconds=0.8)    # 6 latents, then finished
    run_until(sched, clock, clock.t + 2.0)
    events = [json.loads(m) for s, m in out if s == "A" and '"type":"events"' in m]
    assert any(e["kind"] == "finished" for m in events for e in m["events"])
    n = len(engine.batches)
    run_until(sched, clock, clock.t + 3.0)                  # a long pause: not an underrun
    assert len(engine.batches) == n
    sched.push(a, "a person jumps up", seconds=0.8)
    run_until(sched, clock, clock.t + 2.0)
    fa = frames_of(out, "A")
    assert [m["latent"] for m in fa] == list(range(12)) and fa[-1]["underruns"] == 0


def test_full_and_queue_limits(models):
    sched, engine, clock, out = make(models, max_streams=2, max_queued=2)
    sched.open("A", StreamOptions())
    b = sched.open("B", StreamOptions())
    with pytest.raises(ServerFull, match="full"):
        sched.open("C", StreamOptions())
    sched.close(b)
    sched.open("C", StreamOptions())                        # a freed slot is reusable at once
    for i in range(3):
        sched.push(0, f"a person walks forward {i}", after_current=True)
    sched.poll()
    errors = [json.loads(m) for s, m in out if s == "A" and '"type":"error"' in m]
    assert len(errors) == 1 and errors[0]["code"] == "queue_full"


def test_failing_step_closes_only_its_streams(models):
    sched, engine, clock, out = make(models)
    streaming(sched, clock)
    real_step = engine.step
    engine.step = lambda ids=None: (_ for _ in ()).throw(RuntimeError("boom"))
    sched.poll()
    clock.t += PERIOD
    sched.poll()
    closes = [m for s, m in out if s == "A" and isinstance(m, Close)]
    assert closes and closes[0].code == CLOSE_INTERNAL and "RuntimeError" in closes[0].reason
    engine.step = real_step
    streaming(sched, clock, seconds=0.5, name="B")           # the scheduler keeps serving
    assert len(frames_of(out, "B")) >= 3


def test_non_finite_chunk_closes_its_stream_and_fails_its_job(models):
    """A broken checkpoint's NaN never reaches a client: the stream whose chunk is not finite is closed
    with 1011 and a reason, a /v1/generate job fails, the other streams go on."""
    sched, engine, clock, out = make(models)
    streaming(sched, clock, seconds=0.0, name="A")
    streaming(sched, clock, seconds=0.0, name="B")
    fut = sched.generate("a person jumps up", seconds=1.0, seed=0)
    real_step = engine.step

    def step(ids=None):
        poisoned = {live.sid for live in sched._live.values() if live.sink == "A"}
        poisoned |= {job.sid for job in sched._jobs.values()}
        chunks = real_step(ids)
        for c in chunks:
            if c.stream_id in poisoned:
                c.features = c.features.clone()
                c.features[1, 3] = float("nan")
        return chunks
    engine.step = step
    run_until(sched, clock, clock.t + 0.5)
    closes = [m for s, m in out if s == "A" and isinstance(m, Close)]
    assert closes and closes[0].code == CLOSE_INTERNAL and "non-finite" in closes[0].reason
    assert frames_of(out, "A") == [] and "NaN" not in "".join(m for _, m in out if isinstance(m, str))
    with pytest.raises(RuntimeError, match="non-finite motion"):
        fut.result(timeout=0)
    assert len(frames_of(out, "B")) >= 3 and sched.n_jobs == 0


def test_generate_job_runs_beside_live_streams(models):
    sched, engine, clock, out = make(models)
    streaming(sched, clock, seconds=0.0)
    fut = sched.generate("a person jumps up", seconds=1.0, seed=0)
    with pytest.raises(ServerFull):
        sched.generate("a person jumps up", seconds=1.0)
    run_until(sched, clock, clock.t + 0.5)
    feats, joints = fut.result(timeout=0)
    assert feats.shape == (32, 272) and joints.shape == (32, 22, 3)     # 1 s = 8 latents
    assert sched.n_jobs == 0 and len(frames_of(out, "A")) >= 3


def test_engine_steps_only_the_given_streams(models):
    """engine.step(stream_ids) (the one engine addition the service needs): only those streams advance,
    and a stream's latents do not depend on which others share its steps."""
    bundle, text = models
    config = GenerationConfig(sampling_steps=1, on_action_end="continue", max_latents=10**6)
    eng = StreamingEngine(bundle, text, capacity=3, config=config)
    a = eng.add_stream("a person walks forward", seed=0)
    b = eng.add_stream("a person jumps up", seed=1)
    got = {a: [], b: []}
    for ids in ([a], [a, b], [b], [a], None, [b, 99]):        # 99: unknown ids are ignored
        for c in eng.step(ids):
            got[c.stream_id].append(c.latent)
    assert len(got[a]) == 4 and len(got[b]) == 4
    alone = StreamingEngine(bundle, text, capacity=1, config=config)
    s = alone.add_stream("a person walks forward", seed=0)
    ref = [c.latent for _ in range(4) for c in alone.step([s])]
    torch.testing.assert_close(torch.stack(got[a]), torch.stack(ref), atol=1e-5, rtol=0)
