"""Per-sample reward functions for MixGRPO, by name (`flow.reward_weights` keys).

Every reward is `fn(samples, prompts) -> torch.Tensor [N]` (float). `samples` is what the model bundle's `decode`
returns (the toy: points [N, 2]; FLUX: images [N, 3, H, W] in [0, 1]); `prompts` is the list of the N prompts
(toy: a tensor of prompt indices; FLUX: strings).

  analytic      toy: -||x - mu_{2c}||                      (always available)
  latent        tiny-FLUX smoke runs: -|mean(latent) - target(prompt)|, target +-0.5 by prompt parity
  hps_v2.1      HPS-v2.1 via the `hpsv2` package            (needs the package and its checkpoint download)
  pickscore     PickScore_v1 via transformers              (needs the yuvalkirstain/PickScore_v1 weights)
  imagereward   ImageReward-v1.0 via the `image-reward` pkg  (needs the package and its checkpoint)
  clip          CLIP score, openai/clip-vit-large-patch14  (needs the weights)

The model-based ones are loaded lazily, once per process; when a package or the weights are missing,
`RewardUnavailable` says which and how to get it. They are not exercised by the CPU tests (no weights there).
"""
from __future__ import annotations

from typing import Callable

import torch

from flowrl import toy

RewardFn = Callable[[torch.Tensor, object], torch.Tensor]


class RewardUnavailable(RuntimeError):
    """A reward model cannot be loaded here (package or weights missing); the message says what to install."""


def analytic_reward(samples: torch.Tensor, prompts: object) -> torch.Tensor:
    return toy.toy_reward(samples, torch.as_tensor(prompts))


def latent_reward(samples: torch.Tensor, prompts: object) -> torch.Tensor:
    idx = torch.as_tensor([hash_prompt(p) for p in prompts]) if not torch.is_tensor(prompts) else prompts
    target = torch.where(idx % 2 == 0, 0.5, -0.5)                                  # [N]
    return -(samples.float().flatten(1).mean(1).cpu() - target).abs()


def hash_prompt(p: object) -> int:
    """Stable small integer of a prompt (Python's hash() of a str changes between processes)."""
    return int(p) if isinstance(p, int) else sum(ord(ch) for ch in str(p))


def _missing(name: str, what: str, err: Exception) -> RewardUnavailable:
    return RewardUnavailable(f"reward '{name}' is unavailable: {what} ({type(err).__name__}: {err}). "
                             f"Use reward_weights without it, or install it on the machine that runs rewards.")


def _to_pil(images: torch.Tensor) -> list:
    from PIL import Image
    arr = (images.float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()   # [N, H, W, 3]
    return [Image.fromarray(a) for a in arr]


def _hps(name: str) -> RewardFn:
    try:
        import hpsv2
    except ImportError as e:
        raise _missing(name, "pip install hpsv2 (it downloads the HPS-v2.1 checkpoint on first use)", e) from None

    def fn(images: torch.Tensor, prompts: object) -> torch.Tensor:
        pils = _to_pil(images)
        return torch.tensor([float(hpsv2.score(im, str(p), hps_version="v2.1")[0]) for im, p in zip(pils, prompts)])
    return fn


def _clip_like(name: str, model_id: str, processor_id: str, scale_by_logit: bool) -> RewardFn:
    try:
        from transformers import AutoModel, AutoProcessor
        processor = AutoProcessor.from_pretrained(processor_id)
        model = AutoModel.from_pretrained(model_id).eval()
    except Exception as e:   # noqa: BLE001  (missing weights surface as several exception types)
        raise _missing(name, f"weights {model_id} / {processor_id} not found locally or on the Hub", e) from None

    @torch.no_grad()
    def fn(images: torch.Tensor, prompts: object) -> torch.Tensor:
        inputs = processor(images=_to_pil(images), text=[str(p) for p in prompts], padding=True, truncation=True,
                           return_tensors="pt")
        img = model.get_image_features(pixel_values=inputs["pixel_values"])
        txt = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
        sim = (img * txt).sum(-1)                                                  # [N]
        return sim * model.logit_scale.exp() if scale_by_logit else sim
    return fn


def _image_reward(name: str) -> RewardFn:
    try:
        import ImageReward as RM
        model = RM.load("ImageReward-v1.0")
    except Exception as e:   # noqa: BLE001
        raise _missing(name, "pip install image-reward (and its ImageReward-v1.0 checkpoint)", e) from None

    @torch.no_grad()
    def fn(images: torch.Tensor, prompts: object) -> torch.Tensor:
        return torch.tensor([float(model.score(str(p), [im])) for im, p in zip(_to_pil(images), prompts)])
    return fn


_CACHE: dict[str, RewardFn] = {}


def get_reward(name: str) -> RewardFn:
    """The reward function called `name` (loaded once per process). Raises RewardUnavailable or KeyError."""
    if name in _CACHE:
        return _CACHE[name]
    if name == "analytic":
        fn = analytic_reward
    elif name == "latent":
        fn = latent_reward
    elif name == "hps_v2.1":
        fn = _hps(name)
    elif name == "pickscore":
        fn = _clip_like(name, "yuvalkirstain/PickScore_v1", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", True)
    elif name == "imagereward":
        fn = _image_reward(name)
    elif name == "clip":
        fn = _clip_like(name, "openai/clip-vit-large-patch14", "openai/clip-vit-large-patch14", False)
    else:
        raise KeyError(f"flow.reward_weights: unknown reward {name!r}; known: analytic, latent, hps_v2.1, pickscore, "
                       f"imagereward, clip")
    _CACHE[name] = fn
    return fn


def score_all(names: list[str], samples: torch.Tensor, prompts: object,
              custom: dict[str, RewardFn] | None = None) -> dict[str, list[float]]:
    """Every named reward of every sample: {name: [N floats]}. `custom` overrides names (tests, experiments)."""
    out = {}
    for name in names:
        fn = (custom or {}).get(name) or get_reward(name)
        out[name] = [float(v) for v in torch.as_tensor(fn(samples, prompts)).flatten()]
    return out
