"""The recursive refinement head (TRM-style), chunk-local.

Per masked chunk it keeps an answer state y (initialised with the backbone's pre-norm hidden states
of the chunk, so decoding y_0 reproduces the backbone's logits) and a latent z (learned init, one
vector per chunk position). Each refinement step runs `latent_steps` updates z <- core(z + x + y)
and then the delta update y <- y + f(y, z); a halting head reads the pooled core state and predicts
whether the step's argmax is entirely correct. The head only sees its chunk's states, so the
causality of the backbone layout is preserved.

Gradient (`gradient`): "full" backpropagates through every update of every step. "last" is TRM's
rule: within a step the z updates except the last run without gradient, and the (y, z) carried to
the next step is detached, so each step's loss trains one recursion (the last z update and the y
update) and the backward cost per step no longer grows with `latent_steps` or with the step index;
training then differentiates each step as soon as it is computed (`models/deep_supervision.py`), so
the head's activation memory does not grow with the number of steps either. The forward values are
the same either way.

The submodules hold the parameters (their state-dict keys are the stock `nn.Linear` / `nn.RMSNorm`
layout) but are never called through their hooks: the head computes with their weights functionally
(`_linear`, `_norm`, `CoreBlock.forward`). The norms run `chunksft.ops.rms_norm` on the model's ops
backend (on CPU the C++ kernel: autograd's own RMSNorm backward is ~10 small ops per norm).
Under ZeRO-3 the engine registers every head parameter on the head itself
(`HybridModel.zero3_gathered_parameters`), so one fetch per head forward gathers them all, instead of
one hooked fetch per Linear and norm, and no ZeRO-3 module hook fires inside the step-by-step backward
of `models/deep_supervision.py`.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from chunksft.hyperparameters import GRADIENTS
from chunksft.ops.rms_norm import rms_norm


def _linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, layer.weight, layer.bias)


def _norm(norm: nn.RMSNorm, x: torch.Tensor, backend: str) -> torch.Tensor:
    return rms_norm(x, norm.weight, norm.eps, backend)


class CoreBlock(nn.Module):
    """Pre-norm transformer block over the C tokens of one chunk (bidirectional within the chunk)."""

    def __init__(self, dim: int, num_heads: int, backend: str = "auto"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"head_hidden_size {dim} must be divisible by head_num_heads {num_heads}")
        self.num_heads, self.backend = num_heads, backend
        self.attn_norm = nn.RMSNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.mlp_norm = nn.RMSNorm(dim, eps=1e-6)
        self.mlp_in = nn.Linear(dim, 4 * dim, bias=False)
        self.mlp_out = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h: [M, C, d] -> [M, C, d]"""
        m, c, d = h.shape
        qkv = _linear(self.qkv, _norm(self.attn_norm, h, self.backend))
        q, k, v = qkv.view(m, c, 3, self.num_heads, d // self.num_heads).unbind(2)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        h = h + _linear(self.attn_out, a.transpose(1, 2).reshape(m, c, d))
        return h + _linear(self.mlp_out, F.gelu(_linear(self.mlp_in, _norm(self.mlp_norm, h, self.backend))))


class RefinementTrace(NamedTuple):
    states: list[torch.Tensor]       # per step y_k: [M, C, H] (backbone width, pre-norm)
    confidence: list[torch.Tensor]   # per step halting logit: [M] float32
    steps: torch.Tensor              # int64 [M]: steps applied to each chunk


class RefinementHead(nn.Module):
    """hidden_size: backbone width H; dim: head width d; chunk_size: C; gradient: "full" | "last";
    backend: the ops backend of its norms (`chunksft.ops.rms_norm`)."""

    def __init__(self, hidden_size: int, dim: int, num_heads: int, chunk_size: int, latent_steps: int,
                 gradient: str = "last", backend: str = "auto"):
        super().__init__()
        if gradient not in GRADIENTS:
            raise ValueError(f"head gradient must be one of {', '.join(GRADIENTS)}, got {gradient!r}")
        self.latent_steps, self.gradient, self.backend = latent_steps, gradient, backend
        self.x_in = nn.Linear(hidden_size, dim, bias=False)
        self.y_in = nn.Linear(hidden_size, dim, bias=False)
        self.z_init = nn.Parameter(torch.empty(chunk_size, dim))
        self.core = CoreBlock(dim, num_heads, backend)
        self.out_norm = nn.RMSNorm(dim, eps=1e-6)
        self.delta = nn.Linear(dim, hidden_size, bias=False)
        self.halt = nn.Linear(dim, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The head's own init (its Linear / RMSNorm children initialise themselves first).

        Zero delta: every step starts as the identity, so an untrained head decodes the backbone's
        logits; the halting head starts unconfident (sigmoid(-2) ~ 0.12)."""
        nn.init.normal_(self.z_init, std=0.02)
        nn.init.zeros_(self.delta.weight)
        nn.init.zeros_(self.halt.weight)
        nn.init.constant_(self.halt.bias, -2.0)

    def start(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Chunk states x: [M, C, H] -> (x_proj [M, C, d], y_0 = x [M, C, H], z_0 [M, C, d])."""
        x_proj = _linear(self.x_in, x)
        return x_proj, x, self.z_init.to(x_proj.dtype).expand_as(x_proj)

    def step(self, x_proj: torch.Tensor, y: torch.Tensor, z: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One refinement step. x_proj: [M, C, d]; y: [M, C, H]; z: [M, C, d] -> (y', z', halt logit [M])."""
        y_proj = _linear(self.y_in, y)
        free = self.latent_steps - 1 if self.gradient == "last" else 0
        with torch.no_grad():
            for _ in range(free):
                z = self.core.forward(z + x_proj + y_proj)
        for _ in range(self.latent_steps - free):
            z = self.core.forward(z + x_proj + y_proj)
        update = _norm(self.out_norm, self.core.forward(z + y_proj), self.backend)
        y = y + _linear(self.delta, update)
        return y, z, _linear(self.halt, update.mean(dim=1)).squeeze(-1).float()

    def forward(self, x: torch.Tensor, num_steps: int, halt_threshold: float | None = None,
                early_exit: bool = True) -> RefinementTrace:
        """Refine chunk states x: [M, C, H] for `num_steps` steps.

        With `halt_threshold`, a chunk stops once sigmoid(halt logit) >= threshold (inference):
        later steps leave its y unchanged and its step count stops growing. `early_exit=False` keeps
        looping after every chunk halted (ZeRO-3 ranks must run the same number of forwards).
        """
        x_proj, y, z = self.start(x)
        active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        steps = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        states, confidence = [], []
        for _ in range(num_steps):
            new_y, new_z, halt = self.step(x_proj, y, z)
            keep = active[:, None, None]
            y, z = torch.where(keep, new_y, y), torch.where(keep, new_z, z)
            steps = steps + active.long()
            states.append(y)
            confidence.append(halt)
            if self.gradient == "last":  # the next step starts from values, not from this step's graph
                y, z = y.detach(), z.detach()
            if halt_threshold is not None:
                active = active & (torch.sigmoid(halt) < halt_threshold)
                if early_exit and not bool(active.any()):
                    break
        return RefinementTrace(states, confidence, steps)
