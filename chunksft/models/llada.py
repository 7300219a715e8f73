"""Load LLaDA checkpoints (OLMo-style key names, Llama-shaped weights) into transformers' Llama layout.

LLaDA-8B is a Llama decoder trained bidirectionally: same blocks, other names. We translate its
config to a `LlamaConfig` and rename its keys through `from_pretrained(key_mapping=...)`, so the
weights stream in through transformers' loader (and under ZeRO-3, its `zero.Init` path) untouched.
"""
from __future__ import annotations

import json
from pathlib import Path

from transformers import LlamaConfig, LlamaForCausalLM

# LLaDA key (regex) -> Llama key. In an LLaDA block `ff_proj` is the activated (gate) branch,
# `up_proj` the linear branch and `ff_out` the down projection; the top-level `ff_out` is the LM head.
LLADA_KEY_MAPPING = {
    r"^model\.transformer\.wte\.": "model.embed_tokens.",
    r"^model\.transformer\.ln_f\.": "model.norm.",
    r"^model\.transformer\.ff_out\.": "lm_head.",
    r"^model\.transformer\.blocks\.(\d+)\.q_proj\.": r"model.layers.\1.self_attn.q_proj.",
    r"^model\.transformer\.blocks\.(\d+)\.k_proj\.": r"model.layers.\1.self_attn.k_proj.",
    r"^model\.transformer\.blocks\.(\d+)\.v_proj\.": r"model.layers.\1.self_attn.v_proj.",
    r"^model\.transformer\.blocks\.(\d+)\.attn_out\.": r"model.layers.\1.self_attn.o_proj.",
    r"^model\.transformer\.blocks\.(\d+)\.ff_proj\.": r"model.layers.\1.mlp.gate_proj.",
    r"^model\.transformer\.blocks\.(\d+)\.up_proj\.": r"model.layers.\1.mlp.up_proj.",
    r"^model\.transformer\.blocks\.(\d+)\.ff_out\.": r"model.layers.\1.mlp.down_proj.",
    r"^model\.transformer\.blocks\.(\d+)\.attn_norm\.": r"model.layers.\1.input_layernorm.",
    r"^model\.transformer\.blocks\.(\d+)\.ff_norm\.": r"model.layers.\1.post_attention_layernorm.",
}

LLADA_MASK_TOKEN_ID = 126336


def is_llada_checkpoint(path: str | Path) -> bool:
    config = Path(path) / "config.json"
    return config.is_file() and "d_model" in json.loads(config.read_text())


def llama_config_from_llada(llada: dict) -> LlamaConfig:
    """Translate an LLaDA `config.json` dict into the equivalent LlamaConfig."""
    if llada.get("weight_tying"):
        raise ValueError("LLaDA checkpoints with weight_tying=true are not supported; expected a separate ff_out head")
    return LlamaConfig(
        vocab_size=llada.get("embedding_size") or llada["vocab_size"],
        hidden_size=llada["d_model"],
        intermediate_size=llada["mlp_hidden_size"],
        num_hidden_layers=llada["n_layers"],
        num_attention_heads=llada["n_heads"],
        num_key_value_heads=llada.get("n_kv_heads") or llada["n_heads"],
        max_position_embeddings=llada.get("max_sequence_length", 4096),
        rms_norm_eps=llada.get("rms_norm_eps", 1e-5),
        rope_theta=llada.get("rope_theta", 500000.0),
        attention_bias=bool(llada.get("include_bias", False) or llada.get("include_qkv_bias", False)),
        tie_word_embeddings=False,
        pad_token_id=llada.get("pad_token_id"),
        eos_token_id=llada.get("eos_token_id"),
        bos_token_id=llada.get("bos_token_id"),
    )


def load_llada(path: str | Path, **from_pretrained_kwargs) -> LlamaForCausalLM:
    """A local LLaDA checkpoint directory -> LlamaForCausalLM with the stock key layout."""
    config = llama_config_from_llada(json.loads((Path(path) / "config.json").read_text()))
    return LlamaForCausalLM.from_pretrained(path, config=config, key_mapping=LLADA_KEY_MAPPING,
                                            **from_pretrained_kwargs)
