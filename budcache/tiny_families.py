"""Tiny random diffusers transformers and pipelines for many model families, built offline.

Sizes follow diffusers' own fast tests (``tests/models/transformers`` and ``tests/pipelines``). Every builder seeds
``torch.manual_seed(seed)`` itself and returns float32 CPU modules in ``eval()`` mode with ``requires_grad_(False)``.
Pipelines carry no text encoder or tokenizer: ``*_call_kwargs`` supply precomputed ``prompt_embeds`` (and whatever
else the pipeline needs to skip encoding); add ``num_inference_steps`` yourself. ``FAMILIES`` at the bottom lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

import torch
from diffusers import (
    AutoencoderDC,
    AutoencoderKL,
    AutoencoderKLFlux2,
    AutoencoderKLHunyuanVideo15,
    AutoencoderKLLTX2Audio,
    AutoencoderKLLTX2Video,
    AutoencoderKLQwenImage,
    AutoencoderKLQwenImage21,
    AutoencoderKLWan,
    ChromaTransformer2DModel,
    CogView4Transformer2DModel,
    FlowMatchEulerDiscreteScheduler,
    Flux2Transformer2DModel,
    HunyuanVideo15Transformer3DModel,
    LTX2VideoTransformer3DModel,
    QwenImage21Transformer2DModel,
    QwenImageTransformer2DModel,
    SanaTransformer2DModel,
    WanTransformer3DModel,
    ZImageTransformer2DModel,
)
from torch import nn

if TYPE_CHECKING:
    from diffusers import (
        ChromaPipeline,
        CogView4Pipeline,
        DiffusionPipeline,
        Flux2KleinPipeline,
        Flux2Pipeline,
        HunyuanVideo15Pipeline,
        LTX2Pipeline,
        QwenImage21Pipeline,
        QwenImagePipeline,
        SanaPipeline,
        WanPipeline,
        ZImagePipeline,
    )

Kwargs = dict[str, Any]


def _frozen(module: nn.Module) -> nn.Module:
    return module.eval().requires_grad_(False)


def _build(cls: type, seed: int, **config: Any) -> nn.Module:
    torch.manual_seed(seed)
    return _frozen(cls(**config))


def _pipe(cls: type, **components: Any) -> DiffusionPipeline:
    pipe = cls(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _gen(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen)


def _mask(batch_size: int, length: int, valid: int) -> torch.Tensor:
    """``(batch_size, length)`` long mask with ``valid`` leading ones (right padding)."""
    return (torch.arange(length) < valid).long().expand(batch_size, -1).clone()


# --- Z-Image ---------------------------------------------------------------------------------------------------------


def z_image_transformer(seed: int = 0) -> ZImageTransformer2DModel:
    """Tiny ``ZImageTransformer2DModel`` (dim 32, 2 layers + 1 noise/context refiner layer, cap_feat_dim 16)."""
    return _build(ZImageTransformer2DModel, seed, all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32,
                  n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True,
                  cap_feat_dim=16, rope_theta=256.0, t_scale=1000.0, axes_dims=[8, 4, 4], axes_lens=[256, 32, 32])


def z_image_forward_kwargs(batch_size: int = 1, seed: int = 0) -> Kwargs:
    """Lists, one entry per sample: ``x`` ``(16, 1, 8, 8)``, ``cap_feats`` ``(12, 16)``; ``t`` is ``1 - sigma``."""
    gen = _gen(seed)
    return dict(x=[_randn(gen, 16, 1, 8, 8) for _ in range(batch_size)], t=torch.rand(batch_size, generator=gen),
                cap_feats=[_randn(gen, 12, 16) for _ in range(batch_size)])


def z_image_pipeline(seed: int = 0) -> ZImagePipeline:
    """``ZImagePipeline`` with a 16-channel ``AutoencoderKL`` (scale 2): 16x16 images, 8x8 latents, 16 tokens."""
    from diffusers import ZImagePipeline

    transformer = z_image_transformer(seed)
    vae = _build(AutoencoderKL, seed, in_channels=3, out_channels=3,
                 down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
                 up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], block_out_channels=[32, 64],
                 layers_per_block=1, latent_channels=16, norm_num_groups=32, sample_size=32, scaling_factor=0.3611,
                 shift_factor=0.1159)
    return _pipe(ZImagePipeline, scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None,
                 tokenizer=None, transformer=transformer)


def z_image_call_kwargs(batch_size: int = 1, seed: int = 0, cfg: bool = True) -> Kwargs:
    """List ``prompt_embeds`` (and negatives); ``cfg=False`` is Turbo-style ``guidance_scale=0`` (B samples/step)."""
    gen = _gen(seed)
    kwargs = dict(prompt_embeds=[_randn(gen, 12, 16) for _ in range(batch_size)], height=16, width=16,
                  guidance_scale=4.0 if cfg else 0.0, generator=gen, output_type="latent")
    if cfg:
        kwargs["negative_prompt_embeds"] = [_randn(gen, 8, 16) for _ in range(batch_size)]
    return kwargs


# --- Qwen-Image ------------------------------------------------------------------------------------------------------


def qwen_image_transformer(seed: int = 0) -> QwenImageTransformer2DModel:
    """Tiny ``QwenImageTransformer2DModel`` (2 double-stream blocks, 3 heads x 16, text dim 16, 2x2 patches)."""
    return _build(QwenImageTransformer2DModel, seed, patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                  attention_head_dim=16, num_attention_heads=3, joint_attention_dim=16, guidance_embeds=False,
                  axes_dims_rope=(8, 4, 4))


def qwen_image_forward_kwargs(batch_size: int = 1, seed: int = 0) -> Kwargs:
    """Packed ``(B, 16, 16)`` latents of a 4x4 token grid, 12 text tokens (10 valid); ``timestep`` is ``sigma``."""
    gen = _gen(seed)
    return dict(hidden_states=_randn(gen, batch_size, 16, 16), encoder_hidden_states=_randn(gen, batch_size, 12, 16),
                encoder_hidden_states_mask=_mask(batch_size, 12, 10), timestep=torch.rand(batch_size, generator=gen),
                img_shapes=[[(1, 4, 4)]] * batch_size)


def qwen_image_pipeline(seed: int = 0) -> QwenImagePipeline:
    """``QwenImagePipeline`` with a 4-channel ``AutoencoderKLQwenImage`` (scale 4): 32x32 images, 16 tokens."""
    from diffusers import QwenImagePipeline

    transformer = qwen_image_transformer(seed)
    vae = _build(AutoencoderKLQwenImage, seed, base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                 temperal_downsample=[False, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    return _pipe(QwenImagePipeline, scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None,
                 tokenizer=None, transformer=transformer)


def qwen_image_call_kwargs(batch_size: int = 1, seed: int = 0, cfg: bool = True) -> Kwargs:
    """Padded ``prompt_embeds`` + masks; with ``cfg`` also negatives and ``true_cfg_scale=4`` (two calls per step)."""
    gen = _gen(seed)
    kwargs = dict(prompt_embeds=_randn(gen, batch_size, 12, 16), prompt_embeds_mask=_mask(batch_size, 12, 10),
                  height=32, width=32, true_cfg_scale=4.0 if cfg else 1.0, generator=gen, output_type="latent")
    if cfg:
        kwargs.update(negative_prompt_embeds=_randn(gen, batch_size, 12, 16),
                      negative_prompt_embeds_mask=_mask(batch_size, 12, 6))
    return kwargs


# --- Qwen-Image 2.1 --------------------------------------------------------------------------------------------------


def qwen_image21_transformer(seed: int = 0) -> QwenImage21Transformer2DModel:
    """Tiny ``QwenImage21Transformer2DModel`` (2 single-stream block-causal blocks, 2 heads x 16, 8 latent channels)."""
    return _build(QwenImage21Transformer2DModel, seed, patch_size=1, in_channels=8, out_channels=8, num_layers=2,
                  attention_head_dim=16, num_attention_heads=2, context_in_dim=16, mlp_ratio=2,
                  axes_dims_rope=(4, 6, 6))


def qwen_image21_forward_kwargs(batch_size: int = 1, seed: int = 0) -> Kwargs:
    """4x4 target latents ``(B, 16, 8)`` after 8 text tokens; ``img_mask`` marks one slot per 2x2 latent group.

    The output covers the joint sequence ``(B, 8 + 16, 8)``; the pipeline keeps the last 16 tokens.
    """
    gen = _gen(seed)
    img_mask = torch.zeros(batch_size, 8 + 16 // 4, dtype=torch.bool)
    img_mask[:, 8:] = True
    return dict(hidden_states=_randn(gen, batch_size, 16, 8), encoder_hidden_states=_randn(gen, batch_size, 8, 16),
                encoder_hidden_states_mask=_mask(batch_size, 8, 8), timestep=torch.rand(batch_size, generator=gen),
                img_shapes=[[(1, 4, 4)]] * batch_size, img_mask=img_mask)


class _ChatTemplateStub:
    """Stands in for ``Qwen3VLProcessor`` during ``QwenImage21Pipeline.__init__`` only (see the pipeline builder)."""

    class tokenizer:  # noqa: N801 - mimics ``processor.tokenizer``
        @staticmethod
        def encode(text: str) -> list[int]:
            return [0]

    @staticmethod
    def apply_chat_template(messages: list, tokenize: bool = True, return_dict: bool = False) -> list[list[int]]:
        return [[0]]


def qwen_image21_pipeline(seed: int = 0) -> QwenImage21Pipeline:
    """``QwenImage21Pipeline`` with an 8-channel ``AutoencoderKLQwenImage21`` (scale 16): 64x64 images, 16 tokens.

    Its ``__init__`` reads the system-prompt length and the ``<|image_pad|>`` id off ``processor`` eagerly, so
    ``processor=None`` raises (diffusers' own test marks that case xfail). It is built with a stub processor, then
    ``processor`` is reset to ``None``: the derived ids only matter for prompt encoding, which ``prompt_embeds`` skips.
    """
    from diffusers import QwenImage21Pipeline

    transformer = qwen_image21_transformer(seed)
    vae = _build(AutoencoderKLQwenImage21, seed, base_dim=4, decoder_base_dim=4, z_dim=8, dim_mult=[1, 1, 1, 1, 1],
                 num_res_blocks=1, attn_scales=[], temperal_downsample=[False, True, True, True],
                 latents_mean=[0.0] * 8, latents_std=[1.0] * 8)
    pipe = _pipe(QwenImage21Pipeline, scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None,
                 processor=_ChatTemplateStub(), transformer=transformer)
    pipe.processor = None
    return pipe


def qwen_image21_call_kwargs(batch_size: int = 1, seed: int = 0, cfg: bool = False) -> Kwargs:
    """Text-only ``prompt_embeds`` (8 of 10 tokens valid); 2.1 samples without CFG unless ``cfg`` (true CFG 4)."""
    gen = _gen(seed)
    kwargs = dict(prompt_embeds=_randn(gen, batch_size, 10, 16), prompt_embeds_mask=_mask(batch_size, 10, 8),
                  height=64, width=64, true_cfg_scale=4.0 if cfg else 1.0, generator=gen, output_type="latent")
    if cfg:
        kwargs.update(negative_prompt_embeds=_randn(gen, batch_size, 10, 16),
                      negative_prompt_embeds_mask=_mask(batch_size, 10, 5))
    return kwargs


# --- Wan 2.2 ---------------------------------------------------------------------------------------------------------


def wan_transformer(seed: int = 0) -> WanTransformer3DModel:
    """Tiny ``WanTransformer3DModel`` (2 blocks, 2 heads x 12, 16 latent channels, text dim 32)."""
    return _build(WanTransformer3DModel, seed, patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                  in_channels=16, out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2,
                  cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)


def wan_forward_kwargs(batch_size: int = 1, seed: int = 0) -> Kwargs:
    """``(B, 16, 2, 4, 4)`` video latents (8 tokens), 12 text tokens; ``timestep`` is ``1000 * sigma``."""
    gen = _gen(seed)
    return dict(hidden_states=_randn(gen, batch_size, 16, 2, 4, 4),
                timestep=1000 * torch.rand(batch_size, generator=gen),
                encoder_hidden_states=_randn(gen, batch_size, 12, 32))


def wan22_pipeline(seed: int = 0) -> WanPipeline:
    """Wan 2.2 A14B-style ``WanPipeline``: experts ``transformer`` (seed) / ``transformer_2`` (seed + 1),
    ``boundary_ratio=0.875``, 16-channel ``AutoencoderKLWan`` (8x spatial, 4x temporal).

    Scheduler: ``FlowMatchEulerDiscreteScheduler(shift=3.0)`` (the fast test uses UniPC with ``flow_shift=3``); at 3
    steps the timesteps are 1000, 751, 9, so step 0 runs ``transformer`` and steps 1-2 run ``transformer_2``.
    """
    from diffusers import WanPipeline

    vae = _build(AutoencoderKLWan, seed, base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                 temperal_downsample=[False, True, True])
    return _pipe(WanPipeline, tokenizer=None, text_encoder=None, vae=vae,
                 scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), transformer=wan_transformer(seed),
                 transformer_2=wan_transformer(seed + 1), boundary_ratio=0.875)


def wan22_call_kwargs(batch_size: int = 1, seed: int = 0, cfg: bool = True) -> Kwargs:
    """32x32, 5 frames (latents ``(B, 16, 2, 4, 4)``); ``cfg``: negatives, guidance scales 4 / 3 (high / low noise)."""
    gen = _gen(seed)
    kwargs = dict(prompt_embeds=_randn(gen, batch_size, 12, 32), height=32, width=32, num_frames=5,
                  guidance_scale=4.0 if cfg else 1.0, guidance_scale_2=3.0 if cfg else 1.0, generator=gen,
                  output_type="latent")
    if cfg:
        kwargs["negative_prompt_embeds"] = _randn(gen, batch_size, 12, 32)
    return kwargs


# --- FLUX.2 / FLUX.2 [klein] -----------------------------------------------------------------------------------------


def flux2_transformer(seed: int = 0, guidance_embeds: bool = True) -> Flux2Transformer2DModel:
    """Tiny ``Flux2Transformer2DModel`` (1 double + 1 single block, 2 heads x 16, text dim 16).

    ``guidance_embeds=True`` is FLUX.2 [dev] (guidance-distilled); ``False`` is FLUX.2 [klein].
    """
    return _build(Flux2Transformer2DModel, seed, patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16, timestep_guidance_channels=256,
                  axes_dims_rope=[4, 4, 4, 4], guidance_embeds=guidance_embeds)


def flux2_forward_kwargs(batch_size: int = 1, seed: int = 0, guidance: bool = True) -> Kwargs:
    """Packed ``(B, 16, 4)`` latents (4x4 grid), 12 text tokens, ``(t, h, w, l)`` ids; ``timestep`` is ``sigma``."""
    gen = _gen(seed)
    one = torch.arange(1)
    img_ids = torch.cartesian_prod(one, torch.arange(4), torch.arange(4), one)
    txt_ids = torch.cartesian_prod(one, one, one, torch.arange(12))
    return dict(hidden_states=_randn(gen, batch_size, 16, 4), encoder_hidden_states=_randn(gen, batch_size, 12, 16),
                img_ids=img_ids.expand(batch_size, -1, -1), txt_ids=txt_ids.expand(batch_size, -1, -1),
                timestep=torch.rand(batch_size, generator=gen),
                guidance=torch.full((batch_size,), 4.0) if guidance else None)


def _flux2_vae(seed: int) -> AutoencoderKLFlux2:
    return _build(AutoencoderKLFlux2, seed, sample_size=32, in_channels=3, out_channels=3,
                  down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                  block_out_channels=(4,), layers_per_block=1, latent_channels=1, norm_num_groups=1,
                  use_quant_conv=False, use_post_quant_conv=False)


def flux2_pipeline(seed: int = 0) -> Flux2Pipeline:
    """``Flux2Pipeline`` (guidance-distilled, one call per step) with a 1-channel VAE: 8x8 images, 16 tokens."""
    from diffusers import Flux2Pipeline

    return _pipe(Flux2Pipeline, scheduler=FlowMatchEulerDiscreteScheduler(), vae=_flux2_vae(seed), text_encoder=None,
                 tokenizer=None, transformer=flux2_transformer(seed))


def flux2_call_kwargs(batch_size: int = 1, seed: int = 0) -> Kwargs:
    """``prompt_embeds (B, 12, 16)``, embedded ``guidance_scale=4``, 8x8."""
    gen = _gen(seed)
    return dict(prompt_embeds=_randn(gen, batch_size, 12, 16), guidance_scale=4.0, height=8, width=8, generator=gen,
                output_type="latent")


def flux2_klein_pipeline(seed: int = 0) -> Flux2KleinPipeline:
    """``Flux2KleinPipeline`` (base model, ``is_distilled=False``: real CFG) with the FLUX.2 test VAE: 8x8 images."""
    from diffusers import Flux2KleinPipeline

    return _pipe(Flux2KleinPipeline, scheduler=FlowMatchEulerDiscreteScheduler(), vae=_flux2_vae(seed),
                 text_encoder=None, tokenizer=None, transformer=flux2_transformer(seed, guidance_embeds=False))


def flux2_klein_call_kwargs(batch_size: int = 1, seed: int = 0, cfg: bool = True) -> Kwargs:
    """``prompt_embeds``; with ``cfg`` also ``negative_prompt_embeds`` and ``guidance_scale=4`` (two calls per step)."""
    gen = _gen(seed)
    kwargs = dict(prompt_embeds=_randn(gen, batch_size, 12, 16), guidance_scale=4.0 if cfg else 1.0, height=8,
                  width=8, generator=gen, output_type="latent")
    if cfg:
        kwargs["negative_prompt_embeds"] = _randn(gen, batch_size, 12, 16)
    return kwargs


# --- Chroma ----------------------------------------------------------------------------------------------------------


def chroma_transformer(seed: int = 0) -> ChromaTransformer2DModel:
    """Tiny ``ChromaTransformer2DModel`` (1 double + 1 single block, 2 heads x 16, T5 dim 32, 1-layer approximator)."""
    return _build(ChromaTransformer2DModel, seed, patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=[4, 4, 8],
                  approximator_hidden_dim=32, approximator_layers=1, approximator_num_channels=16)


def chroma_forward_kwargs(batch_size: int = 1, seed: int = 0) -> Kwargs:
    """Packed ``(B, 16, 4)`` latents, 12 text tokens (10 valid, mask extended over the image tokens like the
    pipeline does), 3-axis ids; ``timestep`` is ``sigma``."""
    gen = _gen(seed)
    ids = torch.cartesian_prod(torch.arange(1), torch.arange(4), torch.arange(4)).float()
    mask = torch.cat([_mask(batch_size, 12, 10).bool(), torch.ones(batch_size, 16, dtype=torch.bool)], dim=1)
    return dict(hidden_states=_randn(gen, batch_size, 16, 4), encoder_hidden_states=_randn(gen, batch_size, 12, 32),
                img_ids=ids, txt_ids=torch.zeros(12, 3), timestep=torch.rand(batch_size, generator=gen),
                attention_mask=mask)


def chroma_pipeline(seed: int = 0) -> ChromaPipeline:
    """``ChromaPipeline`` with the 1-channel test ``AutoencoderKL``: 8x8 images, 16 tokens."""
    from diffusers import ChromaPipeline

    vae = _build(AutoencoderKL, seed, sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,),
                 layers_per_block=1, latent_channels=1, norm_num_groups=1, use_quant_conv=False,
                 use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    return _pipe(ChromaPipeline, scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None,
                 tokenizer=None, transformer=chroma_transformer(seed))


def chroma_call_kwargs(batch_size: int = 1, seed: int = 0, cfg: bool = True) -> Kwargs:
    """``prompt_embeds`` + bool ``prompt_attention_mask`` (a long mask breaks SDPA); with ``cfg`` negatives and
    ``guidance_scale=4`` (two calls)."""
    gen = _gen(seed)
    kwargs = dict(prompt_embeds=_randn(gen, batch_size, 12, 32),
                  prompt_attention_mask=_mask(batch_size, 12, 10).bool(), guidance_scale=4.0 if cfg else 1.0, height=8,
                  width=8, generator=gen, output_type="latent")
    if cfg:
        kwargs.update(negative_prompt_embeds=_randn(gen, batch_size, 12, 32),
                      negative_prompt_attention_mask=_mask(batch_size, 12, 4).bool())
    return kwargs


# --- CogView4 --------------------------------------------------------------------------------------------------------


def cogview4_transformer(seed: int = 0) -> CogView4Transformer2DModel:
    """Tiny ``CogView4Transformer2DModel`` (2 blocks, 4 heads x 4, 2x2 patches, GLM dim 32)."""
    return _build(CogView4Transformer2DModel, seed, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=4,
                  num_attention_heads=4, out_channels=4, text_embed_dim=32, time_embed_dim=8, condition_dim=4)


def cogview4_forward_kwargs(batch_size: int = 1, seed: int = 0) -> Kwargs:
    """``(B, 4, 8, 8)`` latents (16 tokens), 16 text tokens, SDXL-style size conditions; ``timestep`` in [0, 1000]."""
    gen = _gen(seed)
    size = torch.tensor([[16.0, 16.0]]).expand(batch_size, -1)
    return dict(hidden_states=_randn(gen, batch_size, 4, 8, 8), encoder_hidden_states=_randn(gen, batch_size, 16, 32),
                timestep=1000 * torch.rand(batch_size, generator=gen), original_size=size, target_size=size,
                crop_coords=torch.zeros(batch_size, 2))


def cogview4_pipeline(seed: int = 0) -> CogView4Pipeline:
    """``CogView4Pipeline`` with a 4-channel ``AutoencoderKL`` (scale 2) and the test's dynamic-shift linear
    scheduler: 16x16 images, 16 tokens."""
    from diffusers import CogView4Pipeline

    vae = _build(AutoencoderKL, seed, block_out_channels=[32, 64], in_channels=3, out_channels=3,
                 down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
                 up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=4, sample_size=128)
    scheduler = FlowMatchEulerDiscreteScheduler(base_shift=0.25, max_shift=0.75, base_image_seq_len=256,
                                                use_dynamic_shifting=True, time_shift_type="linear")
    return _pipe(CogView4Pipeline, tokenizer=None, text_encoder=None, vae=vae, transformer=cogview4_transformer(seed),
                 scheduler=scheduler)


def cogview4_call_kwargs(batch_size: int = 1, seed: int = 0, cfg: bool = True) -> Kwargs:
    """``prompt_embeds (B, 16, 32)``; with ``cfg`` same-shape negatives and ``guidance_scale=4`` (two calls)."""
    gen = _gen(seed)
    kwargs = dict(prompt_embeds=_randn(gen, batch_size, 16, 32), guidance_scale=4.0 if cfg else 1.0, height=16,
                  width=16, generator=gen, output_type="latent")
    if cfg:
        kwargs["negative_prompt_embeds"] = _randn(gen, batch_size, 16, 32)
    return kwargs


# --- HunyuanVideo 1.5 ------------------------------------------------------------------------------------------------


def hunyuan_video15_transformer(seed: int = 0) -> HunyuanVideo15Transformer3DModel:
    """Tiny t2v ``HunyuanVideo15Transformer3DModel`` (2 blocks, 1 refiner layer, 2 heads x 8; input channels 9 =
    4 noisy latents + 4 condition latents + 1 mask; text dims 16 (Qwen2.5-VL) and 32 (ByT5), image dim 12)."""
    return _build(HunyuanVideo15Transformer3DModel, seed, in_channels=9, out_channels=4, num_attention_heads=2,
                  attention_head_dim=8, num_layers=2, num_refiner_layers=1, mlp_ratio=2.0, patch_size=1,
                  patch_size_t=1, text_embed_dim=16, text_embed_2_dim=32, image_embed_dim=12, rope_axes_dim=(2, 2, 4),
                  target_size=16, task_type="t2v")


def hunyuan_video15_forward_kwargs(batch_size: int = 1, seed: int = 0) -> Kwargs:
    """``(B, 9, 3, 4, 4)`` input (48 tokens), 12 + 8 text tokens with masks, all-zero ``image_embeds`` (8 tokens; the
    pipeline passes 729) which switch the model to t2v; ``timestep`` is ``1000 * sigma``."""
    gen = _gen(seed)
    return dict(hidden_states=_randn(gen, batch_size, 9, 3, 4, 4),
                timestep=1000 * torch.rand(batch_size, generator=gen),
                encoder_hidden_states=_randn(gen, batch_size, 12, 16), encoder_attention_mask=_mask(batch_size, 12, 10),
                encoder_hidden_states_2=_randn(gen, batch_size, 8, 32),
                encoder_attention_mask_2=_mask(batch_size, 8, 6), image_embeds=torch.zeros(batch_size, 8, 12))


def hunyuan_video15_pipeline(seed: int = 0, guidance_scale: float = 6.0) -> HunyuanVideo15Pipeline:
    """``HunyuanVideo15Pipeline`` (t2v) with the test VAE (4x spatial, 2x temporal): 16x16, 5 frames, 48 tokens.

    CFG lives in the ``guider`` component (``ClassifierFreeGuidance(guidance_scale)``), not in the call kwargs;
    ``guidance_scale=1.0`` disables it. ``text_encoder_2``/``tokenizer_2`` are ``None`` as well.
    """
    from diffusers import HunyuanVideo15Pipeline
    from diffusers.guiders import ClassifierFreeGuidance

    vae = _build(AutoencoderKLHunyuanVideo15, seed, in_channels=3, out_channels=3, latent_channels=4,
                 block_out_channels=(16, 16), layers_per_block=1, spatial_compression_ratio=4,
                 temporal_compression_ratio=2, downsample_match_channel=False, upsample_match_channel=False)
    return _pipe(HunyuanVideo15Pipeline, text_encoder=None, tokenizer=None,
                 transformer=hunyuan_video15_transformer(seed), vae=vae,
                 scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=None, tokenizer_2=None,
                 guider=ClassifierFreeGuidance(guidance_scale=guidance_scale))


def hunyuan_video15_call_kwargs(batch_size: int = 1, seed: int = 0) -> Kwargs:
    """Both text streams (+ masks) and their negatives (needed whenever the guider's CFG is on); 16x16, 5 frames."""
    gen = _gen(seed)
    kwargs = dict(height=16, width=16, num_frames=5, generator=gen, output_type="latent")
    for prefix in ("", "negative_"):
        kwargs.update({f"{prefix}prompt_embeds": _randn(gen, batch_size, 12, 16),
                       f"{prefix}prompt_embeds_mask": _mask(batch_size, 12, 10),
                       f"{prefix}prompt_embeds_2": _randn(gen, batch_size, 8, 32),
                       f"{prefix}prompt_embeds_mask_2": _mask(batch_size, 8, 6)})
    return kwargs


# --- LTX-2 -----------------------------------------------------------------------------------------------------------


def ltx2_transformer(seed: int = 0) -> LTX2VideoTransformer3DModel:
    """Tiny audio+video ``LTX2VideoTransformer3DModel`` (2 blocks; video 2 heads x 8, audio 2 heads x 4; caption 32)."""
    return _build(LTX2VideoTransformer3DModel, seed, in_channels=4, out_channels=4, patch_size=1, patch_size_t=1,
                  num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16, audio_in_channels=4,
                  audio_out_channels=4, audio_num_attention_heads=2, audio_attention_head_dim=4,
                  audio_cross_attention_dim=8, num_layers=2, qk_norm="rms_norm_across_heads", caption_channels=32,
                  rope_double_precision=False, rope_type="split")


def ltx2_forward_kwargs(batch_size: int = 1, seed: int = 0) -> Kwargs:
    """Packed video ``(B, 2*4*4, 4)`` and audio ``(B, 5, 4)`` latents, 12 caption tokens per stream, 25 fps;
    ``timestep`` is ``1000 * sigma``. Returns ``(video, audio)`` predictions."""
    gen = _gen(seed)
    return dict(hidden_states=_randn(gen, batch_size, 32, 4), audio_hidden_states=_randn(gen, batch_size, 5, 4),
                encoder_hidden_states=_randn(gen, batch_size, 12, 32),
                audio_encoder_hidden_states=_randn(gen, batch_size, 12, 32),
                timestep=1000 * torch.rand(batch_size, generator=gen), encoder_attention_mask=_mask(batch_size, 12, 10),
                audio_encoder_attention_mask=_mask(batch_size, 12, 10), num_frames=2, height=4, width=4, fps=25.0,
                audio_num_frames=5)


def ltx2_pipeline(seed: int = 0) -> LTX2Pipeline:
    """``LTX2Pipeline`` with the test's text connectors, video VAE (2x spatial and temporal), audio VAE and vocoder:
    32x32, 5 frames -> video latents ``(B, 4, 3, 16, 16)`` (768 tokens) and 5 audio latent frames.

    The Gemma ``text_encoder``/``tokenizer`` are ``None``; the connectors stay (they map the packed per-layer text
    states ``(B, L, 32 * 2)`` to the video/audio caption streams and run inside ``__call__``).
    """
    from diffusers import LTX2Pipeline
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    connectors = _build(LTX2TextConnectors, seed, caption_channels=32, text_proj_in_factor=2,
                        video_connector_num_attention_heads=4, video_connector_attention_head_dim=8,
                        video_connector_num_layers=1, video_connector_num_learnable_registers=None,
                        audio_connector_num_attention_heads=4, audio_connector_attention_head_dim=8,
                        audio_connector_num_layers=1, audio_connector_num_learnable_registers=None,
                        connector_rope_base_seq_len=32, rope_theta=10000.0, rope_double_precision=False,
                        causal_temporal_positioning=False, rope_type="split")
    vae = _build(AutoencoderKLLTX2Video, seed, in_channels=3, out_channels=3, latent_channels=4,
                 block_out_channels=(8,), decoder_block_out_channels=(8,), layers_per_block=(1,),
                 decoder_layers_per_block=(1, 1), spatio_temporal_scaling=(True,),
                 decoder_spatio_temporal_scaling=(True,), decoder_inject_noise=(False, False),
                 downsample_type=("spatial",), upsample_residual=(False,), upsample_factor=(1,),
                 timestep_conditioning=False, patch_size=1, patch_size_t=1, encoder_causal=True, decoder_causal=False)
    vae.use_framewise_encoding = vae.use_framewise_decoding = False
    audio_vae = _build(AutoencoderKLLTX2Audio, seed, base_channels=4, output_channels=2, ch_mult=(1,),
                       num_res_blocks=1, attn_resolutions=None, in_channels=2, resolution=32, latent_channels=2,
                       norm_type="pixel", causality_axis="height", dropout=0.0, mid_block_add_attention=False,
                       sample_rate=16000, mel_hop_length=160, is_causal=True, mel_bins=8)
    vocoder = _build(LTX2Vocoder, seed, in_channels=16, hidden_channels=32, out_channels=2,
                     upsample_kernel_sizes=[4, 4], upsample_factors=[2, 2], resnet_kernel_sizes=[3],
                     resnet_dilations=[[1, 3, 5]], leaky_relu_negative_slope=0.1, output_sampling_rate=16000)
    return _pipe(LTX2Pipeline, scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, audio_vae=audio_vae,
                 text_encoder=None, tokenizer=None, connectors=connectors, transformer=ltx2_transformer(seed),
                 vocoder=vocoder)


def ltx2_call_kwargs(batch_size: int = 1, seed: int = 0, cfg: bool = True) -> Kwargs:
    """Packed text states + mask (and negatives with ``cfg``); STG, modality isolation and rescale off (as in diffusers'
    fast test), so ``cfg`` means one batched ``[uncond, cond]`` call per step with video/audio scales 4.
    ``output_type="latent"`` returns ``(video_latents, audio_latents)`` as ``.frames`` / ``.audio``."""
    gen = _gen(seed)
    scale = 4.0 if cfg else 1.0
    kwargs = dict(prompt_embeds=_randn(gen, batch_size, 12, 64), prompt_attention_mask=_mask(batch_size, 12, 10),
                  height=32, width=32, num_frames=5, frame_rate=25.0, guidance_scale=scale, audio_guidance_scale=scale,
                  stg_scale=0.0, audio_stg_scale=0.0, modality_scale=1.0, audio_modality_scale=1.0,
                  guidance_rescale=0.0, audio_guidance_rescale=0.0, spatio_temporal_guidance_blocks=None,
                  use_cross_timestep=False, generator=gen, output_type="latent")
    if cfg:
        kwargs.update(negative_prompt_embeds=_randn(gen, batch_size, 12, 64),
                      negative_prompt_attention_mask=_mask(batch_size, 12, 7))
    return kwargs


# --- Sana ------------------------------------------------------------------------------------------------------------


def sana_transformer(seed: int = 0) -> SanaTransformer2DModel:
    """Tiny ``SanaTransformer2DModel`` (2 linear-attention blocks, 2 heads x 4, caption dim 8)."""
    return _build(SanaTransformer2DModel, seed, patch_size=1, in_channels=4, out_channels=4, num_layers=2,
                  num_attention_heads=2, attention_head_dim=4, num_cross_attention_heads=2, cross_attention_head_dim=4,
                  cross_attention_dim=8, caption_channels=8, sample_size=32)


def sana_forward_kwargs(batch_size: int = 1, seed: int = 0) -> Kwargs:
    """``(B, 4, 8, 8)`` latents, 12 caption tokens (10 valid); ``timestep`` is ``1000 * sigma`` (times
    ``config.timestep_scale``, 1.0 here)."""
    gen = _gen(seed)
    return dict(hidden_states=_randn(gen, batch_size, 4, 8, 8), encoder_hidden_states=_randn(gen, batch_size, 12, 8),
                timestep=1000 * torch.rand(batch_size, generator=gen), encoder_attention_mask=_mask(batch_size, 12, 10))


def sana_pipeline(seed: int = 0) -> SanaPipeline:
    """``SanaPipeline`` with the test's ``AutoencoderDC`` (scale 2) and ``FlowMatchEulerDiscreteScheduler(shift=7)``
    (real Sana ships a flow ``DPMSolverMultistepScheduler``): 32x32 images, 256 tokens."""
    from diffusers import SanaPipeline

    vae = _build(AutoencoderDC, seed, in_channels=3, latent_channels=4, attention_head_dim=2,
                 encoder_block_types=("ResBlock", "EfficientViTBlock"),
                 decoder_block_types=("ResBlock", "EfficientViTBlock"), encoder_block_out_channels=(8, 8),
                 decoder_block_out_channels=(8, 8), encoder_qkv_multiscales=((), (5,)),
                 decoder_qkv_multiscales=((), (5,)), encoder_layers_per_block=(1, 1), decoder_layers_per_block=[1, 1],
                 downsample_block_type="conv", upsample_block_type="interpolate", decoder_norm_types="rms_norm",
                 decoder_act_fns="silu", scaling_factor=0.41407)
    return _pipe(SanaPipeline, tokenizer=None, text_encoder=None, vae=vae, transformer=sana_transformer(seed),
                 scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0))


def sana_call_kwargs(batch_size: int = 1, seed: int = 0, cfg: bool = True) -> Kwargs:
    """``prompt_embeds`` + mask (and same-shape negatives; ``negative_prompt=None`` is required with them),
    ``guidance_scale=4.5``, resolution binning off (it would snap 32x32 to 1024x1024)."""
    gen = _gen(seed)
    kwargs = dict(prompt_embeds=_randn(gen, batch_size, 12, 8), prompt_attention_mask=_mask(batch_size, 12, 10),
                  negative_prompt=None, guidance_scale=4.5 if cfg else 1.0, height=32, width=32,
                  use_resolution_binning=False, generator=gen, output_type="latent")
    if cfg:
        kwargs.update(negative_prompt_embeds=_randn(gen, batch_size, 12, 8),
                      negative_prompt_attention_mask=_mask(batch_size, 12, 3))
    return kwargs


# --- registry --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """One tiny model family. Builders take ``seed``; kwargs functions take ``batch_size`` and ``seed``.

    ``output_shape(batch_size)`` is the shape of ``transformer(**forward_kwargs(), return_dict=False)[0]`` (for
    Z-Image, a list: the shape after ``torch.stack``).
    """

    name: str
    transformer: Callable[..., nn.Module]
    forward_kwargs: Callable[..., Kwargs]
    output_shape: Callable[[int], tuple[int, ...]]
    pipeline: Callable[..., DiffusionPipeline] | None
    call_kwargs: Callable[..., Kwargs] | None
    notes: str = ""


_FAMILIES = [
    Family("z_image", z_image_transformer, z_image_forward_kwargs, lambda b: (b, 16, 1, 8, 8), z_image_pipeline,
           z_image_call_kwargs, "1 call/step on a list of 2B samples [cond, uncond]; t = 1 - sigma; no cache_context"),
    Family("z_image_turbo", z_image_transformer, z_image_forward_kwargs, lambda b: (b, 16, 1, 8, 8),
           z_image_pipeline, partial(z_image_call_kwargs, cfg=False), "guidance_scale=0: 1 call/step on B samples"),
    Family("qwen_image", qwen_image_transformer, qwen_image_forward_kwargs, lambda b: (b, 16, 16),
           qwen_image_pipeline, qwen_image_call_kwargs, "2 calls/step (cond, uncond); t = sigma; norm-rescaled CFG"),
    Family("qwen_image21", qwen_image21_transformer, qwen_image21_forward_kwargs, lambda b: (b, 24, 8),
           qwen_image21_pipeline, qwen_image21_call_kwargs,
           "1 call/step (cond), t = sigma; prefix KV cache: blocks see only target tokens after step 0"),
    Family("wan22", wan_transformer, wan_forward_kwargs, lambda b: (b, 16, 2, 4, 4), wan22_pipeline,
           wan22_call_kwargs, "2 calls/step on the active expert (switch at t < 875); t = 1000 sigma; no sigmas="),
    Family("flux2", flux2_transformer, flux2_forward_kwargs, lambda b: (b, 16, 4), flux2_pipeline, flux2_call_kwargs,
           "guidance-distilled: 1 call/step, t = sigma; no cache_context"),
    Family("flux2_klein", partial(flux2_transformer, guidance_embeds=False),
           partial(flux2_forward_kwargs, guidance=False), lambda b: (b, 16, 4), flux2_klein_pipeline,
           flux2_klein_call_kwargs, "2 calls/step (cond, uncond); t = sigma; 'latent' output is unpacked VAE space"),
    Family("chroma", chroma_transformer, chroma_forward_kwargs, lambda b: (b, 16, 4), chroma_pipeline,
           chroma_call_kwargs, "2 calls/step; t = sigma; no cache_context"),
    Family("cogview4", cogview4_transformer, cogview4_forward_kwargs, lambda b: (b, 4, 8, 8), cogview4_pipeline,
           cogview4_call_kwargs, "2 calls/step; t = unshifted integer grid, not 1000 * (shifted) sigma"),
    Family("hunyuan_video15", hunyuan_video15_transformer, hunyuan_video15_forward_kwargs,
           lambda b: (b, 4, 3, 4, 4), hunyuan_video15_pipeline, hunyuan_video15_call_kwargs,
           "guider: 2 calls/step (pred_cond, pred_uncond); t = 1000 sigma"),
    Family("ltx2", ltx2_transformer, ltx2_forward_kwargs, lambda b: (b, 32, 4), ltx2_pipeline, ltx2_call_kwargs,
           "1 batched call/step (cond_uncond) returning (video, audio); t = 1000 sigma"),
    Family("sana", sana_transformer, sana_forward_kwargs, lambda b: (b, 4, 8, 8), sana_pipeline, sana_call_kwargs,
           "1 batched call/step [uncond, cond]; t = 1000 sigma; no cache_context"),
]

FAMILIES: dict[str, Family] = {family.name: family for family in _FAMILIES}
