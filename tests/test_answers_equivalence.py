"""Answer equivalence: normalization, fast paths, math-verify in a worker process."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from stopwise.answers import AnswerChecker, normalize
from stopwise.errors import ConfigError


@pytest.fixture(scope="module")
def checker():
    with AnswerChecker(timeout_s=10.0) as ch:
        yield ch


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("18.0", "18"),
        ("0.50", "0.5"),
        ("$18.00$", "18"),
        (" 1,000 ", "1000"),
        ("+7", "7"),
        ("\\text{East}.", "east"),
        ("\\dfrac{1}{2}", "1/2"),
        ("\\tfrac{3}{4}", "3/4"),
        ("\\frac12", "1/2"),
        ("50\\%", "50"),
        ("90^\\circ", "90"),
        ("90^{\\circ}", "90"),
        ("540 \\text{ meters}", "540"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
        ("\\boxed{5}", "5"),
        ("-0.0", "0"),
        ("", ""),
        ("  $ $ ", ""),
    ],
)
def test_normalize(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


def test_plain_numbers_never_reach_math_verify() -> None:
    with AnswerChecker() as ch:
        assert ch.equivalent_many([("18", "18.00"), ("2", "3"), ("-1/2", "-0.5"), ("7", "$7$")]) == [
            True,
            False,
            True,
            True,
        ]
        assert ch.n_math_verify == 0 and ch.n_worker_starts == 0


def test_close_numbers_written_exactly_are_different() -> None:
    """A relative tolerance is for rounded decimals against fractions, not for two exact values."""
    with AnswerChecker(use_math_verify=False) as ch:
        assert ch.equivalent_many([("1000000000", "1000000001"), ("1000000000", "1,000,000,000"),
                                   ("0.1234567891", "0.1234567892"), ("1/3", "0.33333333333"), ("2/3", "0.6666666667")]) == [
            False, True, False, True, True]


def test_missing_is_never_equivalent() -> None:
    with AnswerChecker(use_math_verify=False) as ch:
        assert not ch.equivalent(None, None)
        assert not ch.equivalent(None, "1")
        assert not ch.equivalent("", "")
        assert not ch.equivalent("$ $", "$ $")


def test_math_verify_equivalences(checker: AnswerChecker) -> None:
    pairs = [
        ("1/2", "\\frac{1}{2}"),
        ("\\frac{1}{2}", "0.5"),
        ("\\sqrt{4}", "2"),
        ("x^2+2x+1", "(x+1)^2"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\dfrac{\\pi}{2})"),
        ("x = 5", "5"),
        ("6√2", "6\\sqrt{2}"),
        ("\\sqrt{2}", "\\sqrt{3}"),
        ("x+1", "x+2"),
    ]
    assert checker.equivalent_many(pairs) == [True] * 7 + [False] * 2
    assert checker.math_verify_available
    assert checker.n_math_verify >= 4


def test_symmetric_and_cached(checker: AnswerChecker) -> None:
    assert checker.equivalent("\\sqrt{9}", "3.0") == checker.equivalent("3.0", "\\sqrt{9}") is True
    sent = checker.n_math_verify
    assert checker.equivalent_many([("3.0", "\\sqrt{9}")] * 3) == [True] * 3
    assert checker.n_math_verify == sent


def test_works_from_a_non_main_thread() -> None:
    # math-verify's own signal.alarm timeouts fail off the main thread; the worker process avoids that.
    # The worker is started from a thread here, and two threads then share it.
    results: list[object] = []

    def work(ch: AnswerChecker) -> None:
        try:
            results.append(ch.equivalent_many([("\\frac{2}{4}", "\\sqrt{1/4}"), ("\\pi", "3")]))
        except BaseException as exc:  # pragma: no cover - reported by the assert below
            results.append(exc)

    with AnswerChecker(timeout_s=10.0) as ch:
        threads = [threading.Thread(target=work, args=(ch,)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert results == [[True, False], [True, False]]
        assert ch.n_worker_starts == 1 and ch.n_timeouts == 0


def test_deadline_kills_worker_and_falls_back() -> None:
    ch = AnswerChecker(timeout_s=0.5)
    ch._hang_on = frozenset({"HANG"})  # test hook: the worker sleeps on this input
    try:
        t0 = time.monotonic()
        got = ch.equivalent_many([("HANG", "\\sqrt{2}"), ("\\sqrt{4}", "2"), ("HANG", "HANG")])
        elapsed = time.monotonic() - t0
        # the hung pair falls back to normalized equality; the next pair runs in a fresh worker
        assert got == [False, True, True]
        assert ch.n_timeouts == 1
        assert ch.n_worker_starts == 2
        assert elapsed < 30
        assert ch.equivalent("HANG", "\\sqrt{2}") is False  # cached, no second hang
        assert ch.n_timeouts == 1
    finally:
        ch.close()


def test_without_math_verify_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "math_verify" else real(name, *a))
    with pytest.warns(RuntimeWarning, match="math_verify is not installed"):
        ch = AnswerChecker()
    assert not ch.math_verify_available
    assert ch.equivalent("0.50", "1/2") and not ch.equivalent("\\sqrt{4}", "2")
    assert ch.n_worker_starts == 0


def test_normalized_only_checker() -> None:
    ch = AnswerChecker(use_math_verify=False)
    assert not ch.math_verify_available
    assert ch.equivalent("$18$", "18.0")
    assert not ch.equivalent("\\sqrt{4}", "2")
    assert ch.n_worker_starts == 0


def test_close_and_restart() -> None:
    ch = AnswerChecker()
    assert ch.equivalent("\\sqrt{16}", "4")
    ch.close()
    ch.close()  # idempotent
    assert ch.equivalent("\\sqrt{25}", "5")  # starts a fresh worker
    ch.close()
    assert ch.n_worker_starts == 2


@pytest.mark.parametrize("bad", [0, -1.0, "5"])
def test_bad_timeout(bad: object) -> None:
    with pytest.raises(ConfigError, match="timeout_s"):
        AnswerChecker(timeout_s=bad)  # type: ignore[arg-type]


def test_works_from_a_script_on_stdin_without_main_guard() -> None:
    # a multiprocessing spawn/forkserver worker would re-import this __main__ and fail
    script = (
        "from stopwise.answers import AnswerChecker\n"
        "ch = AnswerChecker()\n"
        "print(ch.equivalent('\\\\sqrt{4}', '2'), ch.math_verify_available)\n"
    )
    got = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stderr
    assert got.stdout.split() == ["True", "True"]
