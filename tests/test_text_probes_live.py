"""Text-derived probes read live from a stream equal the ones the import derived from the whole text,
and the live driver takes the replay driver's decisions on the same real chains (R1, QwQ, R1-distill)."""

import asyncio

import numpy as np
import pytest

from stopwise.data import bundled_path

pytest.importorskip("tokenizers")

SETS = ("qwq_gsm8k", "r1_gsm8k", "dsq_gsm8k")


@pytest.mark.parametrize("name", SETS)
def test_streamed_scanner_finds_the_imported_probes(name):
    from stopwise.traces.io import read_trace_set
    from stopwise.traces.textprobes import TextProbeScanner
    from stopwise.traces.tokenize import Tokenizer

    tok = Tokenizer.qwen25()
    ts = read_trace_set(bundled_path(name))
    rows = ts.chains.select(["text", "n_tokens", "probe_position", "probe_answer", "probe_cue"]).slice(0, 40).to_pylist()
    for r in rows:
        pieces = tok.tokenize(r["text"]).pieces(r["text"])
        assert len(pieces) == r["n_tokens"]
        sc, got, asked = TextProbeScanner(), {}, 0
        for p in pieces:  # ask each position as soon as the scanner says it is final, as the live driver does
            sc.feed(p)
            while asked < len(pieces) and sc.ready(asked):
                hit = sc.probe_at(asked)
                if hit:
                    got[asked] = hit
                asked += 1
        sc.close()
        for pos in range(asked, len(pieces) + 1):
            hit = sc.probe_at(pos)
            if hit:
                got[pos] = hit
        want = {p: (c, a) for p, c, a in zip(r["probe_position"], r["probe_cue"], r["probe_answer"])}
        assert got == want


def test_scanner_waits_for_a_cue_to_be_complete():
    from stopwise.traces.textprobes import STREAM_LOOKAHEAD, TextProbeScanner

    sc = TextProbeScanner()
    for p in ["The answer is 7.", " Let", " me"]:
        sc.feed(p)
    assert not sc.ready(1)  # "Let me" may still become "Let me check": not final yet
    sc.feed(" check")
    sc.feed(" " * STREAM_LOOKAHEAD)
    assert sc.ready(1) and sc.probe_at(1) == ("check", "7")


@pytest.mark.parametrize("name,family", [("qwq_gsm8k", "first_candidate"), ("r1_gsm8k", "answer_convergence")])
def test_live_driver_over_streamed_text_takes_the_replay_decisions(name, family):
    """TextProbeChain over the trace backend's stream (token texts, no logged probes) against the
    reference replay of the logged probes: the same stop position and answer class on every chain."""
    from stopwise.backends.base import Sampling
    from stopwise.engine.live import LiveDriver
    from stopwise.engine.text_chain import TextProbeChain
    from stopwise.engine.trace_backend import TraceStreamBackend
    from stopwise.policies.registry import prepare_family

    be = TraceStreamBackend(str(bundled_path(name)), rate=0)
    ts = be.ts
    fam = prepare_family(family, ts)
    res = fam.replay(ts)
    k = len(fam.grid) - 2  # an aggressive setting: most chains stop early
    qs = ts.questions.column("question").to_pylist()[:30]
    class_answers = ts.questions.column("class_answers").to_pylist()

    async def run(q):
        class Known:  # the set's own classes, so live answers compare with replay's
            def __init__(self):
                self.texts = list(class_answers[q] or [])

            def classify(self, a):
                from stopwise.answers import normalize

                if a is None or not str(a).strip():
                    return -1
                for i, t in enumerate(self.texts):
                    if t is not None and normalize(str(t)) == normalize(str(a)):
                        return i
                self.texts.append(a)
                return len(self.texts) - 1

            def text(self, c):
                return self.texts[c] if 0 <= c < len(self.texts) else None

        async def open_chain(i):
            return TextProbeChain(be, be.render_chat([{"role": "user", "content": qs[q]}]), Sampling(max_tokens=100000, seed=0))

        return await LiveDriver(open_chain, Known(), max_chains=1, family_name=family).run(fam.make(k, n_chains=1))

    outs = [asyncio.run(run(q)) for q in range(len(qs))]
    units = {int(q): u for u, q in enumerate(res.unit_question)}
    stopped = 0
    for q, out in enumerate(outs):
        u = units[q]
        assert out.tokens == res.tokens[u, k] and out.probe_tokens == res.probe_tokens[u, k] == 0
        assert out.answer == res.answer[u, k]
        stopped += int(out.tokens < res.tokens_full[u])
    assert stopped >= len(qs) // 3  # the comparison covers early stops, not only full chains
    assert np.all(res.probe_tokens[:, k] == 0)
