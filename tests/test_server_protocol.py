import json

from stopwise.server import protocol as P


def test_chunk_template_equals_the_dict_chunk():
    for chat in (True, False):
        t = P.ChunkTemplate("cmpl-1", "m", chat)
        for text in ["plain", 'quote " and \\ backslash', "ünïcode\n\t", ""]:
            got = json.loads(t.sse(text)[len("data: "):])
            want = P.chat_chunk("cmpl-1", "m", text) if chat else P.completion_chunk("cmpl-1", "m", text)
            got.pop("created"), want.pop("created")
            assert got == want
            assert t.sse(text).endswith("\n\n")


def test_error_body_is_openai_shaped():
    body = P.error_body("bad", param="max_tokens")
    assert body == {"error": {"message": "bad", "type": "invalid_request_error", "param": "max_tokens", "code": None}}
