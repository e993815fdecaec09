"""atheris harness of turboquant.train.zim.html_to_text, the HTML-to-text step of the ZIM reader.

Run: python tests/fuzz/atheris/fuzz_zim_text.py [libFuzzer options] [CORPUS_DIR]

Each input becomes an HTML string: the input bytes decoded as UTF-8 with replacement (as
ZimArticles decodes article content), or (when the first byte is odd) a page assembled from
tags, entities and markup fragments that the extractor treats specially. Contracts checked:
- html_to_text returns a str for every input and raises nothing, because one malformed
  article must not stop a training run.
- The text has no leading or trailing whitespace and no run of more than one blank line.
- Input without markup (no "<" and no "&") comes back with its whitespace collapsed to single
  spaces, as str.split() splits it.
"""

import sys

import atheris

import fuzz_values  # noqa: F401 (puts this checkout on sys.path)

with atheris.instrument_imports(include=["turboquant.train.zim", "html.parser", "_markupbase"]):
    from turboquant.train.zim import html_to_text

FRAGMENTS = [
    "<p>", "</p>", "<div>", "</div>", "<main>", "</main>", "<pre>", "</pre>", "<script>", "</script>",
    "<style>", "</style>", "<nav>", "</nav>", "<head>", "</head>", "<br>", "<br/>", "<hr>", "<img src=x>",
    "<li>", "</li>", "<table>", "<tr>", "<td>", "</td>", "<svg>", "</svg>", "<template>", "</template>",
    "<!--", "-->", "<!DOCTYPE html>", "<![CDATA[", "]]>", "<![if !IE]>", "<![endif]>", "<?xml?>", "<!",
    "<![", "</", "<a href='", "'>", "\">", "&amp;", "&lt;", "&#60;", "&#x3c;", "&#0;", "&#xd800;",
    "&#99999999;", "&nbsp", "&", "<", ">", " ", "\n", "\r\n", "\t", "\u00a0", "\u2028", "text", "\x00",
]


def build_page(fdp):
    """Return an HTML string assembled from FRAGMENTS and arbitrary text drawn from fdp."""
    parts = []
    for _ in range(fdp.ConsumeIntInRange(0, 24)):
        if fdp.ConsumeIntInRange(0, 3):
            parts.append(fdp.PickValueInList(FRAGMENTS))
        else:
            parts.append(fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 12)))
    return "".join(parts)


def TestOneInput(data):
    if data and data[0] & 1:
        html = build_page(atheris.FuzzedDataProvider(data[1:]))
    else:
        html = data.decode("utf-8", errors="replace")

    text = html_to_text(html)

    assert isinstance(text, str)
    assert text == text.strip(), repr(text)
    assert "\n\n\n" not in text, repr(text)
    if "<" not in html and "&" not in html:
        assert text == " ".join(html.split()), (html, text)


def main():
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
