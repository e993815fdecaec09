"""Pure-Python helpers of benchmarks/bench_kv_cache.py: configuration syntax, llama.cpp KV sizes, --write."""

import importlib.util
import pathlib

import pytest

from turboquant.model import DEFAULT_KV_RECENT_F16, DEFAULT_KV_SINK_F16

ROOT = pathlib.Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_kv_cache", ROOT / "benchmarks" / "bench_kv_cache.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

# Lines that llama-cpp-python 0.3.36 logged for Gemma 3 270M with a q8_0 cache, n_ctx 2100
# (padded to 2304 cells) and swa_full=False: 3 global layers, 15 sliding-window layers.
LLAMA_LOG_Q8_0 = """\
llama_kv_cache_iswa: creating non-SWA KV cache, size = 2304 cells
llama_kv_cache:        CPU KV buffer size =     3.59 MiB
llama_kv_cache: size =    3.59 MiB (  2304 cells,   3 layers,  1/1 seqs), K (q8_0):    1.79 MiB, V (q8_0):    1.79 MiB
llama_kv_cache_iswa: creating     SWA KV cache, size = 1024 cells
llama_kv_cache: size =    7.97 MiB (  1024 cells,  15 layers,  1/1 seqs), K (q8_0):    3.98 MiB, V (q8_0):    3.98 MiB
"""
GGML_F16, GGML_Q8_0 = 1, 8


def test_config_single_name_codec():
    config = bench.parse_config("tq3")
    assert config["cache_type_k"] == "tq3"
    assert config["cache_type_v"] == "tq3"
    # Without :RECENT and :SINK, codec configurations get Model.load's f16 window and sink.
    assert config["kv_recent_f16"] == DEFAULT_KV_RECENT_F16
    assert config["kv_sink_f16"] == DEFAULT_KV_SINK_F16


def test_config_block_type_has_no_window():
    config = bench.parse_config("q8_0")
    assert (config["cache_type_k"], config["cache_type_v"]) == ("q8_0", "q8_0")
    assert config["kv_recent_f16"] == 0
    assert config["kv_sink_f16"] == 0


def test_config_pair_with_recent():
    config = bench.parse_config("tq3.5/tq3:64")
    assert (config["cache_type_k"], config["cache_type_v"]) == ("tq3.5", "tq3")
    assert config["kv_recent_f16"] == 64
    assert config["kv_sink_f16"] == DEFAULT_KV_SINK_F16


def test_config_pair_with_recent_and_sink():
    config = bench.parse_config("tq3.5/tq3:32:8")
    assert config["kv_recent_f16"] == 32
    assert config["kv_sink_f16"] == 8


def test_config_recent_type():
    from turboquant.model import DEFAULT_KV_RECENT_TYPE

    assert bench.parse_config("tq3.5/tq2.5:128:4:f16")["kv_recent_type"] == "f16"
    assert bench.parse_config("tq3.5/tq2.5:128:4:q8_0")["kv_recent_type"] == "q8_0"
    assert bench.parse_config("tq3.5/tq2.5")["kv_recent_type"] == DEFAULT_KV_RECENT_TYPE
    assert bench.recent_label(bench.parse_config("tq3.5/tq2.5:128:4:q8_0")) == "128 q8_0"
    assert bench.recent_label(bench.parse_config("tq3.5/tq2.5:128:4:f16")) == "128"
    assert bench.recent_label(bench.parse_config("f16")) == "0"


def test_median_row_takes_median_speeds():
    runs = [{"label": "f16/f16", "prefill": 100.0, "decode": 50.0, "rss": 1.0},
            {"label": "f16/f16", "prefill": 300.0, "decode": 40.0, "rss": 2.0},
            {"label": "f16/f16", "prefill": 200.0, "decode": 60.0, "rss": 3.0}]
    row = bench.median_row(runs)
    assert (row["prefill"], row["decode"], row["rss"]) == (200.0, 50.0, 1.0)


def test_rounds_checked():
    with pytest.raises(SystemExit):
        bench.main(["--rounds", "0"])


def test_config_mixed_pair_default_recent():
    config = bench.parse_config("q8_0/tq3")
    assert (config["cache_type_k"], config["cache_type_v"]) == ("q8_0", "tq3")
    assert config["kv_recent_f16"] == DEFAULT_KV_RECENT_F16


@pytest.mark.parametrize("text", ["", "tq3/", "/tq3", "a/b/c", "tq3:x", "tq3:-1", "tq3:32:x", "tq3:32:-1",
                                  "tq3:32:4:1", "tq3:32:4:q4_0", "tq3:32:4:f16:x"])
def test_config_invalid_text(text):
    with pytest.raises(ValueError, match="configuration"):
        bench.parse_config(text)


def test_llama_kv_bytes_matches_log():
    computed, logged = bench.llama_kv_bytes(LLAMA_LOG_Q8_0, 1, 256, 256, GGML_Q8_0, GGML_Q8_0)
    # q8_0 stores 32 values in 34 bytes, so a 256-value row takes 272 bytes, for K and V.
    assert computed == (2304 * 3 + 1024 * 15) * 2 * 272
    # llama.cpp rounds each of the two sizes to 0.01 MiB.
    assert abs(computed - logged) <= 2 * 0.005 * 2**20


def test_llama_kv_bytes_f16_row_size():
    # Logged by the same llama-cpp-python for an f16 cache with n_ctx 600: the window-size
    # cache (512 + 512 cells) is capped at the 768 cells of the global one.
    log = (
        "llama_kv_cache: size =    2.25 MiB (   768 cells,   3 layers,  1/1 seqs), K (f16):    1.12 MiB, V (f16):    1.12 MiB\n"
        "llama_kv_cache: size =   11.25 MiB (   768 cells,  15 layers,  1/1 seqs), K (f16):    5.62 MiB, V (f16):    5.62 MiB\n"
    )
    computed, logged = bench.llama_kv_bytes(log, 1, 256, 256, GGML_F16, GGML_F16)
    assert computed == 768 * 18 * 2 * 256 * 2
    # Both sizes are whole multiples of 0.01 MiB here, so the log is exact.
    assert computed == logged


def test_llama_kv_bytes_without_log_lines():
    assert bench.llama_kv_bytes("no cache lines here", 1, 256, 256, GGML_F16, GGML_F16) == (None, None)


def test_write_inserts_into_kv_section(tmp_path):
    original = "# Benchmarks\n\n## KV cache\n\nold text\n\n## Tokenizer\n\ntokenizer text\n"
    path = tmp_path / "benchmarks.md"
    path.write_text(original, encoding="utf-8")

    bench.write_section(str(path), "first body")
    text = path.read_text(encoding="utf-8")
    assert text.count(bench.SECTION_HEADING) == 1
    assert text.index("old text") < text.index("first body") < text.index("## Tokenizer")
    assert text.endswith("## Tokenizer\n\ntokenizer text\n")


def test_write_replaces_marked_section(tmp_path):
    path = tmp_path / "benchmarks.md"
    path.write_text("# Benchmarks\n\n## KV cache\n\nold text\n\n## Tokenizer\n\ntokenizer text\n", encoding="utf-8")
    bench.write_section(str(path), "first body")
    after_first = path.read_text(encoding="utf-8")

    bench.write_section(str(path), "second body")
    text = path.read_text(encoding="utf-8")
    assert "first body" not in text
    assert text == after_first.replace("first body", "second body")


def test_write_real_benchmarks_page(tmp_path):
    source = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    path = tmp_path / "benchmarks.md"
    path.write_text(source, encoding="utf-8")

    bench.write_section(str(path), "| a | b |\n|---|---|\n| 1 | 2 |")
    text = path.read_text(encoding="utf-8")
    # Every line outside an earlier written section stays, and the section sits inside "## KV cache".
    begin, end = source.find(f"<!-- {bench.SECTION_NAME}: begin"), source.find(f"<!-- {bench.SECTION_NAME}: end")
    kept = source[:begin] + source[source.index("\n", end):] if begin >= 0 else source
    for line in kept.splitlines():
        assert line in text
    assert text.index("## KV cache") < text.index(bench.SECTION_HEADING) < text.index("## Tokenizer")


def test_write_missing_end_marker(tmp_path):
    path = tmp_path / "benchmarks.md"
    path.write_text("# Benchmarks\n", encoding="utf-8")
    bench.write_section(str(path), "body")
    broken = path.read_text(encoding="utf-8").replace(f"<!-- {bench.SECTION_NAME}: end -->", "")
    path.write_text(broken, encoding="utf-8")
    with pytest.raises(ValueError, match="end marker"):
        bench.write_section(str(path), "body")


def test_write_empty_file(tmp_path):
    path = tmp_path / "new.md"
    bench.write_section(str(path), "body")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Benchmarks\n\n" + bench.SECTION_HEADING)
    assert "body" in text
