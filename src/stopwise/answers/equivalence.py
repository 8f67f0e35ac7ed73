"""Decide whether two answer strings mean the same thing.

Two layers. :func:`normalize` is a plain string normalization that settles
most pairs at once (``"18.00"`` and ``"$18$"`` both become ``"18"``; two plain
numbers are compared numerically). What it cannot settle goes to math-verify
(``math_verify.parse`` + ``math_verify.verify``), which compares expressions
symbolically with sympy.

math-verify guards itself with ``signal.alarm``, which only works on the main
thread, and sympy can run for minutes on an adversarial expression. So
:class:`AnswerChecker` disables those timeouts and runs math-verify in a worker
*process* instead: a batch of pairs goes out in one message, results come back
one by one, and a pair that takes longer than ``timeout_s`` gets the worker
killed (it is restarted lazily) and falls back to normalized equality. This
works from any thread.

The worker is a plain ``python -c`` subprocess speaking JSON lines, not a
``multiprocessing`` child: ``spawn`` and ``forkserver`` re-import the caller's
``__main__``, which fails for ``python -`` and re-runs unguarded scripts, and
``fork`` is unsafe in threaded programs.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import queue
import re
import subprocess
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Iterable, Sequence
from fractions import Fraction
from typing import Any

from stopwise.answers.extract import _clean
from stopwise.errors import ConfigError

__all__ = ["AnswerChecker", "normalize"]

_log = logging.getLogger(__name__)

_UNIT_RES = (
    re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree|°"),
    re.compile(r"\\%|%"),
)
_SPACING_RE = re.compile(r"\\[!,;: ]|~")
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])")
_TEXT_RE = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox|mathbf)\s*\{([^{}]*)\}")
_NUM_THEN_UNIT_RE = re.compile(r"^([-+]?[\d.,/]+)\s*\\(?:text|mbox|mathrm)\s*\{\s*[A-Za-z][A-Za-z .]*\}$")
_FRAC_RE = re.compile(r"\\frac\s*\{\s*(-?\d+)\s*\}\s*\{\s*(\d+)\s*\}|\\frac\s*(\d)\s*(\d)")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_DECIMAL_RE = re.compile(r"(?<![\d.])(\d*)\.(\d+)(?![\d.])")
_NUMBER_RE = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?")


def _canon_decimal(m: re.Match[str]) -> str:
    whole, frac = m.group(1), m.group(2).rstrip("0")
    whole = whole or "0"
    return f"{whole}.{frac}" if frac else whole


def normalize(answer: str) -> str:
    """Plain normalized form of an answer, for exact comparison.

    Lower case; no whitespace, ``$``, ``\\text{}``, ``\\left``/``\\right``,
    LaTeX spacing, trailing period or leading ``+``; ``\\dfrac``/``\\tfrac``
    become ``\\frac`` and an integer ``\\frac{a}{b}`` becomes ``a/b``; percent
    and degree signs and a ``\\text{unit}`` after a number are dropped; numbers
    lose thousands commas and trailing decimal zeros.

    Parameters
    ----------
    answer : str

    Returns
    -------
    str
        Empty when nothing is left (an empty answer counts as missing).

    Examples
    --------
    >>> normalize("$18.00$")
    '18'
    >>> normalize("\\\\dfrac{1}{2}")
    '1/2'
    >>> normalize(" 1,000 ")
    '1000'
    >>> normalize("90^\\\\circ")
    '90'
    """
    s = _clean(str(answer))
    s = s.replace("{,}", ",").replace("π", "\\pi").replace("−", "-")
    m = _NUM_THEN_UNIT_RE.match(s)
    if m is not None:
        s = m.group(1)
    s = _LEFT_RIGHT_RE.sub("", s)
    s = _SPACING_RE.sub(" ", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    for rx in _UNIT_RES:
        s = rx.sub("", s)
    s = _TEXT_RE.sub(r"\1", s)
    s = re.sub(r"\s+", "", s).lower()
    s = s.strip("$").rstrip(".")
    if s.startswith("+"):
        s = s[1:]
    s = _FRAC_RE.sub(lambda m: f"{m.group(1) or m.group(3)}/{m.group(2) or m.group(4)}", s)
    if re.fullmatch(r"\{-?\d+/\d+\}", s):
        s = s[1:-1]
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    s = _DECIMAL_RE.sub(_canon_decimal, s)
    if s in ("-0", "-0/1"):
        s = "0"
    return s


def _as_number(norm: str) -> Fraction | None:
    """The value of a normalized plain number (``"-3"``, ``"0.5"``, ``"3/4"``), else None."""
    if not _NUMBER_RE.fullmatch(norm):
        return None
    try:
        return Fraction(norm)
    except (ValueError, ZeroDivisionError):
        return None


def _exact_decimal(x: Fraction) -> bool:
    """Whether ``x`` has a finite decimal expansion (its denominator has no prime but 2 and 5)."""
    d = x.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


def _numbers_equal(x: Fraction, y: Fraction) -> bool:
    if x == y:
        return True
    if _exact_decimal(x) and _exact_decimal(y):
        # both written exactly ("1000000001", "0.25"): different values, however close; the
        # tolerance is for a rounded decimal against a fraction ("0.3333333333" and "1/3")
        return False
    try:
        return math.isclose(float(x), float(y), rel_tol=1e-9, abs_tol=0.0)
    except OverflowError:
        return False


_UNICODE_MATH = (("π", "\\pi "), ("×", "\\times "), ("·", "\\cdot "), ("−", "-"), ("≤", "\\le "), ("≥", "\\ge "))


def _mv_form(answer: str) -> str:
    """What math-verify gets: the cleaned answer, plain-number commas removed, unicode as LaTeX."""
    s = _clean(answer)
    for u, latex in _UNICODE_MATH:
        s = s.replace(u, latex)
    s = re.sub(r"√\s*(\d+|[A-Za-z]|\{[^{}]*\})", lambda m: "\\sqrt{" + m.group(1).strip("{}") + "}", s)
    return s.replace(",", "") if _THOUSANDS_RE.fullmatch(s) else s


# --------------------------------------------------------------------------- worker process

_WORKER_CODE = "from stopwise.answers.equivalence import _worker_loop; _worker_loop()"


def _worker_loop() -> None:  # pragma: no cover - runs in the child process
    """Body of the math-verify worker (``python -c``), speaking JSON lines.

    First line out: ``{"ready": true}`` or ``{"error": "..."}``. Then each line
    in is a JSON list of ``[a, b]`` pairs (``null`` ends the loop) and one line
    out per pair: ``true``/``false``, or ``null`` when math-verify raised.
    ``sys.argv[1]`` is a JSON list of test-hook strings: a pair containing one
    makes the worker sleep, to exercise the parent's deadline.
    """
    # Results go to a private copy of stdout; anything else printed goes to stderr.
    out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    hang_on = frozenset(json.loads(sys.argv[1])) if len(sys.argv) > 1 else frozenset()
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled" notices
    warnings.simplefilter("ignore")
    try:
        from math_verify import parse, verify
    except Exception as exc:
        out.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
        return
    out.write(json.dumps({"ready": True}) + "\n")
    parsed: dict[str, list[Any]] = {}

    def _parse(s: str) -> list[Any]:
        got = parsed.get(s)
        if got is None:
            if len(parsed) > 20000:
                parsed.clear()
            got = parse(f"${s}$", parsing_timeout=None) or parse(s, parsing_timeout=None)
            parsed[s] = got
        return got

    for line in sys.stdin:
        request = json.loads(line)
        if request is None:
            return
        for a, b in request:
            if a in hang_on or b in hang_on:
                time.sleep(3600)
            try:
                pa, pb = _parse(a), _parse(b)
                ok: bool | None = bool(pa) and bool(pb) and bool(
                    verify(pa, pb, timeout_seconds=None) or verify(pb, pa, timeout_seconds=None)
                )
            except Exception:
                ok = None
            out.write(json.dumps(ok) + "\n")


def _pump(stream: Any, lines: queue.Queue[str | None]) -> None:
    """Copy the worker's output lines into a queue (``None`` at end of file)."""
    try:
        for line in stream:
            lines.put(line)
    except (OSError, ValueError):
        pass
    finally:
        lines.put(None)


def _kill_quietly(proc: subprocess.Popen[str]) -> None:
    try:
        if proc.poll() is None:
            proc.kill()
    except OSError:  # pragma: no cover
        pass


class _Worker:
    """One math-verify child process and the queue its answers arrive on."""

    def __init__(self, hang_on: frozenset[str]) -> None:
        import stopwise

        # the child must import this very stopwise, wherever the parent found it
        root = os.path.dirname(os.path.dirname(os.path.abspath(stopwise.__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_CODE, json.dumps(sorted(hang_on))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            encoding="utf-8",
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(
            target=_pump, args=(self.proc.stdout, self.lines), name="stopwise-math-verify-reader", daemon=True
        )
        self._reader.start()
        # a worker stuck in sympy must not outlive the interpreter that started it
        self._finalizer = weakref.finalize(self, _kill_quietly, self.proc)

    def send(self, obj: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def receive(self, timeout: float) -> Any:
        """Next message; raises ``queue.Empty`` on timeout and ``EOFError`` if the worker died."""
        line = self.lines.get(timeout=timeout)
        if line is None:
            raise EOFError("math-verify worker exited")
        return json.loads(line)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, *, graceful: bool) -> None:
        if graceful and self.alive():
            try:
                self.send(None)
                self.proc.wait(timeout=1.0)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
        self._finalizer()  # kills the process if it is still running
        try:
            self.proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:  # pragma: no cover - a killed process always exits
            pass
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        # the reader sees end of file once the process is gone; closing stdout under
        # its feet instead would break a blocked read (fatally so at interpreter exit)
        self._reader.join(timeout=2.0)
        if not self._reader.is_alive() and self.proc.stdout is not None:
            self.proc.stdout.close()


class AnswerChecker:
    """Answer equivalence: normalized strings, numbers, then math-verify in a worker process.

    Parameters
    ----------
    timeout_s : float, default 5.0
        Deadline for one pair in math-verify. On expiry the worker is killed
        (and restarted at the next need) and the pair falls back to normalized
        equality; :attr:`n_timeouts` counts these.
    use_math_verify : bool, default True
        ``False`` gives a purely normalized checker (no worker process ever).
    start_timeout_s : float, default 120.0
        How long to wait for a fresh worker to import math-verify.

    Attributes
    ----------
    math_verify_available : bool
        Whether pairs go to math-verify. ``False`` when disabled, when
        ``math_verify`` is not installed, or when the worker failed to import it.
    n_timeouts : int
        Pairs that hit the deadline.
    n_math_verify : int
        Pairs sent to math-verify (cache misses that the fast paths did not settle).
    n_worker_starts : int
        Worker processes started.

    Notes
    -----
    ``None`` (a missing answer) and answers that normalize to ``""`` are
    equivalent to nothing, not even to each other. Results are cached per
    unordered pair; math-verify is asked both ways round
    (``verify(a, b) or verify(b, a)``) so the relation is symmetric. The
    checker is thread-safe (one lock) and usable as a context manager; call
    :meth:`close` to stop the worker.

    Examples
    --------
    >>> with AnswerChecker(use_math_verify=False) as checker:
    ...     checker.equivalent("18", "18.00"), checker.equivalent("1/2", "0.5"), checker.equivalent(None, None)
    (True, True, False)
    """

    def __init__(self, timeout_s: float = 5.0, use_math_verify: bool = True, *, start_timeout_s: float = 120.0) -> None:
        if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
            raise ConfigError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        if not (isinstance(start_timeout_s, (int, float)) and start_timeout_s > 0):
            raise ConfigError(f"start_timeout_s must be a positive number of seconds, got {start_timeout_s!r}")
        self.timeout_s = float(timeout_s)
        self.start_timeout_s = float(start_timeout_s)
        self.use_math_verify = bool(use_math_verify)
        self.math_verify_available = self.use_math_verify and importlib.util.find_spec("math_verify") is not None
        if self.use_math_verify and not self.math_verify_available:
            warnings.warn(
                "math_verify is not installed; AnswerChecker falls back to normalized equality "
                "(pip install 'math-verify[antlr4_13_2]')",
                RuntimeWarning,
                stacklevel=2,
            )
        self.n_timeouts = 0
        self.n_math_verify = 0
        self.n_worker_starts = 0
        self._cache: dict[tuple[str, str], bool] = {}
        self._lock = threading.RLock()
        self._worker: _Worker | None = None
        self._hang_on: frozenset[str] = frozenset()  # test hook, see _worker_loop

    # ------------------------------------------------------------------ public

    def equivalent(self, a: str | None, b: str | None) -> bool:
        """Whether two answers are equivalent (one pair; see :meth:`equivalent_many`)."""
        return self.equivalent_many([(a, b)])[0]

    def equivalent_many(self, pairs: Iterable[tuple[str | None, str | None]]) -> list[bool]:
        """Equivalence of each pair, in order.

        Pairs settled by the cache, by normalized equality or by numeric
        comparison never reach math-verify; the rest go to the worker in one
        batch. Never raises for odd inputs: a pair math-verify cannot handle
        (error or deadline) counts as its normalized equality.

        Parameters
        ----------
        pairs : iterable of (str or None, str or None)

        Returns
        -------
        list of bool
        """
        pairs = list(pairs)
        out: list[bool | None] = [None] * len(pairs)
        with self._lock:
            todo: dict[tuple[str, str], list[int]] = {}
            for i, (a, b) in enumerate(pairs):
                if a is None or b is None:
                    out[i] = False
                    continue
                a, b = str(a), str(b)
                key = (a, b) if a <= b else (b, a)
                hit = self._cache.get(key)
                if hit is not None:
                    out[i] = hit
                    continue
                if key in todo:
                    todo[key].append(i)
                    continue
                fast = self._fast(a, b)
                if fast is None:
                    todo[key] = [i]
                else:
                    self._cache[key] = out[i] = fast
            if todo:
                keys = list(todo)
                results = self._math_verify(keys)
                for key, res in zip(keys, results):
                    self._cache[key] = res
                    for i in todo[key]:
                        out[i] = res
        return [bool(x) for x in out]

    def close(self) -> None:
        """Stop the worker process (a later call starts a new one)."""
        with self._lock:
            worker, self._worker = self._worker, None
            if worker is not None:
                worker.stop(graceful=True)

    def __enter__(self) -> AnswerChecker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        worker = getattr(self, "_worker", None)
        if worker is None:
            return
        try:
            if sys.is_finalizing():
                _kill_quietly(worker.proc)  # no joins or pipe closing while the interpreter shuts down
            else:
                worker.stop(graceful=False)
        except Exception:
            pass

    def __repr__(self) -> str:
        return (
            f"AnswerChecker(timeout_s={self.timeout_s}, use_math_verify={self.use_math_verify}, "
            f"math_verify_available={self.math_verify_available}, cached={len(self._cache)}, "
            f"n_timeouts={self.n_timeouts})"
        )

    # ------------------------------------------------------------------ internals

    def _fast(self, a: str, b: str) -> bool | None:
        """Verdict without math-verify, or None when math-verify must decide."""
        na, nb = normalize(a), normalize(b)
        if not na or not nb:
            return False
        if na == nb:
            return True
        xa, xb = _as_number(na), _as_number(nb)
        if xa is not None and xb is not None:
            return _numbers_equal(xa, xb)
        if not self.math_verify_available:
            return False
        return None

    def _start_worker(self) -> bool:
        msg: Any = None
        why = "the worker did not start in time or died"
        worker: _Worker | None = None
        try:
            worker = _Worker(self._hang_on)
            self.n_worker_starts += 1
            msg = worker.receive(self.start_timeout_s)
        except (OSError, EOFError, ValueError, queue.Empty) as exc:
            why = f"{why}: {type(exc).__name__}: {exc}" if str(exc) else why
        if isinstance(msg, dict) and msg.get("ready"):
            self._worker = worker
            return True
        if isinstance(msg, dict) and "error" in msg:
            why = str(msg["error"])
        if worker is not None:
            worker.stop(graceful=False)
        self.math_verify_available = False
        warnings.warn(
            f"math-verify worker unavailable ({why}); AnswerChecker falls back to normalized equality",
            RuntimeWarning,
            stacklevel=4,
        )
        return False

    def _kill_worker(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop(graceful=False)

    def _math_verify(self, keys: Sequence[tuple[str, str]]) -> list[bool]:
        """Verdicts for pairs the fast paths left open (fallback: normalized equality, i.e. False)."""
        results = [False] * len(keys)
        todo = list(range(len(keys)))
        while todo:
            if self._worker is None or not self._worker.alive():
                self._kill_worker()
                if not self.math_verify_available or not self._start_worker():
                    break
            worker = self._worker
            assert worker is not None
            self.n_math_verify += len(todo)
            done = 0
            try:
                worker.send([[_mv_form(keys[i][0]), _mv_form(keys[i][1])] for i in todo])
                for i in todo:
                    try:
                        res = worker.receive(self.timeout_s)
                    except queue.Empty:
                        self.n_timeouts += 1
                        _log.warning(
                            "math-verify exceeded %.1fs on %r vs %r; using normalized equality",
                            self.timeout_s,
                            *keys[i],
                        )
                        self._kill_worker()
                        done += 1  # the pair that hung keeps its fallback
                        break
                    results[i] = bool(res)
                    done += 1
                else:
                    todo = []
                    continue
            except (EOFError, OSError, ValueError):
                # the worker died (e.g. out of memory) on the current pair: skip it
                self._kill_worker()
                done += 1
            except BaseException:
                # interrupted mid-batch: the worker's pending answers would desynchronize it
                self._kill_worker()
                raise
            todo = todo[done:]
        return results
