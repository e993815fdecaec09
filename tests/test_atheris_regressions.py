"""Regression tests for the faults that the atheris harnesses in tests/fuzz/atheris/ found.

Each test replays the minimized input of one fault, written as plain Python values, so that
it runs without atheris.
"""

import pytest

from turboquant import chat


@pytest.mark.parametrize("format_chat", [chat.format_gemma3_chat, chat.format_gemma4_chat])
@pytest.mark.parametrize("role", [["user"], {"user": 1}, None, 3])
def test_chat_role_not_str_raises(format_chat, role):
    # An unhashable role (a list) used to raise "TypeError: unhashable type: 'list'".
    with pytest.raises(ValueError, match=r"messages\[0\]\['role'\] must be a str"):
        format_chat([{"role": role, "content": "hello"}])


@pytest.fixture(scope="module")
def model():
    from turboquant import Model

    return Model.load(threads=1, ctx=64)


@pytest.mark.parametrize("value", [[1], "many", 3])
def test_completion_ignores_max_completion_tokens(model, value):
    # A completion request that sent max_completion_tokens (declared for chat only) had it read
    # as an undeclared extra field: a list made min() raise TypeError, so the server sent a 500.
    pytest.importorskip("fastapi")
    from turboquant.server import app, schemas

    body = schemas.CompletionRequest.model_validate({"prompt": "Hello", "max_completion_tokens": value})
    prompt_ids, sampling = app.prepare_completion(model, body)
    assert sampling["max_tokens"] == 64 - len(prompt_ids)


def test_chat_max_completion_tokens_wins(model):
    pytest.importorskip("fastapi")
    from turboquant.server import app, schemas

    body = schemas.ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 9, "max_completion_tokens": 5})
    _, sampling = app.prepare_chat(model, body)
    assert sampling["max_tokens"] == 5


@pytest.mark.parametrize(
    "html, expected",
    [
        ("a<![<p>b</p>c", "ab\n\nc"),  # minimized input: "<![" then a tag
        ("<p>x<![\x00 y>z</p>", "xz"),
        # A marked section that the parser recognizes gives the same text as before the fix.
        ("<p>a<![if !IE]>b<![endif]>c</p>", "abc"),
    ],
)
def test_html_to_text_bad_marked_section(html, expected):
    # Python's HTMLParser raised AssertionError ("expected name token") for "<![" followed by
    # something other than a keyword. HTML5 reads it as a bogus comment up to the next ">".
    from turboquant.train.zim import html_to_text

    assert html_to_text(html) == expected
