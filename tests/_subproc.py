"""Run risky pyconv calls in a child Python process, so that a crash, an abort from a
sanitizer or a hang fails one case instead of killing the test run.

Parent side: ``Worker`` owns one child process and sends it cases one at a time over a
pipe (JSON lines). The child announces ``BEGIN <id>`` before it runs a case and sends
the outcome after, so when the child dies the parent knows exactly which case killed
it; the next case starts a fresh child. ``Worker.run_many`` runs a batch this way and
returns every outcome, the crashes and hangs included, so one bad case cannot hide the
others.

Child side (``python _subproc.py --worker``): reads one request per line, runs it and
answers one line. A request is either

* ``{"id": ..., "code": "..."}``: Python source executed with ``np``, ``pyconv``,
  ``F`` (pyconv.functional), ``ref`` (pyconv.reference) and ``_core`` in scope; the
  variable ``result`` (if set and JSON-serialisable) comes back as the value; or
* ``{"id": ..., "call": "module:function", "args": {...}}``: imports ``module`` from
  this directory and calls ``function(**args)``; its return value comes back.

Outcomes: ``ok`` (with ``value``), ``raised`` (with the exception's class name, the
names of its base classes and the message), ``crash`` (the child died: signal or exit
status, plus the tail of its stderr, where faulthandler and the sanitizers write) or
``hang`` (no answer within the timeout; the child is killed).
"""
from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))

# The outcomes a bad argument may have. Anything else (a crash, a hang, SystemError,
# RuntimeError and its subclasses, a wrong result) is a defect.
ALLOWED_ERRORS = ("ValueError", "TypeError", "IndexError", "OverflowError")


@dataclass
class Outcome:
    id: str
    status: str                      # 'ok', 'raised', 'crash', 'hang'
    exc: Optional[str] = None        # exception class name when raised
    bases: List[str] = field(default_factory=list)  # MRO names when raised
    msg: str = ""
    value: Any = None
    detail: str = ""                 # crash/hang: exit status and stderr tail

    def allowed_error(self, allowed: Iterable[str] = ALLOWED_ERRORS) -> bool:
        """True when the case raised one of `allowed` (or a subclass of one) and nothing
        from the RuntimeError family (SystemError included)."""
        if self.status != "raised":
            return False
        if "RuntimeError" in self.bases or "SystemError" in self.bases:
            return False
        return any(a in self.bases for a in allowed)

    def describe(self) -> str:
        if self.status == "ok":
            return f"[{self.id}] ok -> {self.value!r}"
        if self.status == "raised":
            return f"[{self.id}] raised {self.exc}: {self.msg[:300]}"
        return f"[{self.id}] {self.status.upper()}: {self.detail}"


def _package_root() -> str:
    """The directory that holds the `pyconv` package the parent imported, so the child
    imports the very same build (in-place, installed or sanitized)."""
    import pyconv

    return os.path.dirname(os.path.dirname(os.path.abspath(pyconv.__file__)))


def under_asan() -> bool:
    return "asan" in os.environ.get("LD_PRELOAD", "") or os.environ.get("PYCONV_SANITIZED") == "1"


class Worker:
    """One child process that runs cases; restarted after a crash or a hang."""

    def __init__(self, timeout: float = 30.0, env: Optional[dict] = None):
        self.timeout = timeout
        self.extra_env = env or {}
        self.proc: Optional[subprocess.Popen] = None
        self._stderr = None
        self._buf = b""
        self.started = 0

    # -- process management -------------------------------------------------
    def _start(self) -> None:
        env = dict(os.environ)
        root = _package_root()
        env["PYTHONPATH"] = os.pathsep.join([root, HERE] + [p for p in [env.get("PYTHONPATH")] if p])
        env.update(self.extra_env)
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-X", "faulthandler", os.path.join(HERE, "_subproc.py"), "--worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, cwd=root, env=env,
        )
        self._buf = b""
        self.started += 1

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.proc.stdin.close()
            except Exception:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def _stderr_tail(self, limit: int = 4000) -> str:
        if self._stderr is None:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        text = self._stderr.read().decode("utf-8", "replace")
        # The sanitizers' first line says what went wrong; the stack after it can be long.
        key = [ln for ln in text.splitlines()
               if "runtime error:" in ln or "ERROR: AddressSanitizer" in ln or "Fatal Python error" in ln]
        head = "\n".join(key[:5])
        return (head + "\n...\n" if head else "") + text[-limit:]

    def _readline(self, deadline: float) -> Optional[bytes]:
        """One protocol line, or None when the child died or the deadline passed."""
        out = self.proc.stdout
        fd = out.fileno()
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            sel = selectors.DefaultSelector()
            sel.register(fd, selectors.EVENT_READ)
            ready = sel.select(timeout=remaining)
            sel.close()
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    # -- running cases --------------------------------------------------------
    def run(self, case_id: str, code: Optional[str] = None, call: Optional[str] = None,
            args: Optional[dict] = None, timeout: Optional[float] = None) -> Outcome:
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                self.close()
            self._start()
        req = {"id": case_id}
        if code is not None:
            req["code"] = code
        else:
            req["call"] = call
            req["args"] = args or {}
        deadline = time.monotonic() + (timeout or self.timeout)
        try:
            self.proc.stdin.write((json.dumps(req) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return self._dead(case_id, "child died before the case was sent")
        began = False
        while True:
            line = self._readline(deadline)
            if line is None:
                if self.proc.poll() is None and time.monotonic() >= deadline:
                    self._kill()
                    return Outcome(case_id, "hang",
                                   detail=f"no answer within {timeout or self.timeout:.0f} s "
                                          f"(began={began})\n" + self._stderr_tail())
                return self._dead(case_id, f"began={began}")
            text = line.decode("utf-8", "replace")
            if text.startswith("BEGIN "):
                began = text[6:] == case_id
                continue
            msg = json.loads(text)
            if msg.get("id") != case_id:
                continue
            return Outcome(case_id, msg["status"], exc=msg.get("exc"), bases=msg.get("bases", []),
                           msg=msg.get("msg", ""), value=msg.get("value"))

    def _dead(self, case_id: str, note: str) -> Outcome:
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._kill()
        rc = self.proc.returncode
        how = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exit status {rc}"
        detail = f"child {how} while running this case ({note})\n" + self._stderr_tail()
        self.close()
        return Outcome(case_id, "crash", detail=detail)

    def run_many(self, cases, timeout: Optional[float] = None) -> List[Outcome]:
        """cases: iterable of (id, code) pairs or dicts with id/code/call/args."""
        outcomes = []
        for case in cases:
            if isinstance(case, dict):
                outcomes.append(self.run(case["id"], code=case.get("code"), call=case.get("call"),
                                         args=case.get("args"), timeout=timeout))
            else:
                cid, code = case
                outcomes.append(self.run(cid, code=code, timeout=timeout))
        return outcomes


def assert_all_rejected(outcomes: List[Outcome], allowed: Iterable[str] = ALLOWED_ERRORS) -> None:
    """Every outcome must be one of the allowed exceptions; the message lists each
    case that crashed, hung, returned or raised something else."""
    allowed = tuple(allowed)
    bad = [o.describe() for o in outcomes if not o.allowed_error(allowed)]
    assert not bad, f"{len(bad)} of {len(outcomes)} cases not rejected with {allowed}:\n" + "\n".join(bad)


# ============================ child side ============================

def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)[:200]


def _child_main() -> None:
    # The protocol goes to a private copy of stdout; fd 1 itself is pointed at stderr so
    # that anything a library prints cannot corrupt the protocol.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    if not under_asan():
        # A cap on the address space turns an unexpectedly huge allocation into a
        # MemoryError instead of swamping the shared machine (ASan needs a huge
        # virtual reservation, so not under it).
        try:
            import resource

            cap = 6 << 30
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        except Exception:
            pass

    import importlib

    import numpy as np

    import pyconv
    import pyconv.functional as F
    import pyconv.reference as ref
    from pyconv import _core

    base_ns = {"np": np, "pyconv": pyconv, "F": F, "ref": ref, "_core": _core}
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        req = json.loads(line)
        cid = req["id"]
        proto.write(f"BEGIN {cid}\n")
        proto.flush()
        try:
            if "code" in req:
                ns = dict(base_ns)
                exec(compile(req["code"], f"<case {cid}>", "exec"), ns)
                value = ns.get("result")
            else:
                mod_name, fn_name = req["call"].split(":")
                fn = getattr(importlib.import_module(mod_name), fn_name)
                value = fn(**req.get("args", {}))
            reply = {"id": cid, "status": "ok", "value": _jsonable(value)}
        except BaseException as e:  # noqa: BLE001 - every outcome is reported
            reply = {"id": cid, "status": "raised", "exc": type(e).__name__,
                     "bases": [c.__name__ for c in type(e).__mro__], "msg": str(e)[:2000]}
        proto.write(json.dumps(reply) + "\n")
        proto.flush()


if __name__ == "__main__" and "--worker" in sys.argv:
    _child_main()
