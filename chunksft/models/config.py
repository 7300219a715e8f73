"""HybridConfig: a transformers backbone config plus the chunk-SFT / refinement-head settings."""
from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig

from chunksft.hyperparameters import DEFAULTS, check

# The tiny CPU default: a random Qwen3-style backbone (4 layers, d=256, GQA 4:2) sized for the
# bundled tokenizer (vocab 512; pad 0, eos 1, mask 2, <answer> 3, </answer> 4).
TINY_BACKBONE = dict(
    model_type="qwen3",
    vocab_size=512,
    hidden_size=256,
    intermediate_size=704,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    max_position_embeddings=4096,
    rope_theta=10000.0,
    tie_word_embeddings=True,
    pad_token_id=0,
    eos_token_id=1,
    bos_token_id=None,
)


def tiny_backbone(hidden_size: int | None = None, num_hidden_layers: int | None = None,
                  num_attention_heads: int | None = None, intermediate_size: int | None = None) -> dict:
    """TINY_BACKBONE with a chosen width / depth (None keeps the default). Heads are GQA 2:1 with
    head_dim = hidden_size / heads; intermediate_size defaults to 2.75 x hidden_size (as 704 / 256)."""
    fields = dict(TINY_BACKBONE)
    if hidden_size is not None:
        fields["hidden_size"] = hidden_size
        fields["intermediate_size"] = int(round(hidden_size * 2.75 / 16)) * 16
    if num_hidden_layers is not None:
        fields["num_hidden_layers"] = num_hidden_layers
    if num_attention_heads is not None:
        fields["num_attention_heads"] = num_attention_heads
        fields["num_key_value_heads"] = max(1, num_attention_heads // 2)
    if intermediate_size is not None:
        fields["intermediate_size"] = intermediate_size
    heads = fields["num_attention_heads"]
    if fields["hidden_size"] % heads:
        raise ValueError(f"hidden_size {fields['hidden_size']} must be divisible by num_attention_heads {heads}")
    fields["head_dim"] = fields["hidden_size"] // heads
    return fields


class HybridConfig(PreTrainedConfig):
    """Configuration of `HybridModel`.

    backbone: a transformers config (or its dict) of a Llama / Qwen2 / Qwen3 decoder; default tiny.
    chunk_size: C, tokens per "thought" chunk. mask_token_id: the diffusion mask token.
    mask_probability: per-chunk Bernoulli rate of chunk_sft. diffusion_eps: eps of p = (1-eps)t + eps.
    bd3_t_min / bd3_t_max: range of the per-chunk masking rate t of the "bd3" mode (t ~ U(t_min, t_max)).
    steps_per_chunk: denoising forwards per generated chunk (several need a bd3-trained backbone).
    max_recursive_steps: K refinement steps. latent_steps: z updates per refinement step.
    head_gradient: "last" (TRM: each step backpropagates through its last recursion only, the state
    carried between steps is detached; training memory flat in K) or "full" (through every update of
    every step; memory grows with K).
    deep_supervision_weight / enable_deep_supervision: weight of the intermediate-step CE.
    deep_supervision_interval: decode and supervise every n-th refinement step (and the last); 1 = all.
    freeze_backbone: no gradient into the backbone (chunk_sft default). train_mask_embedding: learn
    the mask token's input embedding even with a frozen backbone.
    head_hidden_size / head_num_heads: width of the refinement head's core block; None takes half the
    backbone width, at most 256 (a head as wide as a tiny backbone, run 3 x K times per step, would
    cost several backbones: 128 for the tiny default, 256 for 1B+ backbones).
    confidence_threshold: inference halting threshold. backend: ops backend (auto|eager|cpp|triton).
    compact_noisy_stream: run the bd3 pass with x_t reduced to its masked chunks (same result, fewer
    tokens: L + masked*C instead of 2L); when only the chunks' states are read (training) the x_0
    stream also skips the last layer's MLP. False runs the full `[x_t ; x_0]` sequence.
    """

    model_type = "chunksft_hybrid"

    def __init__(self, backbone=None, chunk_size: int = DEFAULTS["chunk_size"], mask_token_id: int = 2,
                 answer_end_token_id: int | None = 4, mask_probability: float = DEFAULTS["mask_probability"],
                 diffusion_eps: float = 1e-3, bd3_t_min: float = DEFAULTS["bd3_t_min"],
                 bd3_t_max: float = DEFAULTS["bd3_t_max"], steps_per_chunk: int = DEFAULTS["steps_per_chunk"],
                 max_recursive_steps: int = DEFAULTS["max_recursive_steps"], latent_steps: int = 2,
                 deep_supervision_weight: float = DEFAULTS["deep_supervision_weight"],
                 enable_deep_supervision: bool = DEFAULTS["enable_deep_supervision"], freeze_backbone: bool = True,
                 train_mask_embedding: bool = False, head_hidden_size: int | None = DEFAULTS["head_hidden_size"],
                 head_num_heads: int = 4, confidence_threshold: float = 0.9, backend: str = DEFAULTS["backend"],
                 compact_noisy_stream: bool = True, head_gradient: str = DEFAULTS["head_gradient"],
                 deep_supervision_interval: int = DEFAULTS["deep_supervision_interval"], **kwargs):
        if backbone is None:
            backbone = dict(TINY_BACKBONE)
        if isinstance(backbone, PreTrainedConfig):
            backbone = backbone.to_dict()
        self.backbone = dict(backbone)
        check(locals())  # the hyperparameter arguments, by name (chunksft.hyperparameters)
        self.chunk_size = chunk_size
        self.mask_token_id = mask_token_id
        self.answer_end_token_id = answer_end_token_id
        self.mask_probability = mask_probability
        self.diffusion_eps = diffusion_eps
        self.bd3_t_min = bd3_t_min
        self.bd3_t_max = bd3_t_max
        self.steps_per_chunk = steps_per_chunk
        self.max_recursive_steps = max_recursive_steps
        self.latent_steps = latent_steps
        self.deep_supervision_weight = deep_supervision_weight
        self.enable_deep_supervision = enable_deep_supervision
        self.deep_supervision_interval = deep_supervision_interval
        self.freeze_backbone = freeze_backbone
        self.train_mask_embedding = train_mask_embedding
        if head_hidden_size is None:
            head_hidden_size = min(256, self.backbone["hidden_size"] // 2)
        self.head_hidden_size = head_hidden_size
        self.head_num_heads = head_num_heads
        self.confidence_threshold = confidence_threshold
        self.backend = backend
        self.compact_noisy_stream = compact_noisy_stream
        self.head_gradient = head_gradient
        kwargs.setdefault("pad_token_id", self.backbone.get("pad_token_id"))
        kwargs.setdefault("eos_token_id", self.backbone.get("eos_token_id"))
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

    def backbone_config(self) -> PreTrainedConfig:
        """The backbone's transformers config object."""
        fields = dict(self.backbone)
        return AutoConfig.for_model(fields.pop("model_type"), **fields)
