"""`--name_or_path` with a Hugging Face backbone folder on real 2-rank DeepSpeed ZeRO-3 (issue 13, item 1).

Four backbones, each trained 2 steps on 2 ranks (tiny.yaml: chunk_sft of the refinement head on the
frozen backbone), then exported and reloaded:
  qwen3   a random Qwen3 (tied LM head) saved with `save_pretrained`
  llama   a random Llama (separate LM head) saved with `save_pretrained`
  llada   an LLaDA-layout folder (OLMo-style keys, `d_model` config), loaded through the converter
  export  the `backbone/` folder of the qwen3 run's own export
Checks: the run starts (it used to stop with "Fan in and fan out can not be computed"), the loaded
weights survive bit for bit (no re-initialisation, no cast to bf16: the backbone is frozen, so the
export's backbone equals the source's), the head got its own init on the partitioned parameters, and
the export reloads with the trained engine's weights and logits. One launch and one export per backbone.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from chunksft.checkpoint import export
from launching import deepspeed_cmd, read_jsonl, run
from tests.tolerance import assert_close_to_reference

STEPS = 2
BACKBONES = ("qwen3", "llama", "llada", "export")
# Sized for the bundled tokenizer: vocabulary 512 (pad 0, eos 1, mask 2).
VOCAB, HIDDEN, FFN, LAYERS, HEADS, KV_HEADS = 512, 64, 128, 2, 4, 2


def _randomise_norms(model: torch.nn.Module) -> None:
    """Norm weights away from their init value 1, so that a re-initialisation of them shows too."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.add_(0.1 * torch.randn_like(param))


def save_qwen3(path: Path) -> None:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(1)
    model = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HIDDEN // HEADS, tie_word_embeddings=True,
        pad_token_id=0, eos_token_id=1, bos_token_id=None))
    _randomise_norms(model)
    model.save_pretrained(path)


def save_llama(path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(2)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, tie_word_embeddings=False,
        pad_token_id=0, eos_token_id=1, bos_token_id=None))
    _randomise_norms(model)
    model.save_pretrained(path)


def save_llada(path: Path) -> None:
    """An LLaDA-layout checkpoint (as tests/models/test_llada.py makes one; multi-head attention, no GQA,
    like LLaDA-8B), at a trainable scale."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(3)
    shapes = {"model.transformer.wte.weight": (VOCAB, HIDDEN), "model.transformer.ln_f.weight": (HIDDEN,),
              "model.transformer.ff_out.weight": (VOCAB, HIDDEN)}
    for i in range(LAYERS):
        for name, shape in (("q_proj", (HIDDEN, HIDDEN)), ("k_proj", (HIDDEN, HIDDEN)), ("v_proj", (HIDDEN, HIDDEN)),
                            ("attn_out", (HIDDEN, HIDDEN)), ("ff_proj", (FFN, HIDDEN)), ("up_proj", (FFN, HIDDEN)),
                            ("ff_out", (HIDDEN, FFN)), ("attn_norm", (HIDDEN,)), ("ff_norm", (HIDDEN,))):
            shapes[f"model.transformer.blocks.{i}.{name}.weight"] = shape
    tensors = {k: 1.0 + 0.1 * torch.randn(*s, generator=g) if len(s) == 1 else 0.02 * torch.randn(*s, generator=g)
               for k, s in shapes.items()}
    path.mkdir(parents=True)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps({
        "d_model": HIDDEN, "n_layers": LAYERS, "n_heads": HEADS, "n_kv_heads": HEADS, "mlp_hidden_size": FFN,
        "vocab_size": VOCAB, "embedding_size": VOCAB, "max_sequence_length": 1024, "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5, "weight_tying": False, "pad_token_id": 0, "eos_token_id": 1, "mask_token_id": 2}))


def source_weights(source: Path) -> dict[str, torch.Tensor]:
    """The source folder's tensors under the stock (Llama / Qwen3) key names."""
    from safetensors.torch import load_file

    from chunksft.models.llada import LLADA_KEY_MAPPING, is_llada_checkpoint

    tensors = load_file(source / "model.safetensors")
    if not is_llada_checkpoint(source):
        return tensors
    renamed = {}
    for key, tensor in tensors.items():
        for pattern, replacement in LLADA_KEY_MAPPING.items():
            key = re.sub(pattern, replacement, key)
        renamed[key] = tensor
    return renamed


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_files):
    """Trains and exports one backbone on first request: name -> (source, run dir, export dir)."""
    done: dict[str, tuple[Path, Path, Path]] = {}
    root = tmp_path_factory.mktemp("hf_backbones")

    def get(name: str) -> tuple[Path, Path, Path]:
        if name not in done:
            if name == "export":
                source = get("qwen3")[2] / "backbone"
            else:
                source = root / f"{name}_source"
                {"qwen3": save_qwen3, "llama": save_llama, "llada": save_llada}[name](source)
            out, hf = root / f"{name}_run", root / f"{name}_hf"
            run([*deepspeed_cmd(2), "--config", "configs/train/tiny.yaml", "--name_or_path", str(source),
                 "--dataset_name", data_files["train"], "--eval_dataset_name", data_files["validation"],
                 "--batch_size", "2", "--max_steps", str(STEPS), "--warmup_steps", "2", "--head_hidden_size", "32",
                 "--eval_loss_rows", "2", "--eval_generate_rows", "0", "--save_eval_logits", "true",
                 "--tensorboard", "false", "--plot", "false", "--progress_bar", "false", "--backend", "eager",
                 "--output_dir", str(out)], log=root / f"{name}_launch.log")
            assert export.main(["--checkpoint", str(out), "--output", str(hf)]) == 0  # the CLI, in-process
            done[name] = source, out, hf
        return done[name]

    return get


@pytest.fixture(scope="module", params=BACKBONES)
def trained(request, runs):
    return runs(request.param)


def test_trains_two_steps_on_two_zero3_ranks(trained):
    _, out, _ = trained
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    assert all(m["loss"] > 0 and m["skipped"] == 0 for m in metrics)
    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == 2 and 0 < info["trainable"] < info["parameters"]  # frozen backbone


def test_loaded_backbone_is_kept_bit_for_bit(trained):
    """The frozen backbone leaves training as it came in: not re-initialised, not rounded to bf16."""
    from transformers import AutoModelForCausalLM

    source, _, hf = trained
    exported = AutoModelForCausalLM.from_pretrained(hf / "backbone").state_dict()
    expected = source_weights(source)
    assert expected.keys() <= exported.keys()
    for name, tensor in expected.items():
        assert exported[name].dtype == torch.float32 and torch.equal(exported[name], tensor), name


def test_head_initialised_on_the_partitioned_parameters(trained):
    """RefinementHead.reset_parameters ran on the gathered head: the delta projection starts at zero
    and the halting bias at -2. Two Adam steps of lr <= 2e-3 move each weight by at most ~4e-3,
    while nn.Linear's default init (what the head keeps if its init misses the partitions) is
    uniform in +-1/sqrt(32) ~ 0.18."""
    from safetensors.torch import load_file

    state = load_file(trained[2] / "model.safetensors")
    assert state["head.delta.weight"].abs().max() < 0.01
    assert (state["head.halt.bias"] + 2.0).abs().max() < 0.01
    assert 0.01 < state["head.z_init"].std() < 0.03  # normal(std=0.02)


def test_export_reloads_the_engine_weights_and_logits(trained):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from chunksft.models import HybridModel

    _, out, hf = trained
    model = HybridModel.from_pretrained(hf).eval()
    engine_weights = get_fp32_state_dict_from_zero_checkpoint(str(out / "checkpoints"), tag=f"global_step{STEPS}")
    state = model.state_dict()
    for name, tensor in engine_weights.items():
        assert torch.equal(state[name], tensor), name
    # The trained engine's own forward (ZeRO-3, 2 ranks) against the reloaded model, fp32 and fp64.
    saved = torch.load(out / "eval_logits.pt")
    inputs = {"input_ids": saved["input_ids"], "attention_mask": saved["attention_mask"]}
    with torch.no_grad():
        eager = model(**inputs).logits
        reference = model.double()(**inputs).logits
    assert_close_to_reference("engine logits", saved["logits"], eager, reference)
