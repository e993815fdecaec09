"""Tree speculative decoding with Medusa-style heads.

Each step the heads read the hidden state of the last cached token and propose, for the
positions after the pending token (sampled but not yet evaluated), their top-k candidates.
A sparse tree of those candidates is evaluated in one forward pass
(``_core.Context.eval_tree``). Then the base model's own token is drawn at the root, and the
walk moves to the child that contains that token and draws again, until no child matches.
Every drawn token is the one plain decoding would draw: a node's logits equal those of
decoding its path token by token, bit for bit, and the sampler is called once per token in
the same order. So greedy output is identical to plain greedy output, and sampled output
has the base model's distribution (with a fixed seed, the very same text). The accepted
path's K/V rows stay in the cache, the others are dropped.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import numpy as np

__all__ = ["DraftTree", "DEFAULT_TREE"]


@dataclasses.dataclass(frozen=True)
class DraftTree:
    """A sparse tree of draft paths, as Medusa's "choices".

    A path (i_0, i_1, ..) takes the i_0-th candidate of head 0 at depth 1, then the i_1-th
    candidate of head 1 at depth 2, and so on. Every prefix of a path must be a path too.
    Node 0 is the root (the pending token), and node j > 0 is ``paths[j - 1]`` in the order
    of (length, path).
    """

    paths: tuple

    def __init__(self, paths: Sequence[Sequence[int]]):
        cleaned = sorted({tuple(int(i) for i in p) for p in paths}, key=lambda p: (len(p), p))
        for p in cleaned:
            if not p or min(p) < 0:
                raise ValueError(f"draft path {p} must be a non-empty tuple of candidate ranks >= 0")
            if len(p) > 1 and p[:-1] not in cleaned:
                raise ValueError(f"draft path {p} lacks its prefix {p[:-1]}; add it to the tree")
        if len(cleaned) + 1 > 32:
            raise ValueError(f"a draft tree has at most 31 paths (32 nodes with the root), got {len(cleaned)}")
        if cleaned and max(len(p) for p in cleaned) > 4:
            raise ValueError("draft paths are at most 4 long (one level per head, at most 4 heads)")
        object.__setattr__(self, "paths", tuple(cleaned))

    @property
    def n_nodes(self) -> int:
        return len(self.paths) + 1

    @property
    def depth(self) -> int:
        """Return the number of levels below the root, which is the number of heads used."""
        return max((len(p) for p in self.paths), default=0)

    @property
    def parents(self) -> list[int]:
        index = {p: j + 1 for j, p in enumerate(self.paths)}
        return [-1] + [index[p[:-1]] if len(p) > 1 else 0 for p in self.paths]

    def top_k(self) -> int:
        """Return the candidates needed from each head: the largest rank used, plus one."""
        return max((max(p) for p in self.paths), default=0) + 1

    def children(self) -> list[list[int]]:
        """Return the children of each node, by node index."""
        kids: list[list[int]] = [[] for _ in range(self.n_nodes)]
        for j, parent in enumerate(self.parents[1:], start=1):
            kids[parent].append(j)
        return kids

    @classmethod
    def chain(cls, depth: int) -> "DraftTree":
        """Return the chain of the top candidates of the first depth heads."""
        return cls([(0,) * d for d in range(1, depth + 1)])

    @classmethod
    def from_branching(cls, branching: Sequence[int]) -> "DraftTree":
        """Return the full tree with branching[d] children under every node at depth d."""
        paths: list[tuple] = []
        level = [()]
        for width in branching:
            if int(width) < 1:
                raise ValueError(f"tree branching {list(branching)} must contain counts >= 1")
            level = [p + (r,) for p in level for r in range(int(width))]
            paths += level
        return cls(paths)

    @classmethod
    def from_accuracy(cls, accuracy, n_nodes: int) -> "DraftTree":
        """Return the tree of n_nodes nodes (root included) with the most expected accepted tokens.

        Head k's rank-r candidate is taken to be right with probability accuracy[k][r],
        independently of the others. As in Medusa's construction, a path is worth the product
        of the probabilities along it, so the greedy choice of the best remaining path always
        keeps every prefix in the tree."""
        accuracy = np.asarray(accuracy, dtype=np.float64)
        if accuracy.ndim != 2 or np.any(accuracy < 0) or np.any(accuracy > 1):
            raise ValueError("accuracy must be a (heads, ranks) array of probabilities")
        chosen: dict[tuple, float] = {}
        frontier = {(r,): accuracy[0, r] for r in range(accuracy.shape[1])}
        while len(chosen) + 1 < n_nodes and frontier:
            best = max(frontier, key=lambda p: (frontier[p], -len(p)))
            chosen[best] = frontier.pop(best)
            if len(best) < accuracy.shape[0]:
                for r in range(accuracy.shape[1]):
                    frontier[best + (r,)] = chosen[best] * accuracy[len(best), r]
        return cls(list(chosen))


# The tree that decoded fastest with the shipped heads on the default model at 2 threads
# (docs/benchmarks.md, "Speculative decoding"). It has one candidate, because each extra node
# costs about half a decode step on that CPU and the shipped heads' first candidate is right 13%
# of the time on general prose.
DEFAULT_TREE = DraftTree([(0,)])


def speculative_tokens(model, logits, hidden, heads, tree: DraftTree, sampler, history: list, window,
                       stats) -> Iterator[int]:
    """Yield the tokens of a generation one at a time, drafting and verifying trees.

    logits and hidden belong to the last prompt token, which is cached. The consumer appends
    each token to history before asking for the next and stops by closing the iterator. The
    cache then contains exactly the tokens whose rows were accepted, and model._cached lists
    them. window(history) gives the penalty window. stats gets tree_passes and
    accepted_depths.
    """
    core = model._core
    end_ids = model._end_ids
    d = hidden.shape[-1]
    weight = np.ascontiguousarray(heads.weight[: tree.depth].reshape(-1, d), dtype=np.float32)
    bias = np.ascontiguousarray(heads.bias[: tree.depth], dtype=np.float32)
    # Heads with a draft vocabulary score only its tokens' LM-head rows.
    vocab = heads.draft_vocab(model._core) if getattr(heads, "vocab", None) is not None else None
    children = tree.children()
    parents = tree.parents

    pending = sampler.sample(logits, window(history))
    yield pending
    while True:
        # pending was drawn and emitted but is not cached; hidden is the last cached token's.
        room = model.n_ctx - len(model._cached)
        if room < 1:
            return
        # A draft node at a position of the f16 sink would have to be moved there on acceptance.
        # With a q8_0 recent window that move cannot restore its exact f16 rows
        # (tq_kv_cache_move), so the first steps after a very short prompt decode one token.
        in_sink = len(model._cached) + 1 < core.exact_moves_from
        if tree.depth == 0 or room < tree.n_nodes or in_sink:
            tokens, node_parents, node_children = [pending], [-1], [[]]
        else:
            ids, _ = model._heads_topk(weight, bias, hidden, tree.top_k(), vocab)
            tokens = [pending] + [int(ids[len(p) - 1, p[-1]]) for p in tree.paths]
            node_parents, node_children = parents, children
        node_logits, node_hidden = model._eval_tree(tokens, node_parents)
        stats.tree_passes += 1

        path = [0]
        try:
            while True:
                node = path[-1]
                token = sampler.sample(node_logits[node], window(history))
                child = None
                if token not in end_ids:
                    child = next((c for c in node_children[node] if tokens[c] == token), None)
                if child is None:
                    break
                path.append(child)
                yield token
        finally:
            core.accept_path(path)
            model._cached.extend(tokens[j] for j in path)
            stats.accepted_depths.append(len(path) - 1)
        hidden = node_hidden[path[-1]]
        pending = token
        yield pending
