"""Build a Gemma 4 style tokenizer.json for tests: a BPE model trained with the ``tokenizers``
library on English text, laid out like Gemma 4's vocabulary.

Layout (ids of the real Gemma 4 vocabulary where known): <pad> 0, <eos> 1, <bos> 2, <unk> 3,
<mask> 4, user-defined tokens 5 to 7, <|think|> 98, <|channel> 100, <channel|> 101, <|turn> 105,
<turn|> 106, byte tokens <0x00> to <0xFF> at 238 to 493, the trained tokens from 494 on, and the
image and audio markers at 255999 to 258883. Unused ids hold "<unusedN>" filler so that the
vocabulary has the real size of 262144. The pipeline is the one transformers' GemmaTokenizer sets:
normalizer Replace(" ", U+2581), pre-tokenizer Split(" ", merged_with_previous), BPE with byte
fallback and fused unknown tokens, decoder Replace/ByteFallback/Fuse, and BOS prepended.
"""

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

SPACE_MARK = "\u2581"
N_VOCAB = 262144
CONTROL_TOKENS = {
    0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>", 4: "<mask>",
    98: "<|think|>", 100: "<|channel>", 101: "<channel|>", 105: "<|turn>", 106: "<turn|>",
    255999: "<|image>", 256000: "<|audio>", 258880: "<|image|>", 258881: "<|audio|>",
    258882: "<image|>", 258883: "<audio|>",
}
USER_DEFINED_TOKENS = {5: "<h1>", 6: "</h1>", 7: "\t\t"}
FIRST_BYTE_ID = 238
FIRST_TRAINED_ID = FIRST_BYTE_ID + 256

# Non-English text added to the training data so that the vocabulary has some multi-byte
# characters and merges of them, while characters outside it still need byte fallback.
EXTRA_TRAINING_TEXT = [
    "café naïve résumé façade jalapeño über Ångström crème brûlée",
    "Русский текст: Привет, мир! Привет, мир!",
    "日本語のテキスト：こんにちは世界。こんにちは世界。",
    "中文：你好，世界！今天天气很好。你好，世界！",
    "emoji: 😀 😀 👍 👍 🎉",
]


def train_tokenizer(text, vocab_size=3000):
    """Train a BPE model whose words start with U+2581, as in Gemma's vocabulary."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Replace(" ", SPACE_MARK)
    tokenizer.pre_tokenizer = pre_tokenizers.Split(SPACE_MARK, "merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>"], show_progress=False)
    tokenizer.train_from_iterator([text] + EXTRA_TRAINING_TEXT * 20, trainer)
    return tokenizer


def gemma4_layout(trained):
    """Return (vocab dict, merges list) with the trained tokens moved into Gemma 4's id layout."""
    fixed = dict(CONTROL_TOKENS)
    fixed.update(USER_DEFINED_TOKENS)
    for byte in range(256):
        fixed[FIRST_BYTE_ID + byte] = f"<0x{byte:02X}>"
    reserved_contents = set(fixed.values())
    trained_vocab = trained.get_vocab()
    next_id = FIRST_TRAINED_ID
    for content, _ in sorted(trained_vocab.items(), key=lambda item: item[1]):
        if content in reserved_contents:
            continue
        fixed[next_id] = content
        next_id += 1
    for token_id in range(N_VOCAB):
        fixed.setdefault(token_id, f"<unused{token_id}>")
    vocab = {content: token_id for token_id, content in fixed.items()}

    merges = [tuple(pair) for pair in json.loads(trained.to_str())["model"]["merges"]]
    return vocab, merges


def build_tokenizer_json(text, path, vocab_size=3000, split_newlines=False):
    """Write a Gemma 4 style tokenizer.json trained on text to path and return the Tokenizer.

    split_newlines: use an isolating Split on runs of newlines as the pre-tokenizer instead of
    GemmaTokenizer's Split on " ".
    """
    vocab, merges = gemma4_layout(train_tokenizer(text, vocab_size))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True,
                                     fuse_unk=True))
    tokenizer.normalizer = normalizers.Replace(" ", SPACE_MARK)
    if split_newlines:
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("[^\n]+|[\n]+"), "isolated")
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    tokenizer.decoder = decoders.Sequence([decoders.Replace(SPACE_MARK, " "), decoders.ByteFallback(),
                                           decoders.Fuse()])
    tokenizer.add_special_tokens([AddedToken(content, special=True, normalized=False)
                                  for _, content in sorted(CONTROL_TOKENS.items())])
    tokenizer.add_tokens([AddedToken(content, special=False, normalized=False)
                          for _, content in sorted(USER_DEFINED_TOKENS.items())])
    tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    tokenizer.save(str(path))
    return tokenizer


def write_gguf(path, reference_json, merges=None, model="gemma4"):
    """Write the vocabulary of a tokenizer.json into a vocabulary-only GGUF file with the gguf package.

    Token types: added special tokens are control tokens, other added tokens user-defined,
    <0xXX> pieces byte tokens and id 3 (<unk>) unknown. merges: a list of "left right" strings
    (or other values, to write a malformed file) to write instead of the file's merges, or False
    to write none. model: the tokenizer.ggml.model value. Returns path.
    """
    import gguf

    data = json.loads(Path(reference_json).read_text(encoding="utf-8"))
    vocab = dict(data["model"]["vocab"])
    for token in data["added_tokens"]:
        vocab[token["content"]] = token["id"]
    tokens = [None] * (max(vocab.values()) + 1)
    for content, token_id in vocab.items():
        tokens[token_id] = content
    types = []
    special = {token["id"]: token["special"] for token in data["added_tokens"]}
    for token_id, content in enumerate(tokens):
        if token_id == 3:
            types.append(gguf.TokenType.UNKNOWN)
        elif token_id in special:
            types.append(gguf.TokenType.CONTROL if special[token_id] else gguf.TokenType.USER_DEFINED)
        elif content.startswith("<0x") and len(content) == 6:
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    if merges is None:
        merges = [" ".join(pair) for pair in data["model"]["merges"]]

    writer = gguf.GGUFWriter(str(path), "gemma4")
    writer.add_tokenizer_model(model)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_scores([0.0] * len(tokens))
    if merges is not False:
        writer.add_token_merges(merges)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
