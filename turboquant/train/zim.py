"""Articles of a ZIM archive as plain text, and a resumable token stream over them.

``ZimArticles(path)`` opens a ZIM file with libzim (``pip install turboquant[train]``) and yields
its articles in entry index order: entries that are front articles with MIME type text/html.
Redirects, resources (CSS, images, scripts), metadata and HTML pages not marked as front articles
are skipped. The HTML becomes plain text with ``html_to_text``.

``TokenStream`` cuts the concatenated token ids of those articles into training sequences and
records its position as (entry index, token offset inside that entry's tokens), which a
checkpoint stores so a later run continues at the same token.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

__all__ = ["ZimArticles", "TokenStream", "html_to_text"]

# Elements whose text is not part of the article body.
_DROPPED = {"script", "style", "nav", "noscript", "head", "template", "svg", "button", "select", "iframe"}
# Elements that start a new paragraph, and those that start a new line.
_PARAGRAPH = {"p", "div", "section", "article", "main", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote",
              "ul", "ol", "dl", "table", "figure", "header", "footer", "aside", "hr"}
_LINE = {"br", "li", "tr", "dt", "dd", "caption", "figcaption"}
# Void elements never get an end tag, so they must not open a dropped region.
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _TextExtractor(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []      # text of the whole page
        self.main_parts: list[str] = []  # text inside <main>
        self.dropped_depth = 0
        self.pre_depth = 0
        self.main_depth = 0
        self.seen_main = False

    def _emit(self, text: str) -> None:
        self.parts.append(text)
        if self.main_depth:
            self.main_parts.append(text)

    def handle_starttag(self, tag, attrs):
        if tag in _VOID:
            if tag in ("br", "hr") and not self.dropped_depth:
                self._emit("\n" if tag == "br" else "\n\n")
            return
        if tag in _DROPPED or self.dropped_depth:
            self.dropped_depth += 1
            return
        if tag == "main":
            self.main_depth += 1
            self.seen_main = True
        if tag == "pre":
            self.pre_depth += 1
        if tag in _PARAGRAPH:
            self._emit("\n\n")
        elif tag in _LINE:
            self._emit("\n")

    def handle_endtag(self, tag):
        if tag in _VOID:
            return
        if self.dropped_depth:
            self.dropped_depth -= 1
            return
        if tag in _PARAGRAPH:
            self._emit("\n\n")
        elif tag in _LINE:
            self._emit("\n")
        if tag == "pre" and self.pre_depth:
            self.pre_depth -= 1
        if tag == "main" and self.main_depth:
            self.main_depth -= 1

    def parse_marked_section(self, i, report=1):
        # Python 3.11's parser raises AssertionError for "<![" followed by anything
        # but CDATA, IGNORE, INCLUDE, TEMP, RCDATA, if, else or endif. HTML5 reads such markup
        # as a bogus comment that ends at the next ">", so one odd page cannot stop a reader.
        try:
            return super().parse_marked_section(i, report)
        except AssertionError:
            return self.parse_bogus_comment(i, report)

    def handle_data(self, data):
        if self.dropped_depth:
            return
        if self.pre_depth:
            self._emit(data.replace("\r\n", "\n"))
        else:
            self._emit(re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    """Return the plain text of an HTML page, with paragraphs separated by one blank line.

    Text in script, style, nav, head and similar elements is dropped. When the page has a
    ``<main>`` element (as mdBook and most documentation generators write), only its text is
    kept, so menus and side bars outside it are left out. Whitespace is collapsed except inside
    ``<pre>``.
    """
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    text = "".join(parser.main_parts if parser.seen_main else parser.parts)
    lines = [line.strip() if not line.startswith(" ") else line.rstrip() for line in text.split("\n")]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _import_reader():
    try:
        from libzim.reader import Archive
    except ImportError as error:
        raise ImportError("reading ZIM files needs libzim; install it with: pip install 'turboquant[train]'") \
            from error
    return Archive


class ZimArticles:
    """The front articles of a ZIM file, as (entry index, title, plain text), in entry index order.

    Raises OSError when the file is missing and ValueError naming the file when it is not a
    readable ZIM archive.
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise OSError(f"ZIM file {self.path} does not exist")
        Archive = _import_reader()
        try:
            self._archive = Archive(str(self.path))
            self.entry_count = self._archive.entry_count
            self._front = self._front_articles()
        except RuntimeError as error:
            raise ValueError(f"{self.path} is not a valid ZIM file: {error}") from None

    def _front_articles(self):
        """Entry indices flagged as front articles, from the archive's title-ordered listing.

        libzim's Python reader has no per-entry flag, but writers of the current format (libzim 7
        and later) store the front articles' entry indices as little-endian uint32 values in the
        internal entry listing/titleOrdered/v1. Returns None for archives without it.
        """
        archive = self._archive
        for index in range(archive.entry_count, archive.all_entry_count):
            entry = archive._get_entry_by_id(index)
            if entry.path == "listing/titleOrdered/v1":
                data = bytes(entry.get_item().content)
                if len(data) % 4:
                    raise ValueError(f"{self.path} has a title listing of {len(data)} bytes, not a multiple of 4")
                indices = np.frombuffer(data, dtype="<u4")
                return frozenset(int(i) for i in indices if i < archive.entry_count)
        # NOTE: archives in the old namespace scheme have no such listing; every text/html entry
        # then counts as an article.
        return None

    def is_article(self, index: int) -> bool:
        """Return True when entry index is a front article (not a redirect) with MIME type text/html."""
        if self._front is not None and index not in self._front:
            return False
        entry = self._archive._get_entry_by_id(index)
        if entry.is_redirect:
            return False
        return entry.get_item().mimetype.split(";")[0].strip() == "text/html"

    def article(self, index: int) -> tuple[str, str]:
        """Return (title, plain text) of entry index."""
        try:
            item = self._archive._get_entry_by_id(index).get_item()
            html = bytes(item.content).decode("utf-8", errors="replace")
        except RuntimeError as error:
            raise ValueError(f"{self.path}: entry {index} cannot be read ({error}); the file may be truncated") \
                from None
        return item.title, html_to_text(html)

    def __iter__(self):
        return self.articles()

    def articles(self, start: int = 0):
        """Yield (entry index, title, text) of every article with entry index >= start."""
        for index in range(max(0, start), self.entry_count):
            try:
                is_article = self.is_article(index)
            except RuntimeError as error:
                raise ValueError(f"{self.path}: entry {index} cannot be read ({error}); the file may be truncated") \
                    from None
            if is_article:
                title, text = self.article(index)
                if text:
                    yield index, title, text


class TokenStream:
    """Training sequences cut from the tokens of a ZIM file's articles, with a resumable position.

    Each article contributes ``tokenize(title + "\\n\\n" + text + "\\n\\n")`` (without BOS); the
    articles are concatenated in entry index order. ``next_sequence(length)`` returns BOS followed
    by the next length - 1 tokens, crossing article boundaries. At the end of the archive it starts
    again at the first article and counts an epoch. ``position`` is (entry index, token offset in
    that entry) of the next token to use.
    """

    def __init__(self, articles: ZimArticles, tokenize, bos: int, position=(0, 0)):
        self.articles = articles
        self.tokenize = tokenize
        self.bos = int(bos)
        self.epoch = 0
        self._entry, self._offset = int(position[0]), int(position[1])
        if self._entry < 0 or self._offset < 0:
            raise ValueError(f"data position {position} is invalid; expected non-negative (entry, token)")
        self._iterator = None
        self._tokens: list[int] = []

    @property
    def position(self) -> tuple[int, int]:
        return self._entry, self._offset

    def _load_next_article(self, start: int) -> bool:
        """Find the first article with entry index >= start and load its tokens; False at the end."""
        for index, title, text in self.articles.articles(start):
            self._entry = index
            self._tokens = self.tokenize(f"{title}\n\n{text}\n\n")
            return True
        return False

    def next_sequence(self, length: int) -> list[int]:
        """Return BOS and the next length - 1 tokens, advancing the position."""
        if length < 2:
            raise ValueError(f"sequence length is {length}; pass at least 2")
        if not self._tokens:
            requested = self._entry
            if not self._load_next_article(requested):
                self._wrap()
            elif self._entry != requested:
                self._offset = 0  # the saved entry is no article of this file: start the next one
        sequence = [self.bos]
        while len(sequence) < length:
            if self._offset >= len(self._tokens):
                if not self._load_next_article(self._entry + 1):
                    self._wrap()
                self._offset = 0
                continue
            take = min(length - len(sequence), len(self._tokens) - self._offset)
            sequence.extend(self._tokens[self._offset:self._offset + take])
            self._offset += take
        return sequence

    def _wrap(self) -> None:
        self.epoch += 1
        self._offset = 0
        if not self._load_next_article(0):
            raise ValueError(f"{self.articles.path} has no article text to train on")
