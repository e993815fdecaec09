"""Build a tiny Gemma 4 GGUF model, with a vocabulary, whose greedy reply to any chat prompt is
a fixed token sequence with a thought channel: ``<|channel>thought\\n{REASONING}<channel|>{ANSWER}<turn|>``.

How the weights force the reply. Every attention output projection and FFN down projection is
zero, so each layer adds nothing to the residual stream and the last hidden state is the
RMS-normed embedding of the current token. The current token alone then decides the next
one. The reply's tokens, and the prompt's last token "\\n", get orthogonal one-hot
embeddings, and the separate LM head (output.weight) maps the one-hot of each to the next
piece with logit margin 2 * sqrt(hidden). Every piece therefore appears once in the reply, and
newlines inside the reply use other tokens than the "\\n" piece (the byte token <0x0A>, or
pieces such as ".\\n"). transformers' Gemma 4 with the same weights is the reference that the
reply really is this sequence (``reference_greedy_reply``). ``build_reply_model`` takes other
cuts of the same reply into tokens (OTHER_SPLITS).

The vocabulary keeps the real Gemma 4 ids of the control tokens (<|think|> 98, <|channel> 100,
<channel|> 101, <|turn> 105, <turn|> 106), byte tokens at 238 to 493 and printable ASCII
characters as pieces, so any prompt encodes.
"""

import numpy as np

import gguf
from test_gemma4 import gemma4_reference, write_gemma4_gguf

import torch

SPACE_MARK = "\u2581"
CONTROL_TOKENS = {0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>", 4: "<mask>", 98: "<|think|>",
                  100: "<|channel>", 101: "<channel|>", 105: "<|turn>", 106: "<turn|>"}
NEWLINE_ID = 107
FIRST_BYTE_ID = 238

# The reply, one vocabulary piece per token. "<0xC3>", "<0xA9>" is "é" split over two byte tokens.
REASONING_PIECES = ["The", "▁user", "▁asks", "▁for", "▁the", "▁capital", "▁of", "▁France", ".", "▁It", "▁is",
                    "▁Paris", ",", "▁near", "▁a", "▁caf", "<0xC3>", "<0xA9>", ".\n"]
ANSWER_PIECES = ["Paris", "▁(", "France", ")", "!"]
REPLY_PIECES = (["<|channel>", "thought", "<0x0A>"] + REASONING_PIECES + ["<channel|>"] + ANSWER_PIECES
                + ["<turn|>"])
# What the thought-channel format makes of the reply: the channel name line and the newline
# before <channel|> are not part of the reasoning.
REASONING = "The user asks for the capital of France. It is Paris, near a café."
ANSWER = "Paris (France)!"
# Tokens from <|channel> to <channel|>, both included.
REASONING_TOKENS = REPLY_PIECES.index("<channel|>") + 1
# The same reply cut into tokens elsewhere: the channel name split and joined to the reasoning,
# "é" as one piece, the last newline of the reasoning as a token of its own, and whole phrases.
OTHER_SPLITS = [
    ["<|channel>", "thou", "ght\nThe", "▁user", "▁asks", "▁for", "▁the", "▁capital", "▁of", "▁France", ".▁It", "▁is",
     "▁Paris", ",", "▁near", "▁a", "▁caf", "é", ".", "<0x0A>", "<channel|>", "Paris", "▁(", "France", ")!", "<turn|>"],
    ["<|channel>", "thought\n", "The▁user", "▁asks▁for", "▁the▁capital▁of▁France.", "▁It▁is▁Paris,", "▁near▁a▁café.\n",
     "<channel|>", "Paris▁(France)!", "<turn|>"],
]

MERGED_PIECE = SPACE_MARK + "a"
SHAPE = "plain"  # hidden 96, no per-layer embeddings, no logit softcap
LOGIT_SCALE = 2.0


def vocabulary(reply_pieces=REPLY_PIECES):
    """Return the token pieces by id, with those of reply_pieces, and their GGUF token types."""
    pieces = {token_id: f"<unused{token_id}>" for token_id in range(FIRST_BYTE_ID)}
    pieces.update(CONTROL_TOKENS)
    pieces[NEWLINE_ID] = "\n"
    for byte in range(256):
        pieces[FIRST_BYTE_ID + byte] = f"<0x{byte:02X}>"
    words = [chr(code) for code in range(33, 127)] + [SPACE_MARK, MERGED_PIECE]
    for piece in reply_pieces:
        if piece not in words and piece not in pieces.values():
            words.append(piece)
    tokens = [pieces[token_id] for token_id in range(len(pieces))] + words
    types = []
    for token_id, piece in enumerate(tokens):
        if token_id in CONTROL_TOKENS:
            types.append(gguf.TokenType.UNKNOWN if token_id == 3 else gguf.TokenType.CONTROL)
        elif FIRST_BYTE_ID <= token_id < FIRST_BYTE_ID + 256:
            types.append(gguf.TokenType.BYTE)
        elif piece.startswith("<unused"):
            types.append(gguf.TokenType.UNUSED)
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def reply_ids(reply_pieces=REPLY_PIECES):
    """Return the token ids of reply_pieces."""
    tokens, _ = vocabulary(reply_pieces)
    return [tokens.index(piece) for piece in reply_pieces]


def _add_vocabulary(writer, reply_pieces):
    tokens, types = vocabulary(reply_pieces)
    writer.add_tokenizer_model("gemma4")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_scores([0.0] * len(tokens))
    # The loader requires a merge list. The reply pieces are only generated, never produced by
    # encoding, so one merge suffices.
    writer.add_token_merges([f"{SPACE_MARK} a"])  # makes MERGED_PIECE
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(True)


def build_reply_model(path, reply_pieces=REPLY_PIECES, seed=0):
    """Write the model that replies with reply_pieces to path (F32 GGUF with vocabulary) and return
    the transformers reference."""
    tokens, _ = vocabulary(reply_pieces)
    model, config = gemma4_reference(SHAPE, seed=seed, vocab_size=len(tokens), tie_word_embeddings=False)
    hidden = config.hidden_size
    chain = [NEWLINE_ID] + reply_ids(reply_pieces)
    assert len(set(chain)) == len(chain), "every token of the reply must differ from the others"
    assert len(chain) <= hidden, "the one-hot embeddings need a hidden size of at least the chain length"
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
            layer.layer_scalar.fill_(1.0)
        model.model.norm.weight.fill_(1.0)
        embedding = model.model.embed_tokens.weight
        head = model.lm_head.weight
        head.zero_()
        for slot, token in enumerate(chain):
            embedding[token].zero_()
            embedding[token, slot] = 1.0
            if slot + 1 < len(chain):
                head[chain[slot + 1], slot] = LOGIT_SCALE
    write_gemma4_gguf(path, model, config, overrides={"vocabulary": lambda writer: _add_vocabulary(writer, reply_pieces)})
    return model


def reference_greedy_reply(model, prompt_ids, max_tokens):
    """Return transformers' greedy continuation of prompt_ids, up to and including <turn|>."""
    ids = list(prompt_ids)
    reply = []
    with torch.no_grad():
        for _ in range(max_tokens):
            logits = model(torch.tensor([ids])).logits[0, -1].numpy()
            token = int(np.argmax(logits))
            reply.append(token)
            ids.append(token)
            if token == 106:
                break
    return reply
