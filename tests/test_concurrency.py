"""Concurrency and resources: calls from many Python threads at once give bitwise the
sequential results, the GIL is released while kernels run, failed calls leak no
references, and memory stays bounded over thousands of calls."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import pyconv
from _ops import available, op_cases, same_bits
from _subproc import Worker, under_asan

CASES = [c for c in op_cases() if available(c)]


@pytest.fixture(scope="module")
def worker():
    w = Worker(timeout=120)
    yield w
    w.close()


@pytest.mark.skipif(not CASES, reason="no op implemented yet")
def test_threads_bitwise_equal_to_sequential():
    """8 Python threads, each making every op's call many times (both dtypes, in a
    different order per thread): every result equals the sequential one bit for bit."""
    jobs = [(c, dt) for c in CASES for dt in (np.float32, np.float64)]
    expected = {(c.name, dt): c.call(**c.make(dt)) for c, dt in jobs}
    inputs = {(c.name, dt): c.make(dt) for c, dt in jobs}
    rounds = 13                         # 8 threads x 13 rounds x 2 dtypes: 208 calls per op
    errors = []
    start = threading.Barrier(8)

    def work(tid):
        order = np.random.default_rng(tid).permutation(len(jobs))
        start.wait()
        try:
            for r in range(rounds):
                for j in order:
                    c, dt = jobs[j]
                    # ops that write (running statistics) get fresh arguments per call
                    kw = c.make(dt) if c.mutates else inputs[(c.name, dt)]
                    got = c.call(**kw)
                    want = expected[(c.name, dt)]
                    if len(got) != len(want) or not all(same_bits(g, w) for g, w in zip(got, want)):
                        errors.append((tid, r, c.name, np.dtype(dt).name))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append((tid, "exception", repr(e)))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, f"{len(errors)} concurrent results differ from sequential: {errors[:10]}"
    # shared inputs were not modified by any call
    for (name, dt), kw in inputs.items():
        fresh = next(c for c in CASES if c.name == name).make(dt)
        for k, v in kw.items():
            if isinstance(v, np.ndarray):
                assert same_bits(v, fresh[k]), f"{name}: input {k} modified"


def _long_call():
    """A call that runs a kernel for a while, by the first op family available."""
    names = {c.name for c in CASES}
    r = np.random.default_rng(0)
    if "conv2d" in names:
        x = r.standard_normal((8, 64, 40, 40)).astype(np.float32)
        w = r.standard_normal((64, 64, 3, 3)).astype(np.float32)
        return lambda: pyconv.conv2d(x, w, padding=1)
    if "matmul" in names:
        a = r.standard_normal((900, 900)).astype(np.float32)
        return lambda: pyconv._core.matmul(a, a)
    if "batch_norm_train" in names:
        x = r.standard_normal((64, 64, 64, 64)).astype(np.float32)
        return lambda: pyconv.batch_norm(x, None, None, training=True)
    if "max_pool2d" in names:
        x = r.standard_normal((32, 64, 112, 112)).astype(np.float32)
        return lambda: pyconv.max_pool2d(x, 2, return_indices=True)
    return None


@pytest.mark.skipif(not CASES, reason="no op implemented yet")
def test_gil_released_during_kernels():
    """A Python thread keeps counting while another thread is inside a long kernel: it
    could not if the kernel held the GIL."""
    call = _long_call()
    threads_before = pyconv.get_num_threads()
    pyconv.set_num_threads(1)          # leave a core for the counting thread
    try:
        call()                         # warm-up (workspaces, pages)
        t0 = time.perf_counter()
        call()
        one = time.perf_counter() - t0
        reps = max(1, int(0.3 / max(one, 1e-3)))
        state = {"count": 0, "done": False}

        def count():
            while not state["done"]:
                state["count"] += 1

        def kernel():
            for _ in range(reps):
                call()

        counter = threading.Thread(target=count)
        counter.start()
        time.sleep(0.02)
        k = threading.Thread(target=kernel)
        c0 = state["count"]
        k.start()
        k.join()
        during = state["count"] - c0
        state["done"] = True
        counter.join()
    finally:
        pyconv.set_num_threads(threads_before)
    # Holding the GIL for the whole kernel would leave only the switch points between
    # calls (a few per call) to the counter; a released GIL lets it count freely.
    assert during > 2000 * reps, f"counter advanced only {during} times over {reps} kernel calls"


@pytest.mark.skipif(not CASES, reason="no op implemented yet")
def test_refcounts_unchanged_after_errors(worker):
    o = worker.run("refcount", call="_ops:refcount_check", args={"repeats": 50})
    assert o.status == "ok", o.describe()
    assert o.value["calls"] > 0
    assert not o.value["changed"], f"reference counts changed (call, arg, before, after): {o.value['changed']}"


@pytest.mark.skipif(not CASES, reason="no op implemented yet")
@pytest.mark.skipif(under_asan(), reason="ASan's quarantine holds freed memory: RSS means nothing there")
def test_memory_bounded_over_10000_calls(worker):
    o = worker.run("rss", call="_ops:rss_growth", args={"calls": 10000})
    assert o.status == "ok", o.describe()
    grow = o.value["after"] - o.value["before"]
    assert grow < 16 << 20, f"RSS grew by {grow / 2**20:.1f} MiB over {o.value['calls']} calls"
