"""The LLaDA converter maps every LLaDA key onto the Llama layout with the same tensor."""
import json

import torch
from safetensors.torch import save_file

from chunksft.models import HybridModel
from chunksft.models.llada import is_llada_checkpoint, load_llada


def test_llada_checkpoint_loads_into_llama(tmp_path):
    d, layers, heads, ffn, vocab = 64, 2, 4, 96, 128
    g = torch.Generator().manual_seed(0)
    tensors = {"model.transformer.wte.weight": torch.randn(vocab, d, generator=g),
               "model.transformer.ln_f.weight": torch.rand(d, generator=g),
               "model.transformer.ff_out.weight": torch.randn(vocab, d, generator=g)}
    for i in range(layers):
        block = f"model.transformer.blocks.{i}."
        for name, shape in (("q_proj", (d, d)), ("k_proj", (d, d)), ("v_proj", (d, d)), ("attn_out", (d, d)),
                            ("ff_proj", (ffn, d)), ("up_proj", (ffn, d)), ("ff_out", (d, ffn)),
                            ("attn_norm", (d,)), ("ff_norm", (d,))):
            tensors[block + name + ".weight"] = torch.randn(*shape, generator=g)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps({
        "d_model": d, "n_layers": layers, "n_heads": heads, "n_kv_heads": heads, "mlp_hidden_size": ffn,
        "vocab_size": vocab, "embedding_size": vocab, "max_sequence_length": 256, "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5, "weight_tying": False, "mask_token_id": 126}))
    assert is_llada_checkpoint(tmp_path)

    llama = load_llada(tmp_path)
    state = llama.state_dict()
    assert torch.equal(state["model.embed_tokens.weight"], tensors["model.transformer.wte.weight"])
    assert torch.equal(state["lm_head.weight"], tensors["model.transformer.ff_out.weight"])
    assert torch.equal(state["model.layers.1.mlp.gate_proj.weight"], tensors["model.transformer.blocks.1.ff_proj.weight"])
    assert torch.equal(state["model.layers.1.mlp.down_proj.weight"], tensors["model.transformer.blocks.1.ff_out.weight"])
    assert torch.equal(state["model.layers.0.self_attn.o_proj.weight"],
                       tensors["model.transformer.blocks.0.attn_out.weight"])
    assert len(state) == len(tensors)

    hybrid = HybridModel.from_backbone(str(tmp_path), mask_token_id=126, head_hidden_size=32, head_num_heads=2)
    logits = hybrid.eval()(torch.randint(0, 120, (1, 21)), prompt_lens=torch.tensor([5]), training_mode="chunk_sft",
                           chunk_masked=torch.tensor([[True]])).logits
    assert logits.shape == (1, 21, vocab) and torch.isfinite(logits).all()
