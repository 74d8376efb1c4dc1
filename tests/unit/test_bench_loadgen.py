"""The load generator's engine on an in-process fake target and a virtual clock.

Nothing here asserts on wall time: the open-loop checks count the arrivals the
scheduler produced on a virtual clock, the closed-loop ones count requests.
"""
import asyncio

import numpy as np
import pytest

from navi.bench import loadgen


class VirtualClock:
    """A clock that only moves when the engine sleeps or the fake target works."""

    def __init__(self):
        self.now = 100.0
        self.sleeps = 0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


def fake_target(clock: VirtualClock, service_s: float = 0.0, fail_every: int = 0, code: str = "UNAVAILABLE"):
    """An async "server": takes ``service_s`` of virtual time, fails every n-th call."""
    calls = {"n": 0, "indices": []}

    async def send(index: int):
        calls["n"] += 1
        calls["indices"].append(index)
        clock.now += service_s
        await asyncio.sleep(0)
        if fail_every and calls["n"] % fail_every == 0:
            return code
        return None

    return send, calls


@pytest.mark.parametrize("rate", [50.0, 1000.0, 5000.0])
def test_open_loop_keeps_its_rate(rate):
    clock = VirtualClock()
    send, calls = fake_target(clock)
    spec = loadgen.LoadSpec("open", rate, warmup_s=1.0, duration_s=10.0)
    result = asyncio.run(loadgen.drive(send, [3] * 4, spec, rate, None, start_at=clock.now + 0.5,
                                       clock=clock, sleep=clock.sleep, seed=7))
    expected = rate * spec.duration_s
    # Poisson count: sd = sqrt(expected); 5 sd plus 1% covers every seed
    assert abs(result.scheduled - expected) <= 5 * expected ** 0.5 + 0.01 * expected
    # every scheduled arrival was sent and measured, warm-up ones were sent but not measured
    assert result.measured == result.scheduled
    assert result.latencies_s.size == result.scheduled
    assert result.total_requests == calls["n"]
    assert calls["n"] > result.scheduled  # the warm-up second sent requests too
    assert result.measured_rows == 3 * result.scheduled
    assert not result.errors


def test_open_loop_latency_counts_from_the_scheduled_time():
    clock = VirtualClock()
    send, _ = fake_target(clock, service_s=0.002)
    spec = loadgen.LoadSpec("open", 100.0, warmup_s=0.0, duration_s=5.0)
    result = asyncio.run(loadgen.drive(send, [1], spec, 100.0, None, start_at=clock.now,
                                       clock=clock, sleep=clock.sleep, seed=1))
    assert result.latencies_s.size > 0
    assert np.all(result.latencies_s >= 0.002 - 1e-9)


def test_open_loop_request_budget_and_overload_counted():
    clock = VirtualClock()

    async def never_answers_quickly(index: int):
        await asyncio.sleep(0.001)  # real time: nothing completes while arrivals pile up
        return None

    spec = loadgen.LoadSpec("open", 1e6, warmup_s=0.0, requests=500, max_in_flight=10)
    result = asyncio.run(loadgen.drive(never_answers_quickly, [1], spec, 1e6, 500, start_at=clock.now,
                                       clock=clock, sleep=clock.sleep))
    assert result.scheduled == 500
    assert result.measured == 500
    assert result.errors.get(loadgen.CLIENT_OVERLOAD, 0) > 0


def test_closed_loop_request_budget_and_errors_by_code():
    clock = VirtualClock()
    send, calls = fake_target(clock, service_s=0.001, fail_every=10, code="RESOURCE_EXHAUSTED")
    spec = loadgen.LoadSpec("closed", 4, warmup_s=0.05, requests=300)
    result = asyncio.run(loadgen.drive(send, [2, 5], spec, 4, 300, start_at=clock.now,
                                       clock=clock, sleep=clock.sleep))
    assert result.measured == 300
    assert result.errors["RESOURCE_EXHAUSTED"] == pytest.approx(30, abs=5)
    assert result.latencies_s.size + result.errors["RESOURCE_EXHAUSTED"] == 300
    assert result.total_requests == calls["n"] > 300  # warm-up requests were sent, not measured
    # the pool is cycled in order
    assert set(calls["indices"]) == {0, 1}


def test_closed_loop_duration_bound_stops_and_excludes_warmup():
    clock = VirtualClock()
    send, calls = fake_target(clock, service_s=0.001)
    spec = loadgen.LoadSpec("closed", 8, warmup_s=0.5, duration_s=2.0)
    result = asyncio.run(loadgen.drive(send, [1], spec, 8, None, start_at=clock.now + 1.0,
                                       clock=clock, sleep=clock.sleep))
    # one request at a time moves the virtual clock by 1 ms: about 2000 measured
    assert 1990 <= result.measured <= 2010
    assert 490 <= calls["n"] - result.measured <= 510
    assert result.window_end - result.window_start == pytest.approx(2.0, abs=0.01)


def test_split_evenly_and_poisson_arrivals():
    assert loadgen.split_evenly(10, 3, integral=True) == [4.0, 3.0, 3.0]
    assert loadgen.split_evenly(1, 2, integral=True) == [1.0, 0.0]
    assert loadgen.split_evenly(300.0, 2, integral=False) == [150.0, 150.0]
    arrivals = loadgen.poisson_arrivals(200.0, 50.0, np.random.default_rng(3))
    assert np.all(np.diff(arrivals) > 0) and arrivals[-1] < 50.0
    assert abs(arrivals.size - 10_000) < 500


def test_load_spec_validation():
    with pytest.raises(ValueError):
        loadgen.LoadSpec("closed", 1, duration_s=None, requests=None)
    with pytest.raises(ValueError):
        loadgen.LoadSpec("sideways", 1)
    with pytest.raises(ValueError):
        loadgen.LoadSpec("open", 0)


def test_merge_results_sums_workers():
    a = loadgen.WorkerResult(latencies_s=np.array([0.001, 0.002]), measured_rows=4, errors={"INTERNAL": 1},
                             window_start=10.0, window_end=12.0, total_requests=5, cpu_s=0.5)
    b = loadgen.WorkerResult(latencies_s=np.array([0.003]), measured_rows=2, errors={"INTERNAL": 2},
                             window_start=10.0, window_end=14.0, total_requests=4, cpu_s=0.25)
    merged = loadgen.merge_results([a, b], 2)
    assert merged.requests == 6
    assert merged.errors == {"INTERNAL": 3}
    assert merged.elapsed_s == 4.0
    assert merged.requests_per_s == pytest.approx(3 / 4.0)
    assert merged.rows_per_s == pytest.approx(6 / 4.0)
    assert merged.client_cpu_s == 0.75


@pytest.mark.parametrize("client", loadgen.CLIENTS)
def test_client_pool_against_the_bare_server(client):
    """The real multi-process client against the bare transport server (counts only)."""
    from navi.bench import requests, servers

    server, port = servers.start_bare_server(0, b"constant", threads=4)
    try:
        with loadgen.ClientPool(processes=2, client=client) as pool:
            workload_id = pool.load_workload([b"a" * 10, b"b" * 20], [1, 2])
            spec = loadgen.LoadSpec("closed", 3, warmup_s=0.1, requests=60)
            measurement = pool.run(f"127.0.0.1:{port}", requests.TF_PREDICT, workload_id, spec)
            assert measurement.requests == 60
            assert not measurement.errors
            assert measurement.rows in range(60, 121)
            assert measurement.client_cpu_s > 0
            assert pool.completed() >= 60
            # a port nobody listens on: every request fails with UNAVAILABLE, counted by code
            spec = loadgen.LoadSpec("closed", 2, warmup_s=0.0, requests=4, timeout_s=2.0)
            failed = pool.run("127.0.0.1:1", requests.TF_PREDICT, workload_id, spec)
            assert failed.errors.get("UNAVAILABLE") == 4
    finally:
        server.stop(0)


def test_open_loop_overloaded_target_reports_its_own_rate_not_the_offered_one():
    clock = VirtualClock()
    # each answer costs 10 ms of the (single) virtual timeline: the target does about 100/s
    send, _ = fake_target(clock, service_s=0.01)
    spec = loadgen.LoadSpec("open", 1000.0, warmup_s=0.0, duration_s=1.0)
    result = asyncio.run(loadgen.drive(send, [1], spec, 1000.0, None, start_at=clock.now,
                                       clock=clock, sleep=clock.sleep, seed=2))
    assert result.scheduled > 800
    rate = result.latencies_s.size / (result.window_end - result.window_start)
    assert rate < 200
    # late answers show up as latency measured from the scheduled arrival
    assert np.percentile(result.latencies_s, 99) > 1.0


def test_http_sender_posts_prefixed_payloads_over_one_kept_alive_connection():
    """The REST protocols' sender: the V2 binary header length travels as its header, the
    connection is reused, a non-200 answer is reported by status."""
    import asyncio

    from aiohttp import web

    from navi.bench.loadgen import _make_http_sender
    from navi.bench.requests import HTTP_PREFIX

    seen = []

    async def infer(request):
        body = await request.read()
        seen.append((request.headers.get("Inference-Header-Content-Length"), body,
                     request.transport.get_extra_info("peername")))
        return web.Response(body=b"x" * 100, status=200 if body != b"bad" else 404)

    async def main():
        app = web.Application()
        app.router.add_post("/v2/models/m/infer", infer)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        payloads = [HTTP_PREFIX.pack(3) + b'{}}tail', HTTP_PREFIX.pack(0) + b"bad"]
        send, close = _make_http_sender(f"127.0.0.1:{port}", "/v2/models/m/infer", payloads, 10.0, 1)
        try:
            return [await send(0), await send(1), await send(0)]
        finally:
            await close()
            await runner.cleanup()

    assert asyncio.run(main()) == [None, "HTTP_404", None]
    assert [(length, body) for length, body, _ in seen] == [("3", b'{}}tail'), (None, b"bad"), ("3", b'{}}tail')]
    assert len({peer for _, _, peer in seen}) == 1  # one connection, kept alive


def test_memoized_hpack_decoding_equals_plain_decoding():
    """_BlockDecoder reuses a decode only while the peer's dynamic table stands still."""
    import random

    import hpack

    from navi.bench.h2grpc import _BlockDecoder

    rng = random.Random(7)
    encoder, plain, memoized = hpack.Encoder(), hpack.Decoder(), _BlockDecoder()
    encoder.header_table_size = 256  # small: entries are evicted too
    names = [b"grpc-status", b"grpc-message", b"content-type", b"x-a", b"x-b"]
    for _ in range(3000):
        headers = [(rng.choice(names), str(rng.randrange(6)).encode() * rng.randrange(1, 30))
                   for _ in range(rng.randrange(1, 4))]
        block = encoder.encode(headers)
        assert memoized.decode(block) == plain.decode(block, raw=True)
    # a server's steady state: the same headers again, all indexed, so remembered
    for _ in range(3):
        block = encoder.encode([(b"grpc-status", b"0"), (b"x-a", b"1")])
        assert memoized.decode(block) == plain.decode(block, raw=True)
    assert block in memoized._memo._memo


def test_the_cli_offers_every_client():
    from navi.cli.bench import serve_command

    option = next(p for p in serve_command.params if p.name == "client")
    assert tuple(option.type.choices) == loadgen.CLIENTS
