#!/usr/bin/env python3
"""pyconv benchmark harness: times every workload of the family files against the NumPy
reference and PyTorch, at 1 thread and at all threads, and reports each against roofs
measured at start-up (FP32 FMA peak, memory bandwidth).

    python bench/run.py                       # the whole suite
    python bench/run.py --quick               # CI smoke run (small shapes, small budget)
    python bench/run.py --family conv --filter resnet --threads 1,2 --json out.json --plot out.png
    python bench/run.py --memory 'stem'       # peak resident memory, pyconv vs torch, per workload

Family files (bench/gemm.py, bench/conv.py, bench/pool.py, bench/batchnorm.py) each define
`workloads(quick) -> list[Workload]` (see bench/common.py). Extra directories to search for
family files come from `--path DIR` or the PYCONV_BENCH_PATH environment variable (os.pathsep
separated); they are searched before bench/. See bench/README.md for the columns.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
import traceback
import types

# OpenBLAS (NumPy's BLAS, which the reference uses) keeps its worker threads spinning for
# about 0.1 s after each call (2**28 cycles by default). On a machine with few cores those
# spinning threads steal time from the pyconv and torch rounds; 2**4 cycles makes them
# sleep at once. It must be set before NumPy loads OpenBLAS; a value the user set wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_FAMILIES = ("gemm", "conv", "pool", "batchnorm", "nn")
IMPLS = ("pyconv", "reference", "torch")
NOMINAL_FMA_GFLOPS_PER_CORE = 95.0  # ANCHORS.md, used only when it cannot be measured
MEMORY_TAG = "PYCONV_BENCH_MEMORY "


# ----------------------------------------------------------------------------- discovery


def _install_bench_package() -> None:
    """Family files may write `from common import ...` or `from bench.common import ...`:
    both name the same module object (so there is a single Workload class)."""
    if BENCH_DIR not in sys.path:
        sys.path.insert(0, BENCH_DIR)
    import common  # noqa: F401  (bench/common.py)

    if "bench" not in sys.modules:
        pkg = types.ModuleType("bench")
        pkg.__path__ = [BENCH_DIR]
        sys.modules["bench"] = pkg
    sys.modules.setdefault("bench.common", sys.modules["common"])


def search_dirs(extra: list) -> list:
    dirs = list(extra or [])
    env = os.environ.get("PYCONV_BENCH_PATH", "")
    dirs += [d for d in env.split(os.pathsep) if d]
    return [os.path.abspath(d) for d in dirs] + [BENCH_DIR]


def load_family(module_name: str, dirs: list):
    """(module, None) or (None, message). A missing file and a failing import both give a
    message; neither raises."""
    if not module_name.isidentifier():
        return None, f"'{module_name}' is not a valid family name"
    for d in dirs:
        path = os.path.join(d, module_name + ".py")
        if not os.path.isfile(path):
            continue
        qual = ("bench." if d == BENCH_DIR else "pyconv_bench_ext.") + module_name
        spec = importlib.util.spec_from_file_location(qual, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[qual] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException as e:  # noqa: BLE001  (a family file must not stop the others)
            sys.modules.pop(qual, None)
            if isinstance(e, KeyboardInterrupt):
                raise
            return None, f"import of {path} failed: {_describe(e)}\n{_short_tb(e)}"
        if not callable(getattr(mod, "workloads", None)):
            return None, f"{path} defines no workloads(quick) function"
        return mod, None
    return None, f"no {module_name}.py in {', '.join(dirs)}: skipped"


def collect_workloads(families: list, dirs: list, quick: bool, notes: list) -> list:
    """[(module_name, workload)], in family order then file order."""
    out = []
    for fam in families:
        mod, err = load_family(fam, dirs)
        if mod is None:
            notes.append(f"family {fam}: {err}")
            continue
        try:
            wls = list(mod.workloads(quick))
        except Exception as e:  # noqa: BLE001
            notes.append(f"family {fam}: workloads({quick}) failed: {_describe(e)}\n{_short_tb(e)}")
            continue
        good = [w for w in wls if callable(getattr(w, "setup", None)) and hasattr(w, "name")]
        if len(good) < len(wls):
            notes.append(f"family {fam}: {len(wls) - len(good)} item(s) without name/setup ignored")
        out += [(fam, w) for w in good]
    return out


def _describe(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return type(e).__name__ + (": " + msg[0] if msg else "")


def _short_tb(e: BaseException, lines: int = 4) -> str:
    tb = traceback.format_exception(type(e), e, e.__traceback__)
    text = "".join(tb).rstrip().splitlines()
    return "\n".join("    " + s for s in text[-lines:])


# ----------------------------------------------------------------------------- threads


class ThreadControl:
    """Sets pyconv's, torch's (when imported) and NumPy's BLAS thread counts together."""

    def __init__(self, pyconv_mod, notes: list):
        self.pyconv = pyconv_mod
        self._limiter = None
        try:
            import threadpoolctl

            self.threadpoolctl = threadpoolctl
        except Exception:
            self.threadpoolctl = None
            notes.append("threadpoolctl is not installed: NumPy's BLAS thread count is not "
                         "controlled (reference timings use its default at every T)")

    def set(self, t: int) -> None:
        if self.pyconv is not None:
            self.pyconv.set_num_threads(t)
        if self.threadpoolctl is not None:
            self.restore()
            self._limiter = self.threadpoolctl.threadpool_limits(limits=t, user_api="blas")
        # torch last: restoring or limiting the BLAS pools (torch's MKL among them, on the
        # GNU OpenMP layer) resets the shared OpenMP thread count torch reads.
        torch = sys.modules.get("torch")  # only when a workload imported it
        if torch is not None:
            torch.set_num_threads(t)
            if torch.get_num_threads() != t:
                raise RuntimeError(f"torch.set_num_threads({t}) did not take: {torch.get_num_threads()}")

    def restore(self) -> None:
        if self._limiter is not None:
            self._limiter.restore_original_limits()
            self._limiter = None


# ----------------------------------------------------------------------------- roofs


def measure_bandwidth(threads_list: list, mib: int, reps: int = 5) -> dict:
    """Best-of-`reps` STREAM-style triad a = b + s*c (and copy a = b) over three float64
    arrays of `mib` MiB each, split across Python threads (NumPy ufuncs release the GIL).
    Each thread works through L2-sized chunks with its own scratch, so s*c never goes to
    memory. Bytes counted as STREAM does: 3 arrays for triad, 2 for copy."""
    n = max(1, (mib << 20) // 8)
    a = np.zeros(n)
    b = np.full(n, 1.0)
    c = np.full(n, 2.0)
    chunk = 32768  # 256 KiB of float64

    def triad(lo, hi, tmp):
        for i in range(lo, hi, chunk):
            j = min(i + chunk, hi)
            t = tmp[: j - i]
            np.multiply(c[i:j], 3.0, out=t)
            np.add(b[i:j], t, out=a[i:j])

    def copy(lo, hi, tmp):
        for i in range(lo, hi, chunk):
            j = min(i + chunk, hi)
            np.copyto(a[i:j], b[i:j])

    def run(kernel, t):
        bounds = [n * k // t for k in range(t + 1)]
        tmps = [np.empty(chunk) for _ in range(t)]
        barrier = threading.Barrier(t + 1)

        def worker(k):
            barrier.wait()
            kernel(bounds[k], bounds[k + 1], tmps[k])

        ths = [threading.Thread(target=worker, args=(k,)) for k in range(t)]
        for th in ths:
            th.start()
        barrier.wait()
        t0 = time.perf_counter()
        for th in ths:
            th.join()
        return time.perf_counter() - t0

    out = {}
    for t in threads_list:
        best_triad = min(run(triad, t) for _ in range(reps))
        best_copy = min(run(copy, t) for _ in range(reps))
        out[t] = {"triad_gbs": 3 * n * 8 / best_triad / 1e9, "copy_gbs": 2 * n * 8 / best_copy / 1e9}
    del a, b, c
    return out


def measure_fma(threads_list: list, core, seconds: float = 0.1, reps: int = 3) -> dict:
    """Best of `reps` runs of the extension's register-only FMA loop at each thread count;
    the nominal per-core figure when the extension has no such function."""
    fn = getattr(core, "_fma_peak_gflops", None) if core is not None else None
    out = {}
    for t in threads_list:
        if fn is not None:
            try:
                out[t] = {"gflops": max(float(fn(t, seconds)) for _ in range(reps)), "source": "measured"}
                continue
            except Exception as e:  # noqa: BLE001
                src = f"nominal ({NOMINAL_FMA_GFLOPS_PER_CORE:g}/core; measuring failed: {_describe(e)})"
        else:
            src = f"nominal ({NOMINAL_FMA_GFLOPS_PER_CORE:g}/core from ANCHORS.md; _core has no _fma_peak_gflops)"
        out[t] = {"gflops": NOMINAL_FMA_GFLOPS_PER_CORE * t, "source": src}
    return out


# ----------------------------------------------------------------------------- timing


def time_interleaved(calls: dict, budget: float, min_reps: int, max_reps: int, ref_limit: float) -> dict:
    """Times the callables in rounds (the order rotates each round) so that machine noise
    hits them alike. Each keeps being called until it has spent `budget` seconds with at
    least `min_reps` samples, or 4 x budget, or `max_reps` samples. A reference whose one
    warm-up call exceeds `ref_limit` seconds is skipped. An exception ends that callable."""
    res = {k: {"samples": [], "error": None, "skipped": None} for k in calls}
    live = []
    for k, fn in calls.items():
        try:
            for _ in range(2):  # warm-up (first touch, lazy init); a second one when cheap
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
                if k == "reference" and dt > ref_limit:
                    res[k]["skipped"] = f"one call took {dt:.2f} s > --ref-limit {ref_limit:g} s"
                    break
                if dt > 0.05:
                    break
        except Exception as e:  # noqa: BLE001
            res[k]["error"] = _describe(e)
            continue
        if res[k]["skipped"] is None:
            live.append(k)

    def done(k):
        s = res[k]["samples"]
        tot = sum(s)
        return len(s) >= max_reps or (tot >= budget and len(s) >= min_reps) or tot >= 4 * budget

    gc_was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        rnd = 0
        while live:
            order = live[rnd % len(live):] + live[: rnd % len(live)]
            for k in order:
                try:
                    t0 = time.perf_counter()
                    calls[k]()
                    dt = time.perf_counter() - t0
                except Exception as e:  # noqa: BLE001
                    res[k]["error"] = _describe(e)
                    live.remove(k)
                    continue
                res[k]["samples"].append(dt)
                if done(k):
                    live.remove(k)
            rnd += 1
    finally:
        if gc_was:
            gc.enable()
    for r in res.values():
        s = r.pop("samples")
        r["n"] = len(s)
        r["median_ms"] = statistics.median(s) * 1e3 if s else None
        r["min_ms"] = min(s) * 1e3 if s else None
    return res


def _quiesce(limit: float = 0.5, step: float = 0.01) -> None:
    """Waits (at most `limit` seconds) until this process's helper threads are idle: a
    BLAS pool whose threads still spin after the reference phase would slow the next
    pyconv rounds. Idle means the process used under 20% of one core over `step`."""
    end = time.perf_counter() + limit
    while time.perf_counter() < end:
        c0, w0 = time.process_time(), time.perf_counter()  # CPU time of all threads
        time.sleep(step)
        if time.process_time() - c0 < 0.2 * (time.perf_counter() - w0):
            return


def _ratio(a, b):
    return a / b if (a is not None and b is not None and b > 0) else None


def bench_workload(mod_name, wl, threads_list, tc, roofs, args) -> list:
    """One row per thread count (or a single error row when setup fails)."""
    base = {
        "module": mod_name,
        "family": str(getattr(wl, "family", mod_name)),
        "name": str(getattr(wl, "name", "?")),
        "direction": str(getattr(wl, "direction", "?")),
        "metric": str(getattr(wl, "metric", "?")),
        "amount": _num(getattr(wl, "amount", None)),
        "notes": str(getattr(wl, "notes", "") or ""),
    }
    try:
        calls = wl.setup()
        if not isinstance(calls, dict):
            raise TypeError(f"setup() returned {type(calls).__name__}, expected a dict")
    except Exception as e:  # noqa: BLE001
        return [dict(base, threads=None, errors={"setup": _describe(e)}, skipped={})]
    calls = {k: calls.get(k) for k in IMPLS}
    if args.no_torch:
        calls["torch"] = None
    if args.no_reference:
        calls["reference"] = None
    rows = []
    sticky = {}  # a reference skipped as too slow stays skipped at the other thread counts
    try:
        for t in threads_list:
            tc.set(t)
            active = {k: f for k, f in calls.items() if f is not None and k not in sticky}
            # pyconv and torch share interleaved rounds; the NumPy reference runs in a phase
            # of its own afterwards, so its BLAS threads never run beside the timed rounds.
            res = time_interleaved({k: f for k, f in active.items() if k != "reference"},
                                   args.budget, args.min_repeats, args.max_repeats, args.ref_limit)
            if "reference" in active:
                res.update(time_interleaved({"reference": active["reference"]}, args.budget,
                                            args.min_repeats, args.max_repeats, args.ref_limit))
                _quiesce()
            row = dict(base, threads=t, errors={}, skipped=dict(sticky))
            for k in IMPLS:
                r = res.get(k)
                if r is None:
                    row["skipped"].setdefault(k, "not provided")
                    row[k + "_ms"] = row[k + "_min_ms"] = None
                    row[k + "_n"] = 0
                    continue
                row[k + "_ms"], row[k + "_min_ms"], row[k + "_n"] = r["median_ms"], r["min_ms"], r["n"]
                if r["error"]:
                    row["errors"][k] = r["error"]
                if r["skipped"]:
                    row["skipped"][k] = sticky[k] = r["skipped"]
            roof, unit = _roof(base["metric"], t, roofs)
            row["unit"], row["roof"] = unit, roof
            for k in ("pyconv", "torch", "reference"):
                thr = _throughput(base, row[k + "_ms"])
                row[k + "_throughput"] = thr
                row[k + "_pct_roof"] = 100.0 * thr / roof if (thr is not None and roof) else None
            row["ref_ratio"] = _ratio(row["reference_ms"], row["pyconv_ms"])
            row["torch_ratio"] = _ratio(row["torch_ms"], row["pyconv_ms"])
            one = next((r for r in rows if r["threads"] == 1), None)
            for k, key in (("pyconv", "scaling"), ("torch", "torch_scaling")):
                row[key] = _ratio(one[k + "_ms"], row[k + "_ms"]) if (one and t != 1) else None
            rows.append(row)
    finally:
        del calls
        gc.collect()
    return rows


def _num(x):
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _roof(metric, t, roofs):
    if metric == "flops":
        r = roofs["fma"].get(t)
        return (r["gflops"] if r else None), "GF/s"
    if metric == "bytes":
        r = roofs["bandwidth"].get(t)
        return (r["triad_gbs"] if r else None), "GB/s"
    return None, "?"


def _throughput(base, ms):
    if ms is None or ms <= 0 or base["amount"] is None or base["metric"] not in ("flops", "bytes"):
        return None
    return base["amount"] / (ms * 1e-3) / 1e9


# ----------------------------------------------------------------------------- output


def fmt_ms(x):
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    if x <= 0:
        return "0"
    return f"{x:.{min(6, 2 - math.floor(math.log10(x)))}f}"  # 3 significant digits, no exponent


def fmt(x, spec, suffix=""):
    return "-" if x is None else format(x, spec) + suffix


COLUMNS = ("family", "workload", "dir", "T", "pyconv ms", "min ms", "throughput", "% roof",
           "ref ms", "ref/pyconv", "torch ms", "torch/pyconv", "scaling", "note")
RIGHT = {"T", "pyconv ms", "min ms", "throughput", "% roof", "ref ms", "ref/pyconv",
         "torch ms", "torch/pyconv", "scaling"}


def row_cells(r) -> list:
    note = "; ".join([f"{k} error: {v}" for k, v in r["errors"].items()]
                     + [f"{k} skipped: {v}" for k, v in r["skipped"].items()
                        if v != "not provided"])
    if len(note) > 110:
        note = note[:107] + "..."
    if r["threads"] is None:  # setup failed
        return [r["family"], r["name"], r["direction"], "-"] + ["-"] * 9 + [note]
    return [
        r["family"], r["name"], r["direction"], str(r["threads"]),
        fmt_ms(r["pyconv_ms"]), fmt_ms(r["pyconv_min_ms"]),
        fmt(r["pyconv_throughput"], ".1f", " " + r["unit"]), fmt(r["pyconv_pct_roof"], ".0f", "%"),
        fmt_ms(r["reference_ms"]), fmt(r["ref_ratio"], ".2f", "x"),
        fmt_ms(r["torch_ms"]), fmt(r["torch_ratio"], ".2f", "x"),
        fmt(r["scaling"], ".2f", "x"), note,
    ]


def markdown_table(header, rows, right=()) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(header)]

    def line(cells):
        out = []
        for i, c in enumerate(cells):
            c = str(c)
            out.append(c.rjust(widths[i]) if header[i] in right else c.ljust(widths[i]))
        return "| " + " | ".join(out) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if h in right else ("-" * (w + 2))
                         for h, w in zip(header, widths)) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def summary_rows(rows) -> list:
    """Per family and thread count: rows timed, rows where pyconv beats torch, and the
    geometric means of torch/pyconv and of pyconv's % of roof."""
    groups = {}
    for r in rows:
        if r.get("threads") is not None and r.get("pyconv_ms") is not None:
            groups.setdefault((r["family"], r["threads"]), []).append(r)

    def gmean(xs):
        xs = [x for x in xs if x is not None and x > 0]
        return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else None

    out = []
    for (fam, t), rs in groups.items():
        vs = [r["torch_ratio"] for r in rs if r.get("torch_ratio") is not None]
        out.append([fam, str(t), str(len(rs)), f"{sum(v > 1 for v in vs)}/{len(vs)}" if vs else "-",
                    fmt(gmean(vs), ".2f", "x"), fmt(gmean([r.get("pyconv_pct_roof") for r in rs]), ".0f", "%")])
    return out


def print_roofs(roofs, out=sys.stdout):
    rows = []
    for t in sorted(roofs["fma"]):
        f, bw = roofs["fma"][t], roofs["bandwidth"].get(t)
        rows.append([str(t), f"{f['gflops']:.1f}", f["source"],
                     f"{bw['triad_gbs']:.1f}" if bw else "-", f"{bw['copy_gbs']:.1f}" if bw else "-"])
    print(f"## Roofs (memory: 3 x {roofs['bandwidth_mib']} MiB float64 arrays, best of 5)\n", file=out)
    print(markdown_table(["T", "FP32 FMA GFLOP/s", "source", "triad GB/s (roof)", "copy GB/s"], rows,
                         right={"T", "FP32 FMA GFLOP/s", "triad GB/s (roof)", "copy GB/s"}), file=out)
    print(file=out)


def machine_info(pyconv_mod) -> dict:
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "argv": sys.argv[1:],
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        info["affinity"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    info["cpu"] = ln.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if pyconv_mod is not None:
        try:
            info["pyconv"] = dict(pyconv_mod.kernel_info())
        except Exception as e:  # noqa: BLE001
            info["pyconv"] = {"error": _describe(e)}
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch"] = getattr(torch, "__version__", "?")
    else:
        try:
            from importlib.metadata import version

            info["torch"] = version("torch") + " (installed, not imported)"
        except Exception:  # noqa: BLE001
            info["torch"] = None
    try:
        import threadpoolctl

        info["threadpools"] = [{k: p.get(k) for k in ("user_api", "internal_api", "version", "num_threads")}
                               for p in threadpoolctl.threadpool_info()]
    except Exception:  # noqa: BLE001
        info["threadpools"] = None
    return info


def _jsonable(x):
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return _jsonable(x.item())
    return x


def write_plot(path, rows):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # noqa: BLE001
        print(f"--plot: matplotlib is not available ({_describe(e)}); no plot written", file=sys.stderr)
        return False
    rows = [r for r in rows if r.get("threads") is not None and r.get("roof")]
    if not rows:
        print("--plot: no rows with a roof to plot", file=sys.stderr)
        return False
    labels = [f"{r['family']} {r['name']} {r['direction']} T={r['threads']}" for r in rows]
    pc = [r["pyconv_pct_roof"] or 0.0 for r in rows]
    th = [r["torch_pct_roof"] or 0.0 for r in rows]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(10, 1.0 + 0.32 * len(rows)))
    ax.barh(y - 0.2, pc, height=0.4, label="pyconv", color="tab:blue")
    ax.barh(y + 0.2, th, height=0.4, label="torch", color="tab:orange")
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("% of roof (FMA peak x T for FLOP-bound rows, measured bandwidth at T for byte rows)")
    ax.axvline(100.0, color="grey", lw=0.8, ls="--")
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------- memory


def _proc_status_kib(field):
    try:
        with open("/proc/self/status") as f:
            for ln in f:
                if ln.startswith(field + ":"):
                    return int(ln.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _maxrss_kib():
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r // 1024 if sys.platform == "darwin" else r  # bytes on macOS, KiB on Linux


def _nbytes(obj) -> int:
    if obj is None:
        return 0
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, (tuple, list)):
        return sum(_nbytes(o) for o in obj)
    if hasattr(obj, "element_size") and hasattr(obj, "nelement"):  # a torch tensor
        return int(obj.element_size() * obj.nelement())
    return 0


def memory_child(spec: dict) -> dict:
    """Runs in a fresh process: builds the one workload's inputs, then calls one
    implementation a few times and reports its peak resident memory above the baseline."""
    _install_bench_package()
    mod, err = load_family(spec["module"], spec["dirs"])
    if mod is None:
        raise RuntimeError(err)
    wl = next((w for w in mod.workloads(spec["quick"])
               if (w.family, w.name, w.direction) == (spec["family"], spec["name"], spec["direction"])), None)
    if wl is None:
        raise RuntimeError(f"workload {spec['family']}/{spec['name']}/{spec['direction']} not found")
    fn = wl.setup().get(spec["impl"])
    if fn is None:
        return {"error": "not provided"}
    t = spec["threads"]
    try:
        import pyconv

        pyconv.set_num_threads(t)
    except Exception:  # noqa: BLE001
        pass
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(t)
    gc.collect()
    base_rss = _proc_status_kib("VmRSS")
    base_max = _maxrss_kib()
    reset = False
    try:  # Linux >= 4.0: "5" resets the peak RSS (VmHWM) to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        hwm = _proc_status_kib("VmHWM")
        reset = hwm is not None and base_rss is not None and hwm <= base_rss + 1024
        if reset:
            base_rss = hwm  # the RSS at the reset: VmHWM only grows from here
    except OSError:
        pass
    times, out_bytes = [], 0
    for _ in range(spec["calls"]):
        t0 = time.perf_counter()
        r = fn()
        times.append(time.perf_counter() - t0)
        out_bytes = _nbytes(r)
        del r
    if reset:
        peak, baseline, how = _proc_status_kib("VmHWM"), base_rss, "VmHWM after clear_refs"
    else:
        peak, baseline, how = _maxrss_kib(), base_max, "ru_maxrss"
    return {
        "baseline_mib": baseline / 1024, "peak_mib": peak / 1024,
        "peak_above_baseline_mib": (peak - baseline) / 1024,
        "output_mib": out_bytes / 2**20, "ru_maxrss_mib": _maxrss_kib() / 1024,
        "median_ms": statistics.median(times) * 1e3, "calls": len(times), "method": how,
    }


def run_memory(args, wls, dirs, threads) -> list:
    results = []
    impls = ["pyconv"] + ([] if args.no_torch else ["torch"])
    pat = args.memory.lower()
    if pat == ":largest":  # per family and direction, the workload with the most FLOPs/bytes
        best = {}
        for m, w in wls:
            key = (w.family, w.direction)
            if key not in best or (_num(w.amount) or 0) > (_num(best[key][1].amount) or 0):
                best[key] = (m, w)
        chosen = list(best.values())
    else:
        chosen = [(m, w) for m, w in wls if pat in w.name.lower()]
    if not chosen:
        print(f"--memory: no workload name contains '{args.memory}'", file=sys.stderr)
    for mod_name, w in chosen:
        for impl in impls:
            spec = {"module": mod_name, "dirs": dirs, "quick": args.quick, "family": w.family,
                    "name": w.name, "direction": w.direction, "impl": impl, "threads": threads,
                    "calls": args.memory_calls}
            print(f"memory: {w.family} {w.name} {w.direction} {impl} ...", file=sys.stderr, flush=True)
            rec = {"family": w.family, "name": w.name, "direction": w.direction, "impl": impl, "threads": threads}
            try:
                p = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-child", json.dumps(spec)],
                                   capture_output=True, text=True, timeout=args.memory_timeout)
                lines = [ln for ln in p.stdout.splitlines() if ln.startswith(MEMORY_TAG)]
                if lines:
                    rec.update(json.loads(lines[-1][len(MEMORY_TAG):]))
                else:
                    tail = (p.stderr or p.stdout).strip().splitlines()
                    rec["error"] = f"child exited {p.returncode}: " + (tail[-1] if tail else "no output")
            except subprocess.TimeoutExpired:
                rec["error"] = f"timed out after {args.memory_timeout} s"
            results.append(rec)
    return results


def print_memory(results):
    rows = []
    for r in results:
        if r.get("error"):
            rows.append([r["family"], r["name"], r["direction"], r["impl"], str(r["threads"])] + ["-"] * 5 + [r["error"]])
            continue
        rows.append([r["family"], r["name"], r["direction"], r["impl"], str(r["threads"]),
                     f"{r['baseline_mib']:.1f}", f"{r['peak_mib']:.1f}", f"{r['peak_above_baseline_mib']:.1f}",
                     f"{r['output_mib']:.1f}", fmt_ms(r["median_ms"]), r["method"]])
    hdr = ["family", "workload", "dir", "impl", "T", "baseline MiB", "peak MiB", "peak above baseline MiB",
           "output MiB", "ms/call", "method or error"]
    print("## Peak resident memory (fresh process per implementation)\n")
    print(markdown_table(hdr, rows, right={"T", "baseline MiB", "peak MiB", "peak above baseline MiB",
                                          "output MiB", "ms/call"}))
    print()


# ----------------------------------------------------------------------------- main


def parse_args(argv):
    p = argparse.ArgumentParser(description="pyconv benchmark suite (see bench/README.md)")
    p.add_argument("--quick", action="store_true", help="small shapes and budget (CI smoke run)")
    p.add_argument("--family", default=None, help="comma-separated family files to run "
                   f"(default: {','.join(DEFAULT_FAMILIES)})")
    p.add_argument("--filter", default=None, help="only workloads whose 'name dir' contains this (case-insensitive)")
    p.add_argument("--threads", default=None, help="comma-separated thread counts (default: 1,os.cpu_count())")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of timed calls per callable (default 0.3, --quick 0.05)")
    p.add_argument("--min-repeats", type=int, default=3)
    p.add_argument("--max-repeats", type=int, default=100)
    p.add_argument("--ref-limit", type=float, default=2.0,
                   help="skip the reference when one call takes longer (seconds)")
    p.add_argument("--bw-mib", type=int, default=None,
                   help="MiB per array for the bandwidth roof (default 256, --quick 64)")
    p.add_argument("--json", default=None, metavar="PATH")
    p.add_argument("--plot", default=None, metavar="PATH")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--memory", default=None, metavar="WORKLOAD_SUBSTRING",
                   help="peak resident memory of pyconv vs torch for the workloads whose name contains "
                   "this, or ':largest' (per family and direction); replaces the timing run")
    p.add_argument("--memory-calls", type=int, default=3)
    p.add_argument("--memory-timeout", type=float, default=600.0)
    p.add_argument("--path", action="append", default=[], metavar="DIR",
                   help="extra directory searched for family files before bench/ (repeatable)")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.budget is None:
        a.budget = 0.05 if a.quick else 0.3
    if a.bw_mib is None:
        a.bw_mib = 64 if a.quick else 256
    if a.budget <= 0 or a.bw_mib < 1 or a.min_repeats < 1 or a.max_repeats < a.min_repeats or a.memory_calls < 1:
        p.error("--budget, --bw-mib, --memory-calls must be positive and --max-repeats >= --min-repeats >= 1")
    try:
        ts = [int(x) for x in a.threads.split(",") if x.strip()] if a.threads else [1, os.cpu_count() or 1]
    except ValueError:
        p.error(f"--threads must be comma-separated integers, got {a.threads!r}")
    if not ts or min(ts) < 1:
        p.error("--threads needs counts >= 1")
    a.threads_list = sorted(set(ts))
    a.families = [f.strip() for f in a.family.split(",") if f.strip()] if a.family else list(DEFAULT_FAMILIES)
    return a


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.memory_child is not None:
        try:
            res = memory_child(json.loads(args.memory_child))
        except Exception as e:  # noqa: BLE001
            res = {"error": _describe(e)}
        print(MEMORY_TAG + json.dumps(_jsonable(res)), flush=True)
        return 0

    _install_bench_package()
    notes = []
    try:
        import pyconv
    except Exception as e:  # noqa: BLE001  (ImportError, or a broken build raising anything)
        print(f"error: pyconv is not importable ({_describe(e)}), so there is nothing to benchmark.\n"
              "Install it from the repository root first, as README.md says:\n"
              '    pip install ".[bench]"\n'
              "or, for a development checkout, build it in place with ./dev-build.sh and run\n"
              "    PYTHONPATH=. python bench/run.py ...", file=sys.stderr)
        return 2
    dirs = search_dirs(args.path)
    wls = collect_workloads(args.families, dirs, args.quick, notes)
    if args.filter:
        pat = args.filter.lower()
        wls = [(m, w) for m, w in wls if pat in f"{w.name} {w.direction}".lower()]

    if args.memory is not None:
        for n in notes:
            print("note: " + n, file=sys.stderr)
        results = run_memory(args, wls, dirs, max(args.threads_list))
        print_memory(results)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(_jsonable({"machine": machine_info(pyconv), "memory": results, "notes": notes}), f, indent=1)
        return 0 if any(not r.get("error") for r in results) else 1

    print("# pyconv benchmark\n")
    print(f"- {len(wls)} workloads from families {','.join(args.families)}; threads {args.threads_list}; "
          f"budget {args.budget:g} s per callable{'; quick' if args.quick else ''}")
    mi = machine_info(pyconv)
    print(f"- {mi.get('cpu', mi['machine'])}, {mi['cpu_count']} CPUs, Python {mi['python']}, "
          f"NumPy {mi['numpy']}, torch {mi['torch'] or 'not installed'}")
    if pyconv is not None:
        ki = mi.get("pyconv", {})
        print(f"- pyconv {ki.get('version', '?')}, isa {ki.get('isa', '?')}, openmp {ki.get('openmp', '?')}")
    print(flush=True)

    print("measuring roofs ...", file=sys.stderr, flush=True)
    roofs = {"bandwidth": measure_bandwidth(args.threads_list, args.bw_mib), "bandwidth_mib": args.bw_mib,
             "fma": measure_fma(args.threads_list, getattr(pyconv, "_core", None))}
    print_roofs(roofs)
    for t, f in roofs["fma"].items():
        if f["source"] == "measured" and f["gflops"] < 0.6 * NOMINAL_FMA_GFLOPS_PER_CORE * min(t, os.cpu_count() or 1):
            notes.append(f"the FMA peak measured at T={t} ({f['gflops']:.1f} GFLOP/s) is far below the nominal "
                         f"{NOMINAL_FMA_GFLOPS_PER_CORE:g}/core: the machine is probably busy, so timings are "
                         "slow and % of roof figures are relative to a depressed roof")

    tc = ThreadControl(pyconv, notes)
    all_rows = []
    try:
        fam_order = []
        by_fam = {}
        for i, (m, w) in enumerate(wls):
            print(f"[{i + 1}/{len(wls)}] {w.family} {w.name} {w.direction}", file=sys.stderr, flush=True)
            rows = bench_workload(m, w, args.threads_list, tc, roofs, args)
            all_rows += rows
            fam = rows[0]["family"]
            if fam not in by_fam:
                fam_order.append(fam)
                by_fam[fam] = []
            by_fam[fam] += rows
    except KeyboardInterrupt:
        notes.append("interrupted: the tables show the workloads finished so far")
    finally:
        tc.restore()

    for fam in fam_order:
        print(f"## {fam}\n")
        print(markdown_table(list(COLUMNS), [row_cells(r) for r in by_fam[fam]], RIGHT))
        print()
    summ = summary_rows(all_rows)
    if summ:
        print("## Summary\n")
        print(markdown_table(["family", "T", "rows", "pyconv faster than torch", "geomean torch/pyconv",
                              "geomean % roof"], summ,
                             right={"T", "rows", "pyconv faster than torch", "geomean torch/pyconv", "geomean % roof"}))
        print()
    if notes:
        print("## Notes\n")
        for n in notes:
            print("- " + n.replace("\n", "\n  "))
        print()
    sys.stdout.flush()

    roofs_json = {"bandwidth_mib": args.bw_mib,
                  "bandwidth_gbs": {str(t): v for t, v in roofs["bandwidth"].items()},
                  "fma_gflops": {str(t): v for t, v in roofs["fma"].items()}}
    if args.json:
        doc = {"machine": machine_info(pyconv), "roofs": roofs_json,
               "options": {k: v for k, v in vars(args).items() if k != "memory_child"},
               "rows": all_rows, "notes": notes}
        with open(args.json, "w") as f:
            json.dump(_jsonable(doc), f, indent=1)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot and write_plot(args.plot, all_rows):
        print(f"wrote {args.plot}", file=sys.stderr)
    ran = any(r.get("pyconv_n") for r in all_rows)
    return 0 if ran else 1


if __name__ == "__main__":
    sys.exit(main())
