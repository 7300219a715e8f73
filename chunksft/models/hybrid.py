"""HybridModel: a frozen-or-trainable bidirectional HF backbone + the recursive refinement head.

Modes (docs/design.md §1):
  * "pretrain" / "sft": LLaDA masked diffusion over a bidirectional pass (`objectives/diffusion.py`).
  * "chunk_sft": chunk masking, ONE backbone pass over `[x_t ; x_0]` under the bd3 layout, the head
    on the masked chunks, deep-supervised loss (`objectives/chunk_sft.py`).
  * "bd3": block diffusion of the backbone: the same one pass, with tokens masked *inside* every
    response chunk at a per-chunk rate t, loss weighted 1/t (`objectives/block_diffusion.py`); no head.
  * no mode in eval: a plain forward (bidirectional, or `attention_layout`) that returns logits.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.initialization import no_init_weights
from transformers.utils import ModelOutput

from chunksft.models.attention import ATTN_IMPLEMENTATION, ChunkLayout
from chunksft.models.config import HybridConfig
from chunksft.models.deep_supervision import StepwiseChunkSFT, SupervisionResult
from chunksft.models.head import RefinementHead
from chunksft.objectives.block_diffusion import block_diffusion_token_weights
from chunksft.objectives.chunk_sft import chunk_sft_loss, masked_token_ce, supervised_steps
from chunksft.objectives.diffusion import diffusion_loss
from chunksft.ops import chunk_mask, diffusion_mask, linear_cross_entropy
from chunksft.ops.chunk_mask import IGNORE_INDEX, ChunkMask
from chunksft.ops.masks import CompactLayout

TRAINING_MODES = ("pretrain", "sft", "bd3", "chunk_sft")


@dataclass
class HybridOutput(ModelOutput):
    """Unpacks as `logits, loss = model(...)` (the seed API); the rest are attributes.

    A transformers ModelOutput (a dict) so that DeepSpeed ZeRO-3 sees its tensors.
    logits: [B, L, V] (x_t stream in chunk_sft, refined on masked chunks) or None.
    chunk_index: int64 [M, 2] (row, chunk) of the masked chunks; chunk_targets / chunk_predictions:
    int64 [M, C]; chunk_ce: float [M] final-step CE per chunk (for the DEBUG view).
    """

    logits: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] | None = None
    noisy_input_ids: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    chunk_masked: torch.Tensor | None = None
    chunk_index: torch.Tensor | None = None
    chunk_targets: torch.Tensor | None = None
    chunk_predictions: torch.Tensor | None = None
    chunk_ce: torch.Tensor | None = None

    def __iter__(self):
        return iter((self.logits, self.loss))


class LMHeadLoss(nn.Module):
    """CE of the LM head on chosen positions without keeping [tokens, V] logits (fused linear CE).

    The head weight is an argument, not a submodule (it belongs to the backbone); under ZeRO-3 the
    engine registers it as an external parameter of this module, so DeepSpeed gathers it around
    this module's forward and backward.
    """

    def __init__(self, backend: str = "auto"):
        super().__init__()
        self.backend = backend

    def forward(self, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                token_weights: torch.Tensor | None = None, reduction: str = "mean"):
        """hidden: post-norm [..., H]; weight: [V, H]; targets: int64 [...] (all counted);
        token_weights: optional float [...] (see `linear_cross_entropy`).

        Returns (CE fp32 scalar with grad, `reduction` "mean" or "sum" of the weighted CE; argmax
        int64 [...]; per-row mean CE over the last dim fp32 [...-1], unweighted, detached). The argmax and
        the per-token CE come from the loss's own pass over the logits (`return_stats`).
        """
        flat, flat_targets = hidden.flatten(0, -2), targets.flatten()
        weights = None if token_weights is None else token_weights.flatten()
        ce, stats = linear_cross_entropy(flat, weight, flat_targets, token_weights=weights, reduction=reduction,
                                         backend=self.backend, return_stats=True)
        return ce, stats.argmax.view_as(targets), stats.ce.view_as(targets).mean(dim=-1)


class HybridModel(PreTrainedModel):
    config_class = HybridConfig
    base_model_prefix = "hybrid"
    main_input_name = "input_ids"
    _supports_attention_backend = True
    _no_split_modules = ["RefinementHead"]

    def __init__(self, config: HybridConfig, backbone: PreTrainedModel | None = None):
        super().__init__(config)
        if backbone is None:
            backbone = AutoModelForCausalLM.from_config(config.backbone_config(),
                                                        attn_implementation=ATTN_IMPLEMENTATION)
        else:
            backbone.set_attn_implementation(ATTN_IMPLEMENTATION)
            # A given backbone comes initialised (loaded, or built by its owner): the wrapper's weight
            # init (post_init, `init_added_weights`) must never touch it. transformers skips modules
            # that carry this flag.
            for module in backbone.modules():
                module._is_hf_initialized = True
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        self.head = RefinementHead(hidden, config.head_hidden_size, config.head_num_heads, config.chunk_size,
                                   config.latent_steps, config.head_gradient, config.backend)
        self.lm_loss = LMHeadLoss(config.backend)
        self.stepwise_chunk_sft = StepwiseChunkSFT()
        if config.train_mask_embedding:
            # A learned offset of the mask token's embedding (zero init): trainable with a frozen,
            # ZeRO-3-partitioned embedding table, which __init__ could not read.
            self.mask_embedding_delta = nn.Parameter(torch.zeros(hidden))
        self.post_init()  # gathers the backbone's tied-weight keys (LM head <-> embeddings) for save/load
        if config.freeze_backbone:
            self.backbone.requires_grad_(False)

    @classmethod
    def from_backbone(cls, backbone, dtype: torch.dtype | None = None, **hybrid_kwargs) -> "HybridModel":
        """Wrap a transformers decoder: a model object (taken as it is), a hub name / local path (LLaDA
        checkpoints are converted to the Llama layout) or a config, built in `dtype` (None: the
        checkpoint's / transformers' default). The backbone's weights are never re-initialised; the
        head is initialised here, also under `deepspeed.zero.Init` (see `init_added_weights`)."""
        from chunksft.models.llada import is_llada_checkpoint, load_llada

        load = {"attn_implementation": ATTN_IMPLEMENTATION} | ({} if dtype is None else {"dtype": dtype})
        if isinstance(backbone, str) and is_llada_checkpoint(backbone):
            backbone = load_llada(backbone, **load)
        elif isinstance(backbone, str):
            backbone = AutoModelForCausalLM.from_pretrained(backbone, **load)
        elif not isinstance(backbone, PreTrainedModel):
            backbone = AutoModelForCausalLM.from_config(backbone, **load)
        config = HybridConfig(backbone=backbone.config.to_dict(), **hybrid_kwargs)
        # Under `deepspeed.zero.Init` the head's parameters are partitioned (empty) by the time
        # post_init would initialise them: build without init, then initialise what is new, gathered.
        with no_init_weights():
            model = cls(config, backbone=backbone)
        model.init_added_weights()
        return model

    def init_added_weights(self) -> None:
        """Initialise what the wrapper adds to a given backbone (refinement head, mask offset), never
        the backbone itself (its modules are marked initialised in __init__).

        Under ZeRO-3 (parameters built inside `deepspeed.zero.Init`) the added parameters are gathered
        on every rank, initialised, and rank 0's values are partitioned back (`modifier_rank=0`): what
        transformers' `from_pretrained` does for the keys a checkpoint lacks. Call it on every rank.
        """
        added = [p for name, p in self.named_parameters() if not name.startswith("backbone.")]
        if any(hasattr(p, "ds_id") for p in added):
            import deepspeed

            with deepspeed.zero.GatheredParameters(added, modifier_rank=0):
                self.initialize_weights()
        else:
            self.initialize_weights()
        self.tie_weights(recompute_mapping=False)

    def _init_weights(self, module):
        """transformers' init hook (under ZeRO-3 it runs on gathered parameters: transformers'
        `initialize_weights_zero3` / missing-key init, or `init_added_weights`). The backbone has its
        own `_init_weights`; this covers the head and the mask offset."""
        if isinstance(module, (nn.Linear, nn.RMSNorm, RefinementHead)):
            module.reset_parameters()
        elif module is self and self.config.train_mask_embedding:
            nn.init.zeros_(self.mask_embedding_delta)

    def zero3_gathered_parameters(self) -> dict[nn.Module, list[nn.Parameter]]:
        """Parameters each module reads without calling the module that owns them: ZeRO-3 must gather
        them around that module's forward and backward (the engine registers them as its external
        parameters). The refinement head computes with its submodules' weights directly (one fetch per
        head call); `lm_loss` reads the LM-head weight; `stepwise_chunk_sft` reads all of these and
        the final norm's."""
        head = list(self.head.parameters())
        return {self.head: head, self.lm_loss: [self.lm_head.weight],
                self.stepwise_chunk_sft: head + list(self.final_norm.parameters()) + [self.lm_head.weight]}

    # ------------------------------------------------------------------ backbone pieces
    @property
    def final_norm(self) -> nn.Module:
        return self.backbone.get_decoder().norm

    @property
    def lm_head(self) -> nn.Module:
        return self.backbone.get_output_embeddings()

    def decode(self, states: torch.Tensor) -> torch.Tensor:
        """Pre-norm states [..., H] -> logits [..., V] through the backbone's final norm + LM head."""
        return self.lm_head(self.final_norm(states))

    def backbone_states(self, input_ids: torch.Tensor, layout: ChunkLayout, position_ids: torch.Tensor | None = None,
                        past_key_values=None, use_cache: bool = False, read: int | None = None) -> torch.Tensor:
        """Pre-norm last-layer hidden states [B, S, H] of one backbone pass under `layout`.

        read: the caller reads only the first `read` positions (0: none, a pass that fills the cache);
        the result is then [B, read, H] and the last layer's MLP, which is position-wise and feeds
        nothing but the output, runs on those positions alone. Their values are the same up to rounding
        (a matmul over fewer rows). Not under activation checkpointing of the layer: its recomputation
        in backward runs without the hooks.
        """
        decoder = self.backbone.get_decoder()
        total = input_ids.shape[1]
        captured = []
        hooks = [self.final_norm.register_forward_hook(lambda mod, args, out: captured.append(args[0]))]
        last = decoder.layers[-1]
        checkpointed = getattr(last, "gradient_checkpointing", False) and last.training and torch.is_grad_enabled()
        last_mlp = getattr(last, "mlp", None) if read is not None and read < total and not checkpointed else None
        if last_mlp is not None:
            # The layer adds the MLP's output to its residual stream, so the skipped positions get 0.
            hooks += [last_mlp.register_forward_pre_hook(lambda mod, args: (args[0][:, :read], *args[1:])),
                      last_mlp.register_forward_hook(lambda mod, args, out: F.pad(out, (0, 0, 0, total - read)))]
        try:
            decoder(inputs_embeds=self._embed(input_ids), position_ids=position_ids, past_key_values=past_key_values,
                    use_cache=use_cache, chunk_layout=layout)
        finally:
            for hook in hooks:
                hook.remove()
        return captured[0] if read is None else captured[0][:, :read]

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeds = self.backbone.get_input_embeddings()(input_ids)
        if self.config.train_mask_embedding:
            is_mask = (input_ids == self.config.mask_token_id)[..., None]
            embeds = embeds + is_mask * self.mask_embedding_delta.to(embeds.dtype)
        return embeds

    def refine(self, chunk_states: torch.Tensor, num_steps: int | None = None, halt_threshold: float | None = None):
        """Run the head on chunk states [M, C, H]; returns its `RefinementTrace`."""
        return self.head(chunk_states, num_steps or self.config.max_recursive_steps, halt_threshold)

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, src_mask: torch.Tensor | None = None,
                training_mode: str | None = None, prompt_lens: torch.Tensor | None = None,
                chunk_masked: torch.Tensor | None = None, attention_layout: str | None = None, refine: bool = True,
                generator: torch.Generator | None = None, return_logits: bool = True) -> HybridOutput:
        """input_ids: int64 [B, L]; attention_mask: [B, L] (1 = token; right padding in chunk layouts);
        src_mask: bool [B, L] (sft); prompt_lens: int [B] (chunk layouts); chunk_masked: bool [B, N]
        overrides the chunk draw; generator: RNG of the noise (eval uses a fixed seed when None).
        """
        mode = training_mode if training_mode is not None else ("pretrain" if self.training else None)
        if mode is not None and mode not in TRAINING_MODES:
            raise ValueError(f"training_mode must be one of {TRAINING_MODES}, got {mode!r}")
        if mode is not None and generator is None and not self.training:
            generator = torch.Generator(device=input_ids.device).manual_seed(0)
        if mode == "chunk_sft":
            return self._chunk_sft(input_ids, attention_mask, prompt_lens, chunk_masked, attention_layout, refine,
                                   generator, return_logits)
        if mode == "bd3":
            return self._bd3(input_ids, attention_mask, prompt_lens, attention_layout, generator, return_logits)
        if mode in ("pretrain", "sft"):
            return self._diffusion(input_ids, attention_mask, src_mask, mode, generator)
        layout = self._layout(attention_layout or "bidirectional", attention_mask, prompt_lens)
        logits = self.decode(self.backbone_states(input_ids, layout))
        loss = masked_token_ce(logits, labels) if labels is not None else None
        return HybridOutput(logits=logits, loss=loss, metrics={})

    def _layout(self, name: str, attention_mask: torch.Tensor | None, prompt_lens: torch.Tensor | None) -> ChunkLayout:
        if name == "bidirectional":
            padding = None if attention_mask is None else attention_mask.to(torch.bool)
            return ChunkLayout("bidirectional", key_padding=padding, backend=self.config.backend)
        if prompt_lens is None:
            raise ValueError(f"attention_layout={name!r} needs prompt_lens (prompt length per row)")
        seq_lens = None if attention_mask is None else attention_mask.to(torch.long).sum(dim=1)
        return ChunkLayout(name, prompt_lens=prompt_lens.to(torch.long), chunk_size=self.config.chunk_size,
                           seq_lens=seq_lens, backend=self.config.backend)

    def _diffusion(self, input_ids, attention_mask, src_mask, mode, generator) -> HybridOutput:
        if mode == "sft" and src_mask is None:
            raise ValueError('training_mode="sft" needs src_mask (True on instruction tokens, which are never masked)')
        noisy, masked, p_mask = diffusion_mask(input_ids, src_mask if mode == "sft" else None,
                                               mask_id=self.config.mask_token_id, eps=self.config.diffusion_eps,
                                               generator=generator, attention_mask=attention_mask)
        maskable = torch.ones_like(masked) if attention_mask is None else attention_mask.to(torch.bool)
        if mode == "sft":
            maskable = maskable & ~src_mask.to(torch.bool)
        logits = self.decode(self.backbone_states(noisy, self._layout("bidirectional", attention_mask, None)))
        loss = diffusion_loss(logits, input_ids, masked, p_mask, maskable)
        labels = torch.where(masked, input_ids, torch.full_like(input_ids, -100))
        metrics = {"masked_tokens": masked.sum().float(), "p_mask": p_mask.mean()}
        return HybridOutput(logits=logits, loss=loss, metrics=metrics, noisy_input_ids=noisy, labels=labels)

    def _check_chunk_mode(self, mode: str, prompt_lens, attention_layout) -> None:
        if prompt_lens is None:
            raise ValueError(f'training_mode="{mode}" needs prompt_lens (prompt length per row)')
        if attention_layout not in (None, "bd3"):
            raise ValueError(f'{mode} trains under the "bd3" layout, got attention_layout={attention_layout!r}')

    def _one_pass(self, input_ids: torch.Tensor, drawn: ChunkMask, compact: CompactLayout, attention_mask,
                  prompt_lens, stream: bool):
        """The one backbone pass over `[x_t ; x_0]` (bd3 layout) for a chunk draw and its compact layout.

        Returns (x_t-stream states [B, L, H], None without `stream` on the compact pass, which does not
        compute them; selected-chunk states [M, C, H], rows [M, C] and token positions [M, C] of the
        selected chunks, their (row, chunk) index [M, 2], row-major).
        """
        cfg = self.config
        batch, seq_len = input_ids.shape
        index = drawn.chunk_masked.nonzero()  # [M, 2] (row, chunk), row-major
        # compact.real [B, NM] selects the same chunks in the same order
        token_pos = compact.positions.unflatten(1, (-1, cfg.chunk_size))[compact.real]  # [M, C]
        rows = index[:, :1].expand_as(token_pos)
        if cfg.compact_noisy_stream:
            noisy_states, chunk_states = self._compact_pass(input_ids, drawn, compact, attention_mask, prompt_lens,
                                                            rows, token_pos, stream)
        else:
            # [x_t ; x_0] in full: both streams share position ids.
            positions = torch.arange(seq_len, device=input_ids.device).repeat(2)[None].expand(batch, -1)
            states = self.backbone_states(torch.cat([drawn.input_ids, input_ids], dim=1),
                                          self._layout("bd3", attention_mask, prompt_lens), position_ids=positions)
            noisy_states = states[:, :seq_len]
            chunk_states = noisy_states[rows, token_pos]  # [M, C, H]
        return noisy_states, chunk_states, rows, token_pos, index

    def _chunk_sft(self, input_ids, attention_mask, prompt_lens, chunk_masked, attention_layout, refine, generator,
                   return_logits) -> HybridOutput:
        self._check_chunk_mode("chunk_sft", prompt_lens, attention_layout)
        cfg = self.config
        drawn, compact = chunk_mask(input_ids, prompt_lens, chunk_size=cfg.chunk_size,
                                    mask_prob=cfg.mask_probability, mask_id=cfg.mask_token_id, generator=generator,
                                    backend=cfg.backend, attention_mask=attention_mask, chunk_masked=chunk_masked,
                                    return_layout=True)
        noisy_states, chunk_states, rows, token_pos, index = self._one_pass(input_ids, drawn, compact, attention_mask,
                                                                            prompt_lens, stream=return_logits)
        targets = input_ids[rows, token_pos]
        loss, metrics, final_states, final_pred, final_chunk_ce = self.supervise(chunk_states, targets, refine)
        metrics["masked_chunks"] = torch.tensor(float(index.shape[0]))
        logits = None
        if return_logits:
            logits = self.decode(noisy_states).index_put((rows, token_pos), self.decode(final_states))
        return HybridOutput(logits=logits, loss=loss, metrics=metrics, noisy_input_ids=drawn.input_ids,
                            labels=drawn.labels, chunk_masked=drawn.chunk_masked, chunk_index=index,
                            chunk_targets=targets, chunk_predictions=final_pred, chunk_ce=final_chunk_ce)

    def supervise(self, chunk_states: torch.Tensor, targets: torch.Tensor, refine: bool = True) -> SupervisionResult:
        """The refinement head + the chunk_sft objective on the masked chunks' states.

        chunk_states: pre-norm [M, C, H]; targets: int64 [M, C]. Returns (loss, metrics, final states
        [M, C, H], final argmax int64 [M, C], final CE per chunk fp32 [M]). Training under
        head_gradient "last" differentiates each step as it is computed (`StepwiseChunkSFT`: memory
        flat in K); "full", evaluation and `refine=False` build one graph. Same values either way.
        """
        cfg = self.config
        if refine and cfg.head_gradient == "last" and torch.is_grad_enabled():
            return self.stepwise_chunk_sft(self.head, self.final_norm, self.lm_loss, self.lm_head.weight, chunk_states,
                                           targets, cfg.max_recursive_steps, cfg.deep_supervision_weight,
                                           cfg.enable_deep_supervision, cfg.deep_supervision_interval)
        trace = self.refine(chunk_states) if refine else None
        step_states, halt_logits = [chunk_states], []
        if refine:  # only the supervised steps are decoded (deep_supervision_interval)
            keep = supervised_steps(len(trace.states), cfg.deep_supervision_interval)
            step_states, halt_logits = [trace.states[k] for k in keep], [trace.confidence[k] for k in keep]
        step_ce, step_pred, final_chunk_ce = [], [], None
        for y in step_states:
            ce, pred, final_chunk_ce = self.lm_loss(self.final_norm(y), self.lm_head.weight, targets)
            step_ce.append(ce)
            step_pred.append(pred)
        if refine:
            loss, metrics = chunk_sft_loss(step_ce, step_pred, halt_logits, targets,
                                           deep_supervision_weight=cfg.deep_supervision_weight,
                                           enable_deep_supervision=cfg.enable_deep_supervision)
        else:
            loss, metrics = step_ce[0], {"ce_final": step_ce[0].detach()}
        return SupervisionResult(loss, metrics, step_states[-1], step_pred[-1], final_chunk_ce)

    def _bd3(self, input_ids, attention_mask, prompt_lens, attention_layout, generator, return_logits
             ) -> HybridOutput:
        """Block diffusion of the backbone: every response chunk is noised at its own rate t."""
        self._check_chunk_mode("bd3", prompt_lens, attention_layout)
        cfg = self.config
        batch = input_ids.shape[0]
        drawn, compact = chunk_mask(input_ids, prompt_lens, chunk_size=cfg.chunk_size, mask_prob=1.0,
                                    mask_id=cfg.mask_token_id, generator=generator, backend=cfg.backend,
                                    attention_mask=attention_mask, token_rate=(cfg.bd3_t_min, cfg.bd3_t_max),
                                    return_layout=True)
        noisy_states, chunk_states, rows, token_pos, index = self._one_pass(input_ids, drawn, compact, attention_mask,
                                                                            prompt_lens, stream=return_logits)
        masked = drawn.labels[rows, token_pos] != IGNORE_INDEX                 # [M, C]
        rate = drawn.chunk_rate[index[:, 0], index[:, 1]][:, None].expand_as(masked)
        response_tokens = drawn.chunk_masked.sum(dim=1) * cfg.chunk_size  # mask_prob=1 selects every whole chunk
        weights = block_diffusion_token_weights(rows[masked], rate[masked], response_tokens, batch)
        targets = input_ids[rows, token_pos][masked]
        loss, pred, _ = self.lm_loss(self.final_norm(chunk_states[masked]), self.lm_head.weight, targets,
                                     token_weights=weights, reduction="sum")
        metrics = {"masked_tokens": masked.sum().float(), "token_acc": (pred == targets).float().mean(),
                   "mean_rate": drawn.chunk_rate[drawn.chunk_masked].mean()}
        logits = self.decode(noisy_states) if return_logits else None
        return HybridOutput(logits=logits, loss=loss, metrics=metrics, noisy_input_ids=drawn.input_ids,
                            labels=drawn.labels, chunk_masked=drawn.chunk_masked, chunk_index=index)

    def _compact_pass(self, input_ids, drawn: ChunkMask, compact: CompactLayout, attention_mask, prompt_lens, rows,
                      token_pos, stream: bool):
        """The bd3 pass with x_t reduced to its selected chunks: `[selected chunks of x_t ; x_0]`.

        Every x_t position outside a selected chunk holds its clean token and sees the same keys as
        its x_0 twin, so its output equals the clean stream's: only selected chunks need computing.
        Without `stream` only the selected chunks' outputs are read, so the x_0 positions skip the
        last layer's MLP (`backbone_states(read=...)`): x_0 is needed there only as keys and values.
        Returns (x_t-stream states [B, L, H] if `stream` else None, selected-chunk states [M, C, H] in
        `chunk_masked.nonzero()` order).
        """
        cfg = self.config
        real = compact.real  # [B, NM]
        real_slots = real[:, :, None].expand(-1, -1, cfg.chunk_size).flatten(1)  # [B, NM*C]
        pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else cfg.mask_token_id
        slot_ids = torch.where(real_slots, torch.gather(drawn.input_ids, 1, compact.positions), pad_id)
        positions = torch.cat([compact.positions,
                               torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)], dim=1)
        layout = self._layout("compact", attention_mask, prompt_lens)
        layout.chunk_index = compact.chunk_index
        n_slots = slot_ids.shape[1]
        states = self.backbone_states(torch.cat([slot_ids, input_ids], dim=1), layout, position_ids=positions,
                                      read=None if stream else n_slots)
        chunk_states = states[:, :n_slots].unflatten(1, (-1, cfg.chunk_size))[real]  # [M, C, H]
        if not stream:
            return None, chunk_states
        return states[:, n_slots:].index_put((rows, token_pos), chunk_states), chunk_states

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def generate(self, prompt_ids, max_length: int, **kwargs):
        """Chunk-by-chunk diffusion decoding under the block_causal layout (see `models/generation.py`)."""
        from chunksft.models.generation import generate_chunks
        return generate_chunks(self, prompt_ids, max_length=max_length, enable_refinement=False, **kwargs)

    @torch.no_grad()
    def generate_with_refinement(self, prompt_ids, max_length: int, enable_refinement: bool = True, **kwargs):
        """`generate` with the refinement head in the loop; also returns per-chunk steps and confidences."""
        from chunksft.models.generation import generate_chunks
        return generate_chunks(self, prompt_ids, max_length=max_length, enable_refinement=enable_refinement, **kwargs)


