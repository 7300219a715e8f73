"""HybridModel modes, HF integration (save/load, stock backbone, Auto classes) and learning."""
import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from chunksft.models import ChunkLayout, HybridConfig, HybridModel
from chunksft.models.config import TINY_BACKBONE

C = 16


def rows(prompt_lens, n_chunks, seed=0):
    g = torch.Generator().manual_seed(seed)
    lens = [p + n * C for p, n in zip(prompt_lens, n_chunks)]
    ids = torch.randint(5, 512, (len(lens), max(lens)), generator=g)
    attn = (torch.arange(max(lens))[None] < torch.tensor(lens)[:, None]).long()
    src = torch.arange(max(lens))[None] < torch.tensor(prompt_lens)[:, None]
    return ids * attn, attn, src, torch.tensor(prompt_lens)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return HybridModel(HybridConfig(max_recursive_steps=2, freeze_backbone=False))


def test_seed_api_modes(model):
    ids, attn, src, prompts = rows([6, 10], [2, 1])
    model.train()
    logits, loss = model(input_ids=ids, attention_mask=attn)  # defaults to "pretrain" in training
    assert logits.shape == (*ids.shape, 512) and loss.ndim == 0 and torch.isfinite(loss)
    out = model(input_ids=ids, attention_mask=attn, src_mask=src, training_mode="sft")
    assert not (out.noisy_input_ids[src] == model.config.mask_token_id).any(), "instruction tokens never masked"
    with pytest.raises(ValueError, match="src_mask"):
        model(input_ids=ids, attention_mask=attn, training_mode="sft")
    with pytest.raises(ValueError, match="prompt_lens"):
        model(input_ids=ids, training_mode="chunk_sft")
    with pytest.raises(ValueError, match="training_mode"):
        model(input_ids=ids, training_mode="causal")
    model.eval()
    logits, loss = model(input_ids=ids, attention_mask=attn)
    assert loss is None
    assert torch.equal(logits, model(input_ids=ids, attention_mask=attn).logits), "no noise in eval"


def test_diffusion_loss_matches_formula(model):
    ids, attn, src, prompts = rows([6, 10], [2, 1])
    model.train()
    g = torch.Generator().manual_seed(3)
    out = model(input_ids=ids, attention_mask=attn, src_mask=src, training_mode="sft", generator=g)
    g = torch.Generator().manual_seed(3)
    from chunksft.ops import diffusion_mask
    _, masked, p = diffusion_mask(ids, src, mask_id=2, generator=g, attention_mask=attn)
    ce = torch.nn.functional.cross_entropy(out.logits.transpose(1, 2), ids, reduction="none")
    maskable = attn.bool() & ~src
    expected = torch.stack([(ce[b][masked[b]] / p[b]).sum() / maskable[b].sum() for b in range(2)]).mean()
    torch.testing.assert_close(out.loss, expected)


def test_padding_does_not_change_real_logits(model):
    model.eval()
    ids, attn, src, prompts = rows([6], [2])
    padded = torch.cat([ids, torch.zeros(1, 9, dtype=torch.long)], 1)
    padded_attn = torch.cat([attn, torch.zeros(1, 9, dtype=torch.long)], 1)
    chunk_masked = torch.tensor([[True, False]])
    a = model(ids, attention_mask=attn, prompt_lens=prompts, training_mode="chunk_sft", chunk_masked=chunk_masked)
    b = model(padded, attention_mask=padded_attn, prompt_lens=prompts, training_mode="chunk_sft",
              chunk_masked=chunk_masked)
    torch.testing.assert_close(a.logits, b.logits[:, :ids.shape[1]], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.loss, b.loss, atol=1e-6, rtol=1e-6)
    c = model(padded, attention_mask=padded_attn)
    torch.testing.assert_close(model(ids, attention_mask=attn).logits, c.logits[:, :ids.shape[1]], atol=1e-5,
                               rtol=1e-5)


def test_save_load_round_trip_and_stock_backbone(model, tmp_path):
    model.eval()
    ids, attn, src, prompts = rows([6], [2])
    model.save_pretrained(tmp_path / "hybrid")
    loaded = HybridModel.from_pretrained(tmp_path / "hybrid").eval()
    chunk_masked = torch.tensor([[True, True]])
    kwargs = dict(prompt_lens=prompts, training_mode="chunk_sft", chunk_masked=chunk_masked)
    assert torch.equal(model(ids, **kwargs).logits, loaded(ids, **kwargs).logits)
    auto = AutoModel.from_pretrained(tmp_path / "hybrid")
    assert isinstance(auto, HybridModel) and isinstance(AutoConfig.from_pretrained(tmp_path / "hybrid"), HybridConfig)

    # The backbone keeps the stock key layout: stock transformers loads it and computes the same function.
    model.backbone.save_pretrained(tmp_path / "backbone")
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "backbone", attn_implementation="sdpa").eval()
    assert type(stock).__name__ == "Qwen3ForCausalLM"
    ours = model.backbone.state_dict()
    assert all(torch.equal(v, ours[k]) for k, v in stock.state_dict().items())
    with torch.no_grad():
        # Stock causal == our block_causal layout with 1-token chunks and no prompt.
        token_causal = ChunkLayout("block_causal", prompt_lens=torch.tensor([0]), chunk_size=1)
        mine = model.decode(model.backbone_states(ids, token_causal))
        torch.testing.assert_close(mine, stock(ids).logits, atol=1e-5, rtol=1e-5)
        # Stock with an all-visible 4D mask == our bidirectional pass.
        everything = torch.ones(1, 1, ids.shape[1], ids.shape[1], dtype=torch.bool)
        torch.testing.assert_close(model(ids).logits, stock(ids, attention_mask=everything).logits,
                                   atol=1e-5, rtol=1e-5)


def test_overfits_bundled_rows_in_chunk_sft():
    """Learning, not just running: a small hybrid memorises two bundled rows (loss falls > 90%)."""
    from chunksft.data import ChunkCollator, build_dataset, load_tokenizer

    tok = load_tokenizer()
    data, _ = build_dataset("bundled", tokenizer=tok, chunk_size=C, max_length=256, max_rows=2)
    batch = ChunkCollator(tok.pad_token_id)([data[i] for i in range(2)])
    torch.manual_seed(0)
    small = dict(TINY_BACKBONE, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1)
    model = HybridModel(HybridConfig(backbone=small, max_recursive_steps=2, head_hidden_size=64, head_num_heads=2,
                                     freeze_backbone=False)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 10))
    every_chunk = torch.ones(2, 16, dtype=torch.bool)
    losses = []
    while len(losses) < 150 and not (len(losses) > 3 and sum(losses[-3:]) / 3 < 0.1 * losses[0]):
        out = model(batch["input_ids"], attention_mask=batch["attention_mask"], prompt_lens=batch["prompt_lens"],
                    training_mode="chunk_sft", chunk_masked=every_chunk)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        warmup.step()
        losses.append(out.loss.item())
    assert sum(losses[-3:]) / 3 < 0.1 * losses[0], losses[::10]


def test_head_initialises_through_init_weights_alone():
    """Under ZeRO-3 transformers builds modules inside no_init_weights() and relies on _init_weights."""
    from transformers.initialization import no_init_weights

    with no_init_weights():
        model = HybridModel(HybridConfig(train_mask_embedding=True))
    model.init_weights()
    head = model.head
    assert torch.equal(head.delta.weight, torch.zeros_like(head.delta.weight))
    assert torch.equal(head.halt.bias, torch.full_like(head.halt.bias, -2.0))
    assert torch.equal(head.core.attn_norm.weight, torch.ones_like(head.core.attn_norm.weight))
    assert 0.005 < head.z_init.std() < 0.05 and 0 < head.x_in.weight.abs().max() < 1
    assert torch.equal(model.mask_embedding_delta, torch.zeros_like(model.mask_embedding_delta))


@pytest.mark.parametrize("field, value", [("deep_supervision_weight", -0.1), ("mask_probability", 1.5),
                                          ("confidence_threshold", -0.5), ("head_gradient", "some"),
                                          ("chunk_size", 0), ("steps_per_chunk", 17), ("backend", "gpu"),
                                          ("head_hidden_size", 0)])
def test_config_rejects_out_of_range_values(field, value):
    with pytest.raises(ValueError, match=field):
        HybridConfig(**{field: value})


def test_head_width_defaults_to_half_the_backbone_at_most_256(tmp_path):
    assert HybridConfig().head_hidden_size == TINY_BACKBONE["hidden_size"] // 2
    assert HybridConfig(backbone=dict(TINY_BACKBONE, hidden_size=2048)).head_hidden_size == 256
    assert HybridConfig(head_hidden_size=64).head_hidden_size == 64
    HybridConfig(head_hidden_size=96).save_pretrained(tmp_path)  # a saved width is kept on reload
    assert HybridConfig.from_pretrained(tmp_path).head_hidden_size == 96
    assert HybridModel(HybridConfig()).head.core.qkv.in_features == TINY_BACKBONE["hidden_size"] // 2
