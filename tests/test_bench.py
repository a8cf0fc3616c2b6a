"""bench/run.py end to end, on fake family files written to a temp dir (the real family
files need not exist). Each run is a subprocess in a fast mode: tiny budget, tiny
bandwidth arrays."""
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest

import pyconv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "bench", "run.py")

# Uses both import styles family files may use. 'torch' is a NumPy stand-in so the test
# needs no torch; one workload's call fails, one's setup fails, one's reference is slow.
FAKE_OK = '''
import time
import numpy as np
from common import Workload
from bench.common import Workload as Workload2
assert Workload is Workload2

def workloads(quick):
    n = 48 if quick else 64

    def mm():
        a = np.ones((n, n), np.float32)
        return {"pyconv": lambda: a @ a, "reference": lambda: a.astype(np.float64) @ a,
                "torch": lambda: np.dot(a, a)}

    def bad_setup():
        raise RuntimeError("setup exploded on purpose")

    def bad_call():
        def boom():
            raise ValueError("kernel said no on purpose")
        return {"pyconv": boom, "reference": lambda: None, "torch": None}

    def copy():
        x = np.ones(1 << 16, np.float32)
        return {"pyconv": x.copy, "reference": None}

    def slow_ref():
        x = np.ones(100)
        return {"pyconv": lambda: x * 2, "reference": lambda: time.sleep(0.15), "torch": None}

    return [
        Workload("fake", "bad setup", "fwd", "flops", 1.0, bad_setup),
        Workload("fake", "bad call", "bwd", "flops", 1.0, bad_call),
        Workload("fake", f"matmul {n}", "fwd", "flops", 2.0 * n ** 3, mm),
        Workload("fake", "copy 256k", "fwd", "bytes", 2 * 4.0 * (1 << 16), copy),
        Workload("fake", "slow ref", "fwd", "bytes", 1600.0, slow_ref),
    ]
'''

FAKE_BROKEN = "import a_module_that_does_not_exist_xyz\n"


@pytest.fixture
def famdir(tmp_path):
    (tmp_path / "fakeok.py").write_text(textwrap.dedent(FAKE_OK))
    (tmp_path / "fakebroken.py").write_text(FAKE_BROKEN)
    return tmp_path


def run_bench(*args, timeout=120, env_extra=None):
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(pyconv.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.pop("PYCONV_BENCH_PATH", None)
    env.update(env_extra or {})
    fast = ["--budget", "0.005", "--max-repeats", "5", "--bw-mib", "2", "--ref-limit", "0.1"]
    p = subprocess.run([sys.executable, RUN, *fast, *args], capture_output=True, text=True,
                       timeout=timeout, env=env, cwd=ROOT)
    return p


def table_rows(stdout):
    """Rows of the Markdown tables before the summary, as lists of stripped cells (header
    and separators dropped)."""
    rows = []
    for ln in stdout.split("## Summary")[0].splitlines():
        if ln.startswith("| ") and not ln.startswith("| family") and not ln.startswith("| T "):
            rows.append([c.strip() for c in ln.strip().strip("|").split("|")])
    return rows


def test_table_json_and_failures(famdir, tmp_path):
    out = tmp_path / "out.json"
    p = run_bench("--path", str(famdir), "--family", "fakebroken,fakeok,fakemissing",
                  "--threads", "1,2", "--json", str(out))
    assert p.returncode == 0, p.stderr
    s = p.stdout
    assert "## Roofs" in s and "## fake" in s and "## Summary" in s
    summ = [c for c in table_rows(s.split("## Summary")[1]) if c[0] == "fake"]
    # timed rows per T: matmul, copy, slow ref; only matmul has a torch time
    assert [(c[1], c[2]) for c in summ] == [("1", "3"), ("2", "3")]
    assert all(c[3] in ("0/1", "1/1") and c[4].endswith("x") for c in summ)
    assert "a_module_that_does_not_exist_xyz" in s  # the broken family's import error
    assert "fakemissing" in s and "skipped" in s     # the missing family's note

    cells = table_rows(s)
    by = {}
    for c in cells:
        if c[0] == "fake":
            by.setdefault((c[1], c[2]), []).append(c)
    # the failing setup comes first and does not stop the others
    assert len(by[("bad setup", "fwd")]) == 1 and "setup exploded on purpose" in by[("bad setup", "fwd")][0][-1]
    assert [c[3] for c in by[("bad call", "bwd")]] == ["1", "2"]
    assert all("kernel said no on purpose" in c[-1] and c[4] == "-" for c in by[("bad call", "bwd")])
    mm = by[("matmul 64", "fwd")]
    assert [c[3] for c in mm] == ["1", "2"]
    for c in mm:
        assert float(c[4]) > 0 and c[6].endswith("GF/s") and c[7].endswith("%")
        assert c[8] != "-" and c[9].endswith("x") and c[10] != "-" and c[11].endswith("x")
    assert mm[0][12] == "-" and mm[1][12].endswith("x")  # scaling only on the T=2 row
    cp = by[("copy 256k", "fwd")]
    assert all(c[6].endswith("GB/s") and c[8] == "-" and c[10] == "-" for c in cp)
    assert all("reference skipped" in c[-1] and c[8] == "-" for c in by[("slow ref", "fwd")])

    doc = json.loads(out.read_text())
    assert {"machine", "roofs", "rows", "options", "notes"} <= set(doc)
    assert doc["machine"]["cpu_count"] == os.cpu_count()
    roofs = doc["roofs"]
    for t in ("1", "2"):
        assert roofs["bandwidth_gbs"][t]["triad_gbs"] > 0 and roofs["fma_gflops"][t]["gflops"] > 0
        assert roofs["fma_gflops"][t]["source"]
    rows = {(r["name"], r["direction"], r["threads"]): r for r in doc["rows"]}
    assert len(doc["rows"]) == 9
    assert rows[("bad setup", "fwd", None)]["errors"]["setup"].startswith("RuntimeError")
    assert rows[("bad call", "bwd", 1)]["errors"]["pyconv"].startswith("ValueError")
    assert rows[("bad call", "bwd", 1)]["reference_ms"] is not None
    for t in (1, 2):
        r = rows[("matmul 64", "fwd", t)]
        assert r["unit"] == "GF/s" and r["metric"] == "flops" and r["amount"] == 2.0 * 64 ** 3
        assert 1 <= r["pyconv_n"] <= 5 and r["pyconv_min_ms"] <= r["pyconv_ms"]
        assert math.isclose(r["pyconv_throughput"], r["amount"] / (r["pyconv_ms"] * 1e-3) / 1e9)
        assert math.isclose(r["roof"], roofs["fma_gflops"][str(t)]["gflops"])
        assert math.isclose(r["pyconv_pct_roof"], 100 * r["pyconv_throughput"] / r["roof"])
        assert math.isclose(r["torch_ratio"], r["torch_ms"] / r["pyconv_ms"])
        assert math.isclose(r["ref_ratio"], r["reference_ms"] / r["pyconv_ms"])
    r1, r2 = rows[("matmul 64", "fwd", 1)], rows[("matmul 64", "fwd", 2)]
    assert r1["scaling"] is None and math.isclose(r2["scaling"], r1["pyconv_ms"] / r2["pyconv_ms"])
    c = rows[("copy 256k", "fwd", 2)]
    assert c["unit"] == "GB/s" and math.isclose(c["roof"], roofs["bandwidth_gbs"]["2"]["triad_gbs"])
    assert c["skipped"]["reference"] == "not provided" and c["reference_ms"] is None
    assert "ref-limit" in rows[("slow ref", "fwd", 2)]["skipped"]["reference"]
    assert any("fakebroken" in n for n in doc["notes"]) and any("fakemissing" in n for n in doc["notes"])


def test_filter_threads_and_switches(famdir):
    p = run_bench("--path", str(famdir), "--family", "fakeok", "--threads", "1",
                  "--filter", "MATMUL", "--no-torch", "--no-reference", "--quick")
    assert p.returncode == 0, p.stderr
    rows = [c for c in table_rows(p.stdout) if c[0] == "fake"]
    assert [(c[1], c[3]) for c in rows] == [("matmul 48", "1")]  # --quick reached workloads()
    assert rows[0][8] == "-" and rows[0][10] == "-" and float(rows[0][4]) > 0


def test_nothing_ran_is_an_error(famdir):
    p = run_bench("--path", str(famdir), "--family", "fakebroken,fakemissing", "--threads", "1")
    assert p.returncode == 1
    assert "a_module_that_does_not_exist_xyz" in p.stdout


def test_env_search_path(famdir):
    p = run_bench("--family", "fakeok", "--filter", "copy", "--threads", "1",
                  env_extra={"PYCONV_BENCH_PATH": str(famdir)})
    assert p.returncode == 0, p.stderr
    assert any(c[1] == "copy 256k" for c in table_rows(p.stdout))


def test_memory_mode(famdir, tmp_path):
    out = tmp_path / "mem.json"
    p = run_bench("--path", str(famdir), "--family", "fakeok", "--memory", "matmul", "--threads", "1",
                  "--json", str(out))
    assert p.returncode == 0, p.stderr
    assert "Peak resident memory" in p.stdout
    mem = json.loads(out.read_text())["memory"]
    assert [(m["name"], m["impl"]) for m in mem] == [("matmul 64", "pyconv"), ("matmul 64", "torch")]
    for m in mem:
        assert "error" not in m, m
        assert m["peak_mib"] >= m["baseline_mib"] > 0
        assert m["peak_above_baseline_mib"] >= 0 and m["calls"] == 3
        assert math.isclose(m["output_mib"], 64 * 64 * 4 / 2 ** 20)


def test_plot(famdir, tmp_path):
    png = tmp_path / "out.png"
    p = run_bench("--path", str(famdir), "--family", "fakeok", "--filter", "matmul", "--threads", "1",
                  "--plot", str(png))
    assert p.returncode == 0, p.stderr
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not available" in p.stderr and not png.exists()
        return
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_thread_control_gives_torch_the_requested_threads():
    """Limiting/restoring the BLAS pools must not undo torch.set_num_threads (torch's MKL
    shares the OpenMP thread count): after set(1) then set(2) torch runs on 2 threads."""
    pytest.importorskip("torch")
    pytest.importorskip("threadpoolctl")
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.join(ROOT, 'bench')!r})
        import run, pyconv, torch
        tc = run.ThreadControl(pyconv, [])
        seen = []
        for t in (1, 2, 1, 2):
            tc.set(t)
            seen.append((torch.get_num_threads(), pyconv.get_num_threads()))
        tc.restore()
        print(seen)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[(1, 1), (2, 2), (1, 1), (2, 2)]"


def test_unimportable_pyconv_is_one_clear_error(famdir, tmp_path):
    """Without an importable pyconv the harness says so once, with the install command,
    and exits non-zero (not a table of 'setup error' rows and exit 0). A shadow package
    that fails to import stands in for a checkout that was never built or installed."""
    shadow = tmp_path / "shadow"
    (shadow / "pyconv").mkdir(parents=True)
    (shadow / "pyconv" / "__init__.py").write_text("raise ImportError('no compiled extension here')\n")
    env = dict(os.environ, PYTHONPATH=str(shadow))
    env.pop("PYCONV_BENCH_PATH", None)
    p = subprocess.run([sys.executable, RUN, "--path", str(famdir), "--family", "fakeok", "--threads", "1",
                        "--budget", "0.005", "--bw-mib", "2"],
                       capture_output=True, text=True, timeout=120, env=env, cwd=str(tmp_path))
    assert p.returncode != 0
    assert p.stderr.count("pyconv is not importable") == 1, p.stderr
    assert "no compiled extension here" in p.stderr and 'pip install ".[bench]"' in p.stderr
    assert "setup error" not in p.stdout and "## fake" not in p.stdout


def test_reference_is_timed_after_the_interleaved_rounds():
    """pyconv and torch alternate; the NumPy reference runs in its own phase afterwards
    (its BLAS threads must not run beside the pyconv rounds), at every thread count."""
    code = textwrap.dedent(f"""
        import sys, types
        sys.path.insert(0, {os.path.join(ROOT, 'bench')!r})
        import run
        from common import Workload
        log = []
        calls = {{k: (lambda k=k: log.append(k)) for k in ("pyconv", "torch", "reference")}}
        wl = Workload("fake", "order", "fwd", "flops", 1.0, lambda: dict(calls))
        args = types.SimpleNamespace(no_torch=False, no_reference=False, budget=10.0, min_repeats=3,
                                     max_repeats=3, ref_limit=10.0)
        class TC:
            def set(self, t):
                log.append(t)
        roofs = {{"fma": {{}}, "bandwidth": {{}}}}
        rows = run.bench_workload("fake", wl, [1, 2], TC(), roofs, args)
        assert [r["reference_n"] for r in rows] == [3, 3], rows
        print(log)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    log = eval(out.stdout.strip())
    for t in (1, 2):
        seg = log[log.index(t) + 1:(log.index(2) if t == 1 else len(log))]
        first_ref = seg.index("reference")
        assert seg.count("pyconv") >= 3 and seg.count("torch") >= 3
        assert all(k == "reference" for k in seg[first_ref:])       # nothing after the reference starts
        assert "reference" not in seg[:first_ref]
