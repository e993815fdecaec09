"""KV cache memory of Gemma 4 E2B and E4B at long contexts, from the runtime's allocator.

The layer shapes are those of the checkpoints' text configurations (transformers
Gemma4TextConfig fields):

- E2B: 35 layers, four sliding layers then one global layer, repeated; 1 KV head; the last
  20 layers share K/V.
- E4B: 42 layers, five sliding layers then one global layer, repeated; 2 KV heads; the last
  18 layers share K/V.
- Both: sliding layers have head_dim 256 and a 512-token window, global layers head_dim 512.

For each model, context length and cache type the script builds the KV cache with
turboquant.kv_cache_memory (the allocator the model uses, filled 512 positions at a time as
a prefill does) and prints a Markdown table of MiB. The column "no sharing" is the f16 cache
if every layer stored its own K/V, for comparison. Weights are not needed: the cache depends
only on the layer shapes.

    python benchmarks/gemma4_kv_memory.py
    python benchmarks/gemma4_kv_memory.py --contexts 32768 131072 --types f16 q8_0 tq3
"""

import argparse

import turboquant

SLIDING, FULL = turboquant.kv_layout.SLIDING, turboquant.kv_layout.FULL

MODELS = {
    "E2B": dict(layer_types=([SLIDING] * 4 + [FULL]) * 7, n_kv_heads=1, n_kv_shared_layers=20),
    "E4B": dict(layer_types=([SLIDING] * 5 + [FULL]) * 7, n_kv_heads=2, n_kv_shared_layers=18),
}
HEAD_DIM, GLOBAL_HEAD_DIM, WINDOW = 256, 512, 512
TYPES = ["f16", "q8_0", "q4_0", "tq4", "tq3.5", "tq3", "tq2.5", "tq2", "tq3+qjl", "polar"]
MIB = 1024 * 1024


def layout(name, shared=True):
    shape = MODELS[name]
    return turboquant.gemma4_kv_layout(
        shape["layer_types"], HEAD_DIM, GLOBAL_HEAD_DIM, WINDOW, shape["n_kv_heads"],
        shape["n_kv_shared_layers"] if shared else 0,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[32768, 131072],
                        help="context lengths in tokens (default: 32768 131072)")
    parser.add_argument("--types", nargs="+", default=TYPES, help="cache types for K and V")
    args = parser.parse_args()

    header = ["model", "context", "no sharing (f16)"] + args.types
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name in MODELS:
        shared = layout(name)
        unshared = layout(name, shared=False)
        for context in args.contexts:
            row = [name, f"{context:,}", f"{turboquant.kv_cache_memory(unshared, context, 'f16') / MIB:,.1f}"]
            f16 = turboquant.kv_cache_memory(shared, context, "f16")
            for cache_type in args.types:
                size = turboquant.kv_cache_memory(shared, context, cache_type)
                ratio = f" ({f16 / size:.2f}x)" if cache_type != "f16" else ""
                row.append(f"{size / MIB:,.1f}{ratio}")
            print("| " + " | ".join(row) + " |")
    print()
    print("MiB of K and V for all layers; (Nx) is the reduction against the f16 cache with sharing. "
          f"{MODELS['E2B']['n_kv_shared_layers']} (E2B) and {MODELS['E4B']['n_kv_shared_layers']} (E4B) "
          "shared layers store nothing.")


if __name__ == "__main__":
    main()
