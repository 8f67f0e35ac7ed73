"""Model profiles: detection from real chat templates and names, splitting, forcing, validation."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest

from stopwise.backends.probes import DEFAULT_FORCING
from stopwise.backends.profiles import (
    ModelProfile,
    ProfileError,
    ReasoningSplitter,
    detect_profile,
    load_profiles,
    split_reasoning,
)
from stopwise.errors import ConfigError

TEMPLATES = Path(__file__).parent / "data" / "chat_templates"
FAMILIES = ["deepseek-r1", "qwq", "qwen3", "gpt-oss", "gemma-thinking", "generic"]


@pytest.fixture(scope="module")
def profiles() -> dict[str, ModelProfile]:
    return load_profiles()


def unique_name() -> str:
    return f"mystery-model-{uuid.uuid4().hex[:8]}"


def stream(profile: ModelProfile, chunks: list[str]) -> tuple[str, str, list[tuple[str, str]]]:
    s = profile.splitter()
    pieces = [p for c in chunks for p in s.feed(c)] + s.flush()
    reasoning = "".join(t for k, t in pieces if k == "reasoning")
    content = "".join(t for k, t in pieces if k == "content")
    return reasoning, content, pieces


# ------------------------------------------------------------------ the table


def test_bundled_families(profiles):
    assert list(profiles) == FAMILIES
    for p in profiles.values():
        assert isinstance(p.splitter(), ReasoningSplitter)
        for kind in ("math", "multiple_choice", "short"):
            assert p.forcing(kind) and p.write_answer("X", kind).count("X") == 1


@pytest.mark.parametrize(
    ("family", "forcing", "suffix", "written"),
    [
        ("deepseek-r1", "\n</think>\n\n**Final Answer**\n\\boxed{", "}", "\\(\\boxed{42}\\)"),
        ("qwq", "\n</think>\n\n**Final Answer**\n\\boxed{", "}", "\\(\\boxed{42}\\)"),
        ("qwen3", "\n</think>\n\n**Final Answer**\n\\boxed{", "}", "\\boxed{42}"),
        ("gpt-oss", "<|end|><|start|>assistant<|channel|>final<|message|>\\boxed{", "}", "\\boxed{42}"),
        ("gemma-thinking", "<channel|>Final answer: $\\boxed{", "}$", "$\\boxed{42}$"),
        ("generic", "\n\nFinal answer: $\\boxed{", "}$", "$\\boxed{42}$"),
    ],
)
def test_math_forcing_and_answer(profiles, family, forcing, suffix, written):
    p = profiles[family]
    assert p.forcing() == p.forcing("math") == forcing
    assert p.answer_suffix() == suffix
    assert p.write_answer("42") == written


def test_generic_forcing_is_the_default_probe_string(profiles):
    assert profiles["generic"].forcing("math") == DEFAULT_FORCING


def test_multiple_choice_and_short(profiles):
    p = profiles["deepseek-r1"]
    assert p.forcing("multiple_choice") == "\n</think>\n\nThe answer is ("
    assert p.answer_suffix("multiple_choice") == ")."
    assert p.write_answer("C", "multiple_choice") == "The answer is (C)."
    assert p.answer_suffix("short") == "\n"
    with pytest.raises(ProfileError, match="no forcing for task kind 'code'"):
        p.forcing("code")


@pytest.mark.parametrize("family", FAMILIES)
def test_forced_answer_is_content(profiles, family):
    """Thinking, then the forcing string, then an answer: the answer lands in the content."""
    p = profiles[family]
    start = {"qwen3": p.think_open, "gemma-thinking": p.think_open, "gpt-oss": "<|channel|>analysis<|message|>"}
    start = start.get(family, "")  # R1 and QwQ: the prompt opened the thinking; generic: a plain model
    text = start + "Let me add 2 and 2." + p.forcing() + "4" + p.answer_suffix()
    reasoning, content = split_reasoning(p, text)
    if family == "generic":  # no thinking to close: the forced answer follows the text
        assert content == text
    else:
        assert reasoning == "Let me add 2 and 2." + ("\n" if p.forcing().startswith("\n") else "")
        assert content.endswith("4" + p.answer_suffix()) and "think>" not in content and "<|" not in content


@pytest.mark.parametrize(
    ("family", "markers"),
    [
        ("deepseek-r1", ("", "</think>")),
        ("qwq", ("", "</think>")),
        ("qwen3", ("<think>", "</think>")),
        ("gemma-thinking", ("<|channel>thought\n", "<channel|>")),
        ("gpt-oss", ("<|channel|>analysis<|message|>", "<|end|><|start|>assistant<|channel|>final<|message|>")),
        ("generic", ("<think>", "</think>")),
    ],
)
def test_raw_markers_read_back(profiles, family, markers):
    """Thinking and answer rejoined with the markers the model writes split back into the same parts."""
    p = profiles[family]
    assert p.raw_reasoning_markers() == markers
    assert p.thinks is (family != "generic")
    open_text, close_text = markers
    assert split_reasoning(p, open_text + "I add 2 and 2." + close_text + "4") == ("I add 2 and 2.", "4")


def test_thinking_switch(profiles):
    assert profiles["qwen3"].chat_kwargs() == {"enable_thinking": True}
    assert profiles["gemma-thinking"].chat_kwargs() == {"enable_thinking": True}
    assert profiles["deepseek-r1"].chat_kwargs() == {} and profiles["deepseek-r1"].request_extras() == {}
    assert profiles["gpt-oss"].chat_kwargs() == {"reasoning_effort": "medium"}
    assert profiles["gpt-oss"].request_extras() == {"reasoning_effort": "medium",
                                                    "chat_template_kwargs": {"reasoning_effort": "medium"}}
    kw = profiles["qwen3"].chat_kwargs()
    kw["enable_thinking"] = False  # a copy: the profile is unchanged
    assert profiles["qwen3"].chat_kwargs() == {"enable_thinking": True}


# ------------------------------------------------------------------ detection


@pytest.mark.parametrize(
    ("file", "family"),
    [
        ("deepseek-r1-distill-qwen-32b.jinja", "deepseek-r1"),
        ("qwq-32b.jinja", "qwq"),
        ("qwen3-0.6b.jinja", "qwen3"),
        ("gpt-oss-120b.jinja", "gpt-oss"),
        ("gemma-4.jinja", "gemma-thinking"),
    ],
)
def test_detect_from_real_template(profiles, file, family, caplog):
    template = (TEMPLATES / file).read_text(encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="stopwise.profiles"):
        assert detect_profile("local-model.gguf", template, profiles=profiles).name == family
        assert detect_profile(None, template).name == family
    assert not caplog.records


def test_templates_carry_what_the_profiles_say(profiles):
    """The vendored excerpts show the prompt-opening and the delimiters the table declares."""
    r1 = (TEMPLATES / "deepseek-r1-distill-qwen-32b.jinja").read_text(encoding="utf-8")
    assert "{{'<｜Assistant｜><think>\\n'}}" in r1 and profiles["deepseek-r1"].prompt_opens_thinking
    qwq = (TEMPLATES / "qwq-32b.jinja").read_text(encoding="utf-8")
    assert "'<|im_start|>assistant\\n<think>\\n'" in qwq and profiles["qwq"].prompt_opens_thinking
    qwen3 = (TEMPLATES / "qwen3-0.6b.jinja").read_text(encoding="utf-8")
    assert "{{- '<|im_start|>assistant\\n' }}" in qwen3 and not profiles["qwen3"].prompt_opens_thinking
    assert "enable_thinking is false" in qwen3
    gemma = (TEMPLATES / "gemma-4.jinja").read_text(encoding="utf-8")
    g = profiles["gemma-thinking"]
    assert "'<|channel>thought\\n<channel|>'" in gemma and g.think_open + g.think_close == "<|channel>thought\n<channel|>"
    oss = (TEMPLATES / "gpt-oss-120b.jinja").read_text(encoding="utf-8")
    assert '"<|start|>assistant<|channel|>final<|message|>"' in oss and "<|start|>assistant\n" in oss
    assert profiles["gpt-oss"].forcing().startswith("<|end|><|start|>assistant<|channel|>final<|message|>")


def test_non_thinking_template_is_generic(profiles, caplog):
    chatml = "{%- for m in messages %}{{'<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n'}}{%- endfor %}"
    with caplog.at_level(logging.WARNING, logger="stopwise.profiles"):
        assert detect_profile(unique_name(), chatml, profiles=profiles).name == "generic"
    assert len(caplog.records) == 1


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("deepseek-ai/DeepSeek-R1", "deepseek-r1"),
        ("deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "deepseek-r1"),
        ("DeepSeek-R1-Distill-Qwen-32B-Q4_K_M.gguf", "deepseek-r1"),
        ("r1-distill-qwen-7b", "deepseek-r1"),
        ("deepseek-r1:14b", "deepseek-r1"),
        ("deepseek-ai/DeepSeek-R1-0528-Qwen3-8B", "deepseek-r1"),
        ("Qwen/QwQ-32B", "qwq"),
        ("qwq-32b-q4_k_m.gguf", "qwq"),
        ("Qwen/Qwen3-8B", "qwen3"),
        ("qwen3:30b-a3b", "qwen3"),
        ("openai/gpt-oss-20b", "gpt-oss"),
        ("gpt-oss:120b", "gpt-oss"),
        ("google/gemma-4-31B-it", "gemma-thinking"),
    ],
)
def test_detect_from_name(profiles, model, family):
    assert detect_profile(model, profiles=profiles).name == family


def test_name_wins_over_template(profiles):
    template = (TEMPLATES / "qwen3-0.6b.jinja").read_text(encoding="utf-8")
    assert detect_profile("Qwen/QwQ-32B", template, profiles=profiles).name == "qwq"


def test_override_wins(profiles, tmp_path):
    template = (TEMPLATES / "gpt-oss-120b.jinja").read_text(encoding="utf-8")
    assert detect_profile("openai/gpt-oss-20b", template, override="qwq", profiles=profiles).name == "qwq"
    f = tmp_path / "mine.toml"
    f.write_text('[my-r1]\nextends = "deepseek-r1"\n[my-r1.forcing]\nmath = "\\n</think>\\n\\nANSWER: {answer}."\n'
                 '[my-r1.answer]\nmath = "ANSWER: {answer}."\n', encoding="utf-8")
    p = detect_profile("openai/gpt-oss-20b", template, override=str(f))
    assert p.name == "my-r1" and p.prompt_opens_thinking and p.forcing() == "\n</think>\n\nANSWER: "
    assert p.name_patterns == () and p.source == str(f)
    with pytest.raises(ProfileError, match="unknown model profile 'qwk'") as exc:
        detect_profile("x", override="qwk", profiles=profiles)
    assert "did you mean 'qwq'" in str(exc.value) and isinstance(exc.value, ConfigError)


def test_unknown_model_warns_once(profiles, caplog):
    name = unique_name()
    with caplog.at_level(logging.WARNING, logger="stopwise.profiles"):
        for _ in range(3):
            assert detect_profile(name, profiles=profiles).name == "generic"
        detect_profile(unique_name(), profiles=profiles)  # another name: its own warning
    records = [r for r in caplog.records if r.name == "stopwise.profiles"]
    assert len(records) == 2 and name in records[0].getMessage()
    assert all(r.levelno == logging.WARNING for r in records)


# ------------------------------------------------------------------ splitting


def test_r1_style_no_open_tag(profiles):
    r, c, pieces = stream(profiles["deepseek-r1"], ["Okay, 2+2", " is 4.\n</thi", "nk>\n\nThe answer", " is 4."])
    assert (r, c) == ("Okay, 2+2 is 4.\n", "\n\nThe answer is 4.")
    assert pieces == [("reasoning", "Okay, 2+2"), ("reasoning", " is 4.\n"), ("content", "\n\nThe answer"),
                      ("content", " is 4.")]


def test_r1_open_tag_written_by_the_model_is_dropped(profiles):
    r, c, _ = stream(profiles["deepseek-r1"], ["<th", "ink>\nHmm.", "</think>", "4"])
    assert (r, c) == ("\nHmm.", "4")


def test_r1_never_closing_is_all_reasoning(profiles):
    """An R1-style chain cut before ``</think>`` is all reasoning (a truncated chain has no answer yet)."""
    r, c, _ = stream(profiles["qwq"], ["Let me think", " about it. </th"])
    assert (r, c) == ("Let me think about it. </th", "")


def test_qwen3_style_open_tag_in_output(profiles):
    r, c, _ = stream(profiles["qwen3"], ["<", "think>\nFirst", " step.</thi", "nk>\n\n**Answer**", ": 4"])
    assert (r, c) == ("\nFirst step.", "\n\n**Answer**: 4")


def test_qwen3_thinking_off_is_all_content(profiles):
    r, c, _ = stream(profiles["qwen3"], ["The answer", " is 4."])
    assert (r, c) == ("", "The answer is 4.")
    r, c, _ = stream(profiles["qwen3"], ["  \n", "Just text with <think> inside"])
    assert (r, c) == ("", "  \nJust text with <think> inside")


def test_generic_opens_on_leading_think(profiles):
    assert split_reasoning(profiles["generic"], "\n<think>a</think>b") == ("a", "b")
    assert split_reasoning(profiles["generic"], "no tags at all") == ("", "no tags at all")
    assert split_reasoning(profiles["generic"], "<thi") == ("", "<thi")


def test_chunked_one_character_at_a_time(profiles):
    text = "<think>\nstep one\nstep two\n</think>\n\nfinal"
    for family in ("qwen3", "generic", "deepseek-r1"):
        r, c, _ = stream(profiles[family], list(text))
        assert (r, c) == ("\nstep one\nstep two\n", "\n\nfinal")


def test_harmony_channels(profiles):
    text = ("<|channel|>analysis<|message|>We need 2+2 = 4.<|end|>"
            "<|start|>assistant<|channel|>final<|message|>The answer is 4.<|return|>")
    p = profiles["gpt-oss"]
    assert split_reasoning(p, text) == ("We need 2+2 = 4.", "The answer is 4.")
    for size in (1, 3, 7):
        r, c, _ = stream(p, [text[i:i + size] for i in range(0, len(text), size)])
        assert (r, c) == ("We need 2+2 = 4.", "The answer is 4.")


def test_harmony_markers_split_across_chunks(profiles):
    chunks = ["<|chan", "nel|>analy", "sis<|mess", "age|>think", "ing<|e", "nd|><|start|>assis", "tant<|channel|>fi",
              "nal <|constrain|>json<|message|>", '{"a": 1}', "<|ret", "urn|>"]
    r, c, _ = stream(profiles["gpt-oss"], chunks)
    assert (r, c) == ("thinking", '{"a": 1}')


def test_harmony_commentary_is_not_the_answer(profiles):
    text = ("<|channel|>analysis<|message|>Use the tool.<|end|><|start|>assistant<|channel|>commentary "
            "to=functions.calc json<|message|>{\"x\": 2}<|call|>")
    assert split_reasoning(profiles["gpt-oss"], text) == ("Use the tool.{\"x\": 2}", "")


def test_harmony_without_markers_is_content(profiles):
    assert split_reasoning(profiles["gpt-oss"], "plain text <|not a marker") == ("", "plain text <|not a marker")


def test_gemma_thought_channel(profiles):
    p = profiles["gemma-thinking"]
    r, c, _ = stream(p, ["<|channel>thou", "ght\nI should add.", "<chan", "nel|>", "The answer is 4."])
    assert (r, c) == ("I should add.", "The answer is 4.")
    assert split_reasoning(p, "The answer is 4.") == ("", "The answer is 4.")


# ------------------------------------------------------------------ user files and validation


def write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "profiles.toml"
    f.write_text(text, encoding="utf-8")
    return f


GOOD = """
[mine]
name_patterns = ['my-model']
format = "tags"
think_open = "<reason>"
think_close = "</reason>"
prompt_opens_thinking = false
[mine.forcing]
math = "</reason>Answer: \\\\boxed{{answer}}"
[mine.answer]
math = "\\\\boxed{{answer}}"
"""


def test_user_file_adds_and_patches(tmp_path):
    f = write(tmp_path, GOOD + '\n[qwen3]\nchat_template_kwargs = { enable_thinking = false }\n'
                              '[qwen3.forcing]\nmath = "\\n</think>\\n\\n$\\\\boxed{{answer}}$"\n')
    ps = load_profiles(f)
    assert list(ps)[:2] == ["mine", "qwen3"] and set(ps) == {"mine", *FAMILIES}
    mine = ps["mine"]
    assert detect_profile("org/My-Model-7B", profiles=ps) is mine
    assert mine.forcing() == "</reason>Answer: \\boxed{" and mine.answer_suffix() == "}"
    assert split_reasoning(mine, "<reason>hm</reason>42") == ("hm", "42")
    q = ps["qwen3"]  # patched: the other keys and kinds stay
    assert q.chat_kwargs() == {"enable_thinking": False} and q.forcing() == "\n</think>\n\n$\\boxed{"
    assert q.forcing("multiple_choice") == "\n</think>\n\nThe answer is (" and q.name_patterns
    assert load_profiles()["qwen3"].chat_kwargs() == {"enable_thinking": True}  # bundled table untouched


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        (GOOD.replace("prompt_opens_thinking", "prompt_opens_thinkin"),
         ["unknown key 'prompt_opens_thinkin'", "profile 'mine'", "allowed keys:", "think_open", "did you mean"]),
        (GOOD.replace("Answer: \\\\boxed{{answer}}", "Answer: \\\\boxed{}"),
         ["forcing string for kind 'math' of profile 'mine' in", "has no place for the answer ({answer})"]),
        (GOOD.replace('math = "\\\\boxed{{answer}}"', 'math = "{answer} or {answer}"'),
         ["answer template for kind 'math' of profile 'mine'", "2 places for the answer ({answer})"]),
        (GOOD.replace("'my-model'", "'my-(model'"),
         ["profile 'mine'", "key 'name_patterns'", "bad regular expression 'my-(model'"]),
        (GOOD.replace('think_close = "</reason>"\n', ""),
         ["profile 'mine'", "missing required key 'think_close'"]),
        (GOOD.replace('format = "tags"', 'format = "xml"'), ["profile 'mine'", "key 'format'", "tags, harmony"]),
        (GOOD.replace("prompt_opens_thinking = false", 'prompt_opens_thinking = "no"'),
         ["profile 'mine'", "key 'prompt_opens_thinking' must be true or false"]),
        (GOOD.replace("[mine.answer]", "[mine.answer]\nshort = '{answer}'"),
         ["profile 'mine'", "'forcing' and 'answer' must name the same task kinds"]),
        (GOOD.replace("[mine]", '[mine]\nextends = "nope"'), ["profile 'mine'", "unknown profile 'nope'"]),
        ("[mine\nformat = 1", ["is not valid TOML"]),
        ("top = 1", ["'top' must be a profile table"]),
    ],
)
def test_bad_files_name_file_profile_and_key(tmp_path, text, needles):
    f = write(tmp_path, text)
    with pytest.raises(ProfileError) as exc:
        load_profiles(f)
    msg = str(exc.value)
    assert str(f) in msg
    for needle in needles:
        assert needle in msg


def test_missing_file_and_override_file_with_two_profiles(tmp_path, profiles):
    with pytest.raises(ProfileError, match="cannot read the model-profile file"):
        load_profiles(tmp_path / "absent.toml")
    f = write(tmp_path, GOOD + GOOD.replace("[mine", "[other"))
    with pytest.raises(ProfileError, match="exactly one profile"):
        detect_profile("m", override=str(f), profiles=profiles)


def test_profile_error_is_a_config_error():
    assert issubclass(ProfileError, ConfigError)
