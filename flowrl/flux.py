"""FLUX for MixGRPO: FLUX.1-dev through diffusers for real runs, and a tiny randomly initialized Flux transformer for
GPU smoke runs and benchmarks.

  flow.model = flux              FluxPipeline.from_pretrained(flow.flux_path): the transformer is trained (full
                                 fine-tune in the controller process: needs one large GPU; no FSDP here), text
                                 encoders and VAE are frozen; rewards see decoded images in [0, 1]
  flow.model = flux_tiny_random  FluxTransformer2DModel with ~0.3M random parameters, 16x16 latent tokens of 16
                                 channels, fixed random text embeddings per prompt, decode = identity (reward: latent)

diffusers is imported lazily; without it (or without the weights) `FluxUnavailable` says what to install. When
diffusers is missing, `build_transformer(..., allow_fallback=True)` gives `TinyDiT`, a same-size plain transformer of
this project (benchmarks say which one ran). Latents are Flux-packed: [N, tokens, channels].

    python benchmarks/mixgrpo_bench.py --gpu        # tiny Flux on one GPU
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from flowrl.bundle import FlowBundle
from flowrl.rewards import hash_prompt

BUILTIN_PROMPTS = [
    "a red fox in fresh snow, golden hour", "an astronaut riding a horse on the moon", "a bowl of ramen, studio light",
    "a lighthouse in a storm, oil painting", "a cat wearing a tiny wizard hat", "a futuristic city at night, neon",
    "a watercolor of cherry blossoms", "a vintage car on a desert highway",
]
TINY = dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
            axes_dims_rope=(4, 6, 6))
TINY_TOKENS_SIDE = 16          # 16 x 16 latent tokens
TINY_TEXT_TOKENS = 8


class FluxUnavailable(RuntimeError):
    """diffusers or the FLUX weights are missing; the message says what to install or download."""


def _diffusers():
    try:
        import diffusers
        return diffusers
    except ImportError as e:
        raise FluxUnavailable(f"flow.model=flux* needs diffusers (pip install 'diffusers>=0.30'): {e}") from None


def image_ids(h: int, w: int) -> torch.Tensor:
    """Flux positional ids of an h x w token grid: [h*w, 3] = (0, row, col)."""
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    return ids.reshape(h * w, 3)


class FluxVelocity(nn.Module):
    """v(x [N, tokens, C], s [N], cond {txt [N, L, D], pooled [N, Dp]}) through a Flux transformer."""

    def __init__(self, transformer: nn.Module, side: int, text_tokens: int, guidance: float):
        super().__init__()
        self.transformer, self.guidance = transformer, guidance
        self.register_buffer("img_ids", image_ids(side, side), persistent=False)
        self.register_buffer("txt_ids", torch.zeros(text_tokens, 3), persistent=False)

    def forward(self, x: torch.Tensor, s: torch.Tensor, cond: dict) -> torch.Tensor:
        tr = self.transformer
        dt = next(tr.parameters()).dtype
        g = torch.full_like(s, self.guidance) if getattr(tr.config, "guidance_embeds", False) else None
        # Flux takes the timestep as s in [0, 1] (the pipeline divides its 0..1000 timesteps by 1000).
        out = tr(hidden_states=x.to(dt), timestep=s.to(dt), guidance=None if g is None else g.to(dt),
                 encoder_hidden_states=cond["txt"].to(dt), pooled_projections=cond["pooled"].to(dt),
                 img_ids=self.img_ids.to(dt), txt_ids=self.txt_ids.to(dt), return_dict=False)[0]
        return out.to(x.dtype)


class TinyDiT(nn.Module):
    """A plain transformer with the tiny Flux's interface, for machines without diffusers (benchmarks only)."""

    def __init__(self, channels: int = 16, width: int = 48, layers: int = 3, heads: int = 2, text_dim: int = 32):
        super().__init__()
        self.inp, self.out = nn.Linear(channels, width), nn.Linear(width, channels)
        self.txt, self.pooled = nn.Linear(text_dim, width), nn.Linear(text_dim, width)
        self.time = nn.Sequential(nn.Linear(32, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.TransformerEncoder(nn.TransformerEncoderLayer(width, heads, 4 * width, 0.0, batch_first=True,
                                                                       norm_first=True), layers,
                                            enable_nested_tensor=False)

    def forward(self, x: torch.Tensor, s: torch.Tensor, cond: dict) -> torch.Tensor:
        freqs = torch.exp(torch.arange(16, device=x.device) * (-math.log(1000.0) / 16))
        ang = (s.float() * 1000)[:, None] * freqs[None]                                       # [N, 16]
        t = self.time(torch.cat([ang.sin(), ang.cos()], 1).to(x.dtype)) + self.pooled(cond["pooled"].to(x.dtype))
        h = torch.cat([self.txt(cond["txt"].to(x.dtype)), self.inp(x) + t[:, None]], 1)       # [N, L + tokens, W]
        return self.out(self.blocks(h)[:, cond["txt"].shape[1]:])


# A larger random Flux for GPU benchmarks: 1024 latent tokens of 64 channels (a 512 px image), 2+4 blocks, width 256,
# so that model calls are compute-bound and sample-row savings show up as time.
MEDIUM = dict(TINY, in_channels=64, num_layers=2, num_single_layers=4, attention_head_dim=64, num_attention_heads=4,
              joint_attention_dim=256, pooled_projection_dim=256, axes_dims_rope=(16, 24, 24))
SIZES = {"tiny": (TINY, TINY_TOKENS_SIDE, TINY_TEXT_TOKENS), "medium": (MEDIUM, 32, 64)}


def build_transformer(allow_fallback: bool = False, size: str = "tiny") -> tuple[nn.Module, str]:
    """A randomly initialized Flux transformer (or a same-size TinyDiT without diffusers when allowed) and its name."""
    cfg = SIZES[size][0]
    try:
        diffusers = _diffusers()
    except FluxUnavailable:
        if not allow_fallback:
            raise
        # Flux blocks carry ~2x the parameters of a plain encoder layer of the same width (adaLN, fused MLP, two
        # streams): width 48 x 3 layers (tiny) and width 256 x 12 layers (medium) match the parameter counts.
        width = 48 if size == "tiny" else cfg["attention_head_dim"] * cfg["num_attention_heads"]
        layers = 3 if size == "tiny" else 2 * (cfg["num_layers"] + cfg["num_single_layers"])
        return (TinyDiT(channels=cfg["in_channels"], width=width, layers=layers,
                        heads=cfg["num_attention_heads"], text_dim=cfg["joint_attention_dim"]),
                f"TinyDiT-{size} (diffusers missing)")
    return diffusers.FluxTransformer2DModel(**cfg), f"FluxTransformer2DModel-{size} (random, " \
                                                    f"{cfg['num_layers']}+{cfg['num_single_layers']} blocks)"


def _text_cond(prompts: list, text_tokens: int, dim: int) -> dict:
    """Fixed random text embeddings per prompt (seeded by the prompt), standing in for T5/CLIP in smoke runs."""
    txt, pooled = [], []
    for p in prompts:
        g = torch.Generator().manual_seed(hash_prompt(p))
        txt.append(torch.randn(text_tokens, dim, generator=g))
        pooled.append(torch.randn(dim, generator=g))
    return {"txt": torch.stack(txt), "pooled": torch.stack(pooled)}


def build_tiny_bundle(device: str, allow_fallback: bool = False, seed: int = 0, size: str = "tiny") -> FlowBundle:
    cfg, side, text_tokens = SIZES[size]
    torch.manual_seed(seed)
    transformer, name = build_transformer(allow_fallback=allow_fallback, size=size)
    model = (FluxVelocity(transformer, side, text_tokens, 3.5)
             if not isinstance(transformer, TinyDiT) else transformer).to(device)
    model.display_name = name

    def make_cond(prompts: list) -> dict:
        return {k: v.to(device) for k, v in _text_cond(prompts, text_tokens, cfg["joint_attention_dim"]).items()}
    return FlowBundle(model=model, latent_shape=(side * side, cfg["in_channels"]), prompts=list(BUILTIN_PROMPTS),
                      make_cond=make_cond, decode=lambda x: x, device=device)


def _read_prompts(path: Optional[str]) -> list[str]:
    if not path:
        return list(BUILTIN_PROMPTS)
    with open(path) as fh:
        prompts = [ln.strip() for ln in fh if ln.strip()]
    if not prompts:
        raise ValueError(f"flow.prompts_file: {path} has no prompts")
    return prompts


def build_flux_dev_bundle(flow_cfg, device: str) -> FlowBundle:
    diffusers = _diffusers()
    try:
        pipe = diffusers.FluxPipeline.from_pretrained(flow_cfg.flux_path, torch_dtype=torch.bfloat16)
    except Exception as e:   # noqa: BLE001  (missing/gated weights surface as several exception types)
        raise FluxUnavailable(f"flow.flux_path: cannot load {flow_cfg.flux_path!r} ({type(e).__name__}: {e}); "
                              f"download FLUX.1-dev (gated on the Hub) and point flow.flux_path at it") from None
    pipe.to(device)
    for m in (pipe.text_encoder, pipe.text_encoder_2, pipe.vae):
        m.requires_grad_(False)
    side = flow_cfg.image_size_px // 16                          # VAE /8, then 2x2 packing
    tr = pipe.transformer.float()                               # fp32 master weights; bf16 via flow.precision
    model = FluxVelocity(tr, side, 512, flow_cfg.guidance_scale).to(device)

    @torch.no_grad()
    def make_cond(prompts: list) -> dict:
        emb, pooled, _ = pipe.encode_prompt(prompt=list(prompts), prompt_2=None, device=device,
                                            max_sequence_length=512)
        return {"txt": emb, "pooled": pooled}

    @torch.no_grad()
    def decode(x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[0], x.shape[-1] // 4
        lat = x.view(n, side, side, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(n, c, side * 2, side * 2)
        lat = lat / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        img = pipe.vae.decode(lat.to(pipe.vae.dtype), return_dict=False)[0]
        return ((img.float() + 1) / 2).clamp(0, 1)

    return FlowBundle(model=model, latent_shape=(side * side, 64), prompts=_read_prompts(flow_cfg.prompts_file),
                      make_cond=make_cond, decode=decode, device=device)


def build_flux_bundle(flow_cfg, device: str) -> FlowBundle:
    if flow_cfg.model == "flux_tiny_random":
        return build_tiny_bundle(device)
    return build_flux_dev_bundle(flow_cfg, device)
