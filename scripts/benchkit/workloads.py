"""W1-W5: one implementation, run against every system's client."""

from __future__ import annotations

import os
import statistics
import threading
import time
from typing import Any

from .common import BULK_SIZE_B, Client, Sizes


def w1_latency(client: Client, sizes: Sizes, *, warmup: int | None = None,
               calls: int | None = None) -> dict[str, Any]:
    """Sequential echo of a small dict; p50/p99 from per-call perf_counter_ns."""
    warmup = sizes.w1_warmup if warmup is None else warmup
    calls = sizes.w1_calls if calls is None else calls
    conn = client.connect()
    try:
        probe = client.small(-1)
        if conn.call("echo", probe) != probe:
            raise AssertionError("echo returned something else")
        for i in range(warmup):
            conn.call("echo", client.small(i))
        samples_ns: list[int] = []
        cap = time.monotonic() + sizes.loop_cap_s
        clock = time.perf_counter_ns
        start_ns = clock()
        for i in range(calls):
            arg = client.small(i)
            t0 = clock()
            conn.call("echo", arg)
            samples_ns.append(clock() - t0)
            if not i % 256 and time.monotonic() > cap:
                break
        elapsed_s = (clock() - start_ns) / 1e9
    finally:
        conn.close()
    samples_ns.sort()
    n = len(samples_ns)
    return {"p50_us": samples_ns[n // 2] / 1e3,
            "p99_us": samples_ns[min(n - 1, int(n * 0.99))] / 1e3,
            "calls_per_s": n / elapsed_s, "calls": n}


def w2_threads(client: Client, sizes: Sizes) -> dict[str, Any]:
    """8 threads sharing one connection; counts calls that complete before the deadline."""
    conn = client.connect_shared()
    counts = [0] * sizes.w2_threads
    errors: list[BaseException] = []
    deadline = [0.0]

    def start_clock() -> None:  # runs once, before any thread leaves the barrier
        deadline[0] = time.monotonic() + sizes.w2_duration_s

    barrier = threading.Barrier(sizes.w2_threads + 1, action=start_clock)

    def worker(k: int) -> None:
        try:
            for i in range(sizes.w2_warmup):
                conn.call("echo", client.small(i))
            barrier.wait(60)
            end_s = deadline[0]
            done = 0
            i = 0
            while True:
                conn.call("echo", client.small(i))
                i += 1
                if time.monotonic() >= end_s:
                    break
                done += 1
            counts[k] = done
        except BaseException as exc:  # noqa: BLE001 -- reported, not swallowed
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True)
               for k in range(sizes.w2_threads)]
    try:
        for t in threads:
            t.start()
        try:
            barrier.wait(60)
        except threading.BrokenBarrierError:
            pass
        for t in threads:
            t.join(sizes.w2_duration_s + 60)
        if errors:
            raise errors[0]
        if any(t.is_alive() for t in threads):
            raise TimeoutError("a W2 thread did not finish")
    finally:
        conn.close()
    total = sum(counts)
    return {"calls_per_s": total / sizes.w2_duration_s, "calls": total,
            "mode": client.shared_mode, "threads": sizes.w2_threads}


def w3_oneway(client: Client, sizes: Sizes) -> dict[str, Any]:
    """Fire-and-forget ``count`` for a fixed time; rate = received / (last receipt - start)."""
    conn = client.connect_oneway()
    try:
        conn.call("reset", None)
        sent = 0
        start_s = time.monotonic()
        end_s = start_s + sizes.w3_duration_s
        while True:
            for _ in range(64):
                if conn.send("count", client.oneway_arg(sent)):
                    sent += 1
            if time.monotonic() >= end_s:
                break
        send_s = time.monotonic() - start_s
        # Wait until the receiver has everything, or its count has been stable a while.
        drain_cap = time.monotonic() + sizes.w3_drain_cap_s
        last_change = time.monotonic()
        received, last_s = -1, 0.0
        while time.monotonic() < drain_cap:
            n, _first_s, last_s = conn.call("stats", None)
            if n != received:
                received, last_change = n, time.monotonic()
            if n >= sent or time.monotonic() - last_change >= sizes.w3_stable_s:
                break
            time.sleep(0.02)
    finally:
        conn.close()
    span_s = max(last_s - start_s, 1e-9)
    return {"msgs_per_s": received / span_s if received > 0 else 0.0, "received": received,
            "sent": sent, "send_rate_per_s": sent / send_s,
            "drain_s": max(0.0, last_s - start_s - send_s)}


def w4_bulk(client: Client, sizes: Sizes) -> dict[str, Any]:
    """1 MiB bytes echoed and verified; MB/s is payload per direction (10^6 bytes)."""
    payload = os.urandom(BULK_SIZE_B)
    conn = client.connect()
    try:
        for _ in range(sizes.w4_warmup):
            if conn.call("echo", payload) != payload:
                raise AssertionError("bulk echo differs")
        per_call_s: list[float] = []
        cap = time.monotonic() + sizes.loop_cap_s
        start_s = time.perf_counter()
        for _ in range(sizes.w4_calls):
            t0 = time.perf_counter()
            if conn.call("echo", payload) != payload:
                raise AssertionError("bulk echo differs")
            per_call_s.append(time.perf_counter() - t0)
            if time.monotonic() > cap:
                break
        elapsed_s = time.perf_counter() - start_s
    finally:
        conn.close()
    n = len(per_call_s)
    return {"mb_per_s": n * BULK_SIZE_B / elapsed_s / 1e6, "calls": n,
            "p50_ms": statistics.median(per_call_s) * 1e3}


def w5_setup(client: Client, sizes: Sizes) -> dict[str, Any]:
    """New connection + handshake + first echo, timed; closing is not timed."""
    samples_s: list[float] = []
    cap = time.monotonic() + sizes.loop_cap_s
    for i in range(sizes.w5_warmup + sizes.w5_calls):
        t0 = time.perf_counter()
        conn = client.connect_fresh()
        conn.call("echo", client.small(i))
        elapsed_s = time.perf_counter() - t0
        conn.close()
        if i >= sizes.w5_warmup:
            samples_s.append(elapsed_s)
            if time.monotonic() > cap:
                break
    return {"median_ms": statistics.median(samples_s) * 1e3, "calls": len(samples_s),
            "p90_ms": sorted(samples_s)[int(len(samples_s) * 0.9)] * 1e3}


def w5_cold(client: Client, sizes: Sizes) -> dict[str, Any]:
    """A one-shot process's work, timed whole: start from existing keys, connect, one
    echo, close (``client.cold_call``; systems without it skip this workload)."""
    samples_s: list[float] = []
    starts_s: list[float] = []
    cap = time.monotonic() + sizes.loop_cap_s
    for i in range(sizes.w5_warmup + sizes.w5_calls):
        probe = client.small(i)
        t0 = time.perf_counter()
        result, started_s = client.cold_call(probe)  # type: ignore[attr-defined]
        elapsed_s = time.perf_counter() - t0
        if result != probe:
            raise AssertionError("echo returned something else")
        if i >= sizes.w5_warmup:
            samples_s.append(elapsed_s)
            starts_s.append(started_s)
            if time.monotonic() > cap:
                break
    return {"median_ms": statistics.median(samples_s) * 1e3, "calls": len(samples_s),
            "p90_ms": sorted(samples_s)[int(len(samples_s) * 0.9)] * 1e3,
            "start_median_ms": statistics.median(starts_s) * 1e3}


WORKLOADS = {"w1": w1_latency, "w2": w2_threads, "w3": w3_oneway, "w4": w4_bulk,
             "w5": w5_setup, "w5cold": w5_cold}
