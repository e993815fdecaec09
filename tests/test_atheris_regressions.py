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
