"""Per-family knowledge, one entry per model family: adding a family is one entry in :data:`FAMILIES`.

An entry names the family's pipeline and transformer classes and holds what budcache cannot read
from the model itself:

* ``blocks``: return layouts of block classes that diffusers' ``TransformerBlockRegistry`` lacks
  or describes wrongly (residual reuse needs to know which return value is which stream);
* ``combine``: how the pipeline combines a step's transformer calls into one velocity (its CFG
  formula), which the search replays;
* ``experts``: the pipeline attributes that hold transformers (Wan2.2 runs two experts);
* ``time``: the scheduler timestep of a step at a sigma the pipeline did not choose (a searched or
  aligned schedule), from the sigma, the scheduler's config and its ``set_timesteps`` arguments: the
  time the transformer sees follows from it the way the pipeline derives it (``t / 1000`` for FLUX,
  ``t`` for Wan, ...). Default ``num_train_timesteps * sigma``; CogView4 feeds the unshifted time;
* ``indicator``: where TeaCache reads its signal (``norm1``: block 0's modulated input;
  ``time``: the time embedding; ``input``: block 0's input; None: ``time`` when the transformer
  has a time embedder, else ``input``).

How the pipeline builds the transformer's latent input (the same tensor, batched CFG copies,
per-sample frames, appended channels) is detected at calibration and needs no entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from diffusers.hooks._helpers import TransformerBlockMetadata


class StepCall(Protocol):
    """One transformer call of a step as the guidance rules read it (a captured
    :class:`budcache.calibration.capture.Call`): its expert, its cache context (the CFG branch), its arguments."""

    module: str
    context: str | None
    kwargs: dict[str, Any]
    layout: tuple[str, int]


Combine = Callable[
    [list[Any], list[StepCall], dict[str, Any], torch.Tensor], torch.Tensor
]  # outputs, calls, settings, x


# -- CFG combinations ---------------------------------------------------------------------------
def _guided(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    return uncond + scale * (cond - uncond)


def _by_context(outputs: list[Any], calls: list[StepCall]) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond, uncond): by cache context, or in call order (every pipeline calls cond first)."""
    named = {c.context: o for c, o in zip(calls, outputs)}
    for cond, uncond in (("cond", "uncond"), ("pred_cond", "pred_uncond")):
        if cond in named and uncond in named:
            return named[cond], named[uncond]
    return outputs[0], outputs[1]


def _two_calls(scale: Callable[[dict, str], float], tokens: str | None = None) -> Combine:
    """A cond and an uncond call per step (Flux true CFG, Wan, Chroma, CogView4, ...); ``tokens``
    (``"last"`` or ``"first"``) keeps that many latent tokens (``x.shape[1]``) of the outputs."""

    def combine(outputs: list[Any], calls: list[StepCall], settings: dict, x: torch.Tensor) -> torch.Tensor:
        if tokens is not None:
            n = x.shape[1]
            outputs = [o[:, -n:] if tokens == "last" else o[:, :n] for o in outputs]
        if len(outputs) == 1:
            return outputs[0]
        cond, uncond = _by_context(outputs, calls)
        return _guided(cond, uncond, scale(settings, calls[0].module))

    return combine


def _setting(name: str) -> Callable[[dict, str], float]:
    return lambda settings, _: settings[name]


def _wan_scale(settings: dict, module: str) -> float:
    second = settings.get("guidance_scale_2")
    return second if module == "transformer_2" and second is not None else settings["guidance_scale"]


def _qwen_image(outputs: list[Any], calls: list[StepCall], settings: dict, x: torch.Tensor) -> torch.Tensor:
    if len(outputs) == 1:
        return outputs[0]
    cond, uncond = _by_context(outputs, calls)
    guided = _guided(cond, uncond, settings["true_cfg_scale"])
    return guided * (cond.norm(dim=-1, keepdim=True) / guided.norm(dim=-1, keepdim=True))


def _batched(outputs: list[Any], calls: list[StepCall], settings: dict, x: torch.Tensor) -> torch.Tensor:
    """One call on the batch ``[uncond, cond]`` (SD3, Sana)."""
    (out,) = outputs
    if calls[0].layout[1] == 1:
        return out
    uncond, text = out.chunk(2)
    return _guided(text, uncond, settings["guidance_scale"])


def _z_image(outputs: list[Any], calls: list[StepCall], settings: dict, x: torch.Tensor) -> torch.Tensor:
    out = torch.stack([o.float() for o in outputs[0]])
    if calls[0].layout[1] == 2:
        pos, neg = out.chunk(2)
        pred = pos + settings["guidance_scale"] * (pos - neg)
        limit = float(settings.get("cfg_normalization") or 0.0)
        if limit > 0:
            dims = tuple(range(1, pred.dim()))
            cap = torch.linalg.vector_norm(pos, dim=dims, keepdim=True) * limit
            norm = torch.linalg.vector_norm(pred, dim=dims, keepdim=True)
            pred = torch.where(norm > cap, pred * (cap / norm), pred)
        out = pred
    return -out.squeeze(2)


def _guider(outputs: list[Any], calls: list[StepCall], settings: dict, x: torch.Tensor) -> torch.Tensor:
    """The pipeline's own ``guider`` component (HunyuanVideo 1.5)."""
    if len(outputs) == 1:
        return outputs[0]
    cond, uncond = _by_context(outputs, calls)
    return settings["guider"].forward(cond, uncond).pred


def _single(outputs: list[Any], calls: list[StepCall], settings: dict, x: torch.Tensor) -> torch.Tensor:
    if len(outputs) != 1 or calls[0].layout[1] != 1:
        known = sorted(p for f in FAMILIES for p in f.pipelines if f.combine is not None)
        raise ValueError(
            f"budcache knows no guidance rule for this pipeline ({len(outputs)} transformer call(s) per step, "
            f"{calls[0].layout[1]} samples per latent); "
            f"supported: {', '.join(known)}, and any pipeline with one unguided call per step"
        )
    return outputs[0]


# -- the time the transformer sees ----------------------------------------------------------------
TimeRule = Callable[[Any, Any, dict[str, Any]], Any]  # sigmas, scheduler config, set_timesteps arguments -> timesteps


def sigma_time(sigmas: Any, config: Any, kwargs: dict[str, Any]) -> Any:
    """``num_train_timesteps * sigma``: the scheduler's own timesteps (FLUX, Wan, SD3, Qwen-Image, ...),
    truncated to integers where the scheduler truncates them (UniPC and DPM-Solver with flow sigmas, as
    Wan and Sana ship); the truncation passes gradients through unchanged, so stage 2 still learns
    the time the model is told."""
    t = sigmas * config.get("num_train_timesteps", 1000)
    return t + (t.trunc() - t).detach() if config.get("use_flow_sigmas") else t


def unshifted_time(sigmas: Any, config: Any, kwargs: dict[str, Any]) -> Any:
    """``num_train_timesteps * s`` where the scheduler's shift maps ``s`` to ``sigma`` (CogView4 passes the
    unshifted times as ``timesteps=`` beside the shifted ``sigmas=``). Both of FlowMatchEuler's shifts,
    static ``shift`` and dynamic ``mu`` (exponential or linear), are ``sigma = m s / (1 + (m - 1) s)``."""
    if config.get("use_dynamic_shifting"):
        mu = kwargs.get("mu")
        if mu is None:
            raise ValueError("a dynamically shifted schedule needs the pipeline's mu to recover its times")
        m = math.exp(mu) if config.get("time_shift_type", "exponential") == "exponential" else mu
    else:
        m = config.get("shift", 1.0)
    return config.get("num_train_timesteps", 1000) * sigmas / (sigmas + m * (1 - sigmas))


# -- the table ----------------------------------------------------------------------------------
_M = TransformerBlockMetadata


@dataclass(frozen=True)
class Family:
    """What budcache knows about one model family (see the module docstring)."""

    name: str
    pipelines: tuple[str, ...]
    transformers: tuple[str, ...]
    blocks: dict[str, TransformerBlockMetadata] = field(default_factory=dict)
    combine: Combine | None = None  # None: one unguided call per step
    experts: tuple[str, ...] = ("transformer",)
    indicator: str | None = None
    time: TimeRule = sigma_time


FAMILIES: tuple[Family, ...] = (
    Family(
        "FLUX.1",
        ("FluxPipeline",),
        ("FluxTransformer2DModel",),
        combine=_two_calls(_setting("true_cfg_scale")),
        indicator="norm1",
    ),
    Family("FLUX.2", ("Flux2Pipeline",), ("Flux2Transformer2DModel",), indicator="norm1"),
    Family(
        "FLUX.2 Klein",
        ("Flux2KleinPipeline",),
        ("Flux2Transformer2DModel",),
        combine=_two_calls(_setting("guidance_scale"), tokens="first"),
        indicator="norm1",
    ),
    # Wan2.2 A14B runs `transformer` above its boundary and `transformer_2` below it
    Family(
        "Wan2.1 / Wan2.2",
        ("WanPipeline",),
        ("WanTransformer3DModel",),
        combine=_two_calls(_wan_scale),
        experts=("transformer", "transformer_2"),
        indicator="time",
    ),
    Family("SD3", ("StableDiffusion3Pipeline",), ("SD3Transformer2DModel",), combine=_batched),
    # diffusers 0.42 registers ZImageTransformerBlock with hidden_states_argument_name="hidden_states"; it takes `x`
    Family(
        "Z-Image",
        ("ZImagePipeline",),
        ("ZImageTransformer2DModel",),
        combine=_z_image,
        blocks={"ZImageTransformerBlock": _M(return_hidden_states_index=0, hidden_states_argument_name="x")},
    ),
    Family(
        "Qwen-Image", ("QwenImagePipeline",), ("QwenImageTransformer2DModel",), combine=_qwen_image, indicator="norm1"
    ),
    Family(
        "Qwen-Image 2.1",
        ("QwenImage21Pipeline",),
        ("QwenImage21Transformer2DModel",),
        combine=_two_calls(_setting("true_cfg_scale"), tokens="last"),
        indicator="norm1",
        blocks={"QwenImage21TransformerBlock": _M(return_hidden_states_index=0)},
    ),  # one joint [text, image] sequence
    Family(
        "Chroma",
        ("ChromaPipeline",),
        ("ChromaTransformer2DModel",),
        combine=_two_calls(_setting("guidance_scale")),
        indicator="norm1",
        blocks={
            "ChromaTransformerBlock": _M(return_hidden_states_index=1, return_encoder_hidden_states_index=0),
            "ChromaSingleTransformerBlock": _M(return_hidden_states_index=0),
        },
    ),
    # LTX-2 blocks return (video, audio): the audio stream takes the second slot, cached beside the video
    Family(
        "LTX-2",
        ("LTX2Pipeline",),
        ("LTX2VideoTransformer3DModel",),
        blocks={
            "LTX2VideoTransformerBlock": _M(
                return_hidden_states_index=0,
                return_encoder_hidden_states_index=1,
                encoder_hidden_states_argument_name="audio_hidden_states",
            )
        },
    ),
    Family(
        "HunyuanVideo 1.5",
        ("HunyuanVideo15Pipeline",),
        ("HunyuanVideo15Transformer3DModel",),
        combine=_guider,
        blocks={
            "HunyuanVideo15TransformerBlock": _M(return_hidden_states_index=0, return_encoder_hidden_states_index=1)
        },
    ),
    Family(
        "CogView4",
        ("CogView4Pipeline",),
        ("CogView4Transformer2DModel",),
        combine=_two_calls(_setting("guidance_scale")),
        time=unshifted_time,
    ),
    Family(
        "Sana",
        ("SanaPipeline",),
        ("SanaTransformer2DModel",),
        combine=_batched,
        blocks={"SanaTransformerBlock": _M(return_hidden_states_index=0)},
    ),
)

# Inpainting pipelines blend the unmasked region back after every step, ``(1 - mask) * noised image + mask * latents``:
# where ``prepare_latents`` returns their noise and image latents (``prepare_mask_latents`` returns the mask first).
INPAINT_LATENTS: dict[str, tuple[int, int]] = {
    "FluxInpaintPipeline": (1, 2),
    "StableDiffusion3InpaintPipeline": (1, 2),
}

DEFAULT_EXPERTS = ("transformer", "transformer_2")  # for pipelines of no known family
OWN_BLOCKS: dict[str, TransformerBlockMetadata] = {k: v for f in FAMILIES for k, v in f.blocks.items()}


def _by_class(obj: Any, names: Callable[[Family], tuple[str, ...]]) -> Family | None:
    for cls in type(obj).__mro__:
        for family in FAMILIES:
            if cls.__name__ in names(family):
                return family
    return None


def for_pipeline(pipe: Any) -> Family | None:
    """The family of a pipeline (by its class or a base class), or None."""
    return _by_class(pipe, lambda f: f.pipelines)


def for_transformer(model: Any) -> Family | None:
    """The family of a transformer (by its class or a base class), or None."""
    return _by_class(model, lambda f: f.transformers)


def combine_for(pipe: Any) -> Combine:
    """The CFG combination of ``pipe``; other pipelines may only make one unguided call per step."""
    family = for_pipeline(pipe)
    return family.combine if family is not None and family.combine is not None else _single


def time_rule(pipe: Any) -> TimeRule:
    """How ``pipe``'s scheduler timesteps follow from its sigmas (:func:`sigma_time` for unknown pipelines)."""
    family = for_pipeline(pipe)
    return family.time if family is not None else sigma_time


def expert_names(pipe: Any) -> tuple[str, ...]:
    """The attributes of ``pipe`` that may hold a transformer."""
    family = for_pipeline(pipe)
    return family.experts if family is not None else DEFAULT_EXPERTS
