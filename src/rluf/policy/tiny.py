"""The tiny causal LM: a 4-layer Llama with tied embeddings, sized to train on two CPU cores.

    python -c "from rluf.policy.tokenizer import train_tokenizer; from rluf.policy.tiny import build_tiny_lm; m = build_tiny_lm(train_tokenizer(['Hope this helps.'] * 50, vocab_size=300)); print(m.num_parameters())"

Why Llama: RMSNorm, rotary positions (no position table to train) and a SwiGLU MLP are the shape of
the production models this library aligns, so the same code paths (generation, chat template, TRL)
serve both; tied input/output embeddings halve the embedding parameters, and the vocabulary
projection is a large share of a small model's compute. At the default shape (4 layers, width 192,
4 heads, MLP 512, vocabulary 4096) the model has about 2.6M parameters. Attention runs in "eager"
mode: at these sizes (head width 48, sequences under 100 tokens) PyTorch's fused SDPA kernel brings
nothing on CPU and the plain matmuls are as fast or faster.

What `save_pretrained` writes, `AutoModelForCausalLM.from_pretrained` loads.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase


def build_tiny_lm(tokenizer: PreTrainedTokenizerBase, n_layer: int = 4, n_embd: int = 192, n_head: int = 4,
                  max_positions: int = 512, seed: int = 0, mlp_ratio: float = 8 / 3,
                  attn_implementation: str = "eager") -> LlamaForCausalLM:  # fmt: skip
    """A freshly initialised Llama causal LM over `tokenizer`'s vocabulary, bos/eos/pad ids from it.

    n_embd must be a multiple of n_head; the MLP width is mlp_ratio * n_embd rounded up to a
    multiple of 64 (SwiGLU keeps the parameter count of a 4x MLP at a ratio of 8/3).
    """
    for name, value in (("n_layer", n_layer), ("n_embd", n_embd), ("n_head", n_head), ("max_positions", max_positions)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if n_embd % n_head:
        raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
    if (n_embd // n_head) % 2:
        raise ValueError(f"the head width n_embd / n_head ({n_embd // n_head}) must be even for rotary positions")
    ids = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}
    if ids["eos"] is None or ids["pad"] is None:
        raise ValueError(f"the tokenizer needs eos and pad tokens (got ids {ids}); use rluf.policy.tokenizer.train_tokenizer")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=n_embd, num_hidden_layers=n_layer,
                         num_attention_heads=n_head, num_key_value_heads=n_head,
                         intermediate_size=64 * -(-int(mlp_ratio * n_embd) // 64), max_position_embeddings=max_positions,
                         rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                         pad_token_id=ids["pad"], attn_implementation=attn_implementation)  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.bos_token_id = ids["bos"]
    model.generation_config.eos_token_id = ids["eos"]
    model.generation_config.pad_token_id = ids["pad"]
    return model
