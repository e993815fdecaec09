#!/usr/bin/env python3
"""Build a ZIM archive from directories of HTML pages, for training Medusa heads.

Every *.html file under each SOURCE directory becomes a front article (path
``<source name>/<relative path>``, title from its <title>), added in sorted path order so the
archive is the same on every run. Pages listed in --skip (by file name) are left out. The
defaults drop the one-page print versions and tables of contents that mdBook writes, because
they repeat the other pages. Needs libzim (pip install 'turboquant[train]').

Example (the training data of docs/mtp.md):

    python scripts/make_zim.py --output rust-docs.zim \\
        --skip-containing "is no longer distributed with Rust" \\
        ~/.rustup/toolchains/stable-x86_64-unknown-linux-gnu/share/doc/rust/html/{book,reference,cargo,rustc}
"""

import argparse
import random
import re
import sys
from pathlib import Path

from libzim.writer import Creator, Hint, Item, StringProvider

DEFAULT_SKIP = ["print.html", "toc.html", "404.html", "searchindex.html"]


class HtmlPage(Item):
    def __init__(self, path: str, title: str, html: str):
        super().__init__()
        self._path = path
        self._title = title
        self._html = html

    def get_path(self):
        return self._path

    def get_title(self):
        return self._title

    def get_mimetype(self):
        return "text/html"

    def get_contentprovider(self):
        return StringProvider(self._html)

    def get_hints(self):
        return {Hint.FRONT_ARTICLE: True}


def page_title(html: str, fallback: str) -> str:
    match = re.search(r"<title[^>]*>(.*?)</title>", html, re.IGNORECASE | re.DOTALL)
    title = re.sub(r"\s+", " ", match.group(1)).strip() if match else ""
    return title or fallback


def collect_pages(sources, skip):
    pages = []
    for source in sources:
        root = Path(source).expanduser().resolve()
        if not root.is_dir():
            raise SystemExit(f"make_zim: source {root} is not a directory")
        for file in sorted(root.rglob("*.html")):
            if file.name in skip:
                continue
            pages.append((f"{root.name}/{file.relative_to(root).as_posix()}", file))
    return pages


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", metavar="SOURCE", help="directory of HTML pages")
    parser.add_argument("--output", required=True, metavar="FILE", help="ZIM file to write")
    parser.add_argument("--title", default="HTML documentation", help="archive title metadata")
    parser.add_argument("--skip", action="append", default=None, metavar="NAME",
                        help=f"file name to leave out (repeatable; default: {', '.join(DEFAULT_SKIP)})")
    parser.add_argument("--skip-containing", action="append", default=[], metavar="TEXT",
                        help="leave out pages whose HTML contains TEXT, such as a stub notice (repeatable)")
    parser.add_argument("--max-pages", type=int, metavar="N", help="stop after N pages")
    parser.add_argument("--shuffle", type=int, metavar="SEED",
                        help="store the pages in a random order drawn with SEED: each path gets its rank as a "
                             "prefix (00042/book/ch01.html), so that readers going by entry index, such as "
                             "training, see the sources mixed instead of one directory after another")
    args = parser.parse_args(argv)

    pages = collect_pages(args.sources, set(args.skip or DEFAULT_SKIP))
    if args.shuffle is not None:
        random.Random(args.shuffle).shuffle(pages)
        width = len(str(len(pages)))
        pages = [(f"{rank:0{width}d}/{path}", file) for rank, (path, file) in enumerate(pages)]
    if args.max_pages is not None:
        pages = pages[:args.max_pages]
    if not pages:
        raise SystemExit("make_zim: no HTML pages found")
    output = Path(args.output)
    output.unlink(missing_ok=True)
    skipped = 0
    with Creator(str(output)).config_indexing(False, "eng") as creator:
        creator.add_metadata("Title", args.title)
        creator.add_metadata("Language", "eng")
        creator.add_metadata("Description", f"{len(pages)} HTML pages from {', '.join(args.sources)}")
        for path, file in pages:
            html = file.read_text(encoding="utf-8", errors="replace")
            if any(text in html for text in args.skip_containing):
                skipped += 1
                continue
            creator.add_item(HtmlPage(path, page_title(html, path), html))
        creator.set_mainpath(pages[0][0])
    print(f"wrote {output}: {len(pages) - skipped} pages ({skipped} skipped by --skip-containing), "
          f"{output.stat().st_size} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
