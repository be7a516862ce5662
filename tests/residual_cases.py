"""Fixed residual-reuse runs of tiny pipelines, for the reference test of the generic adapter."""

import torch

from budcache import tiny_families
from budcache.plan import CachePlan
from budcache.tiny import tiny_flux_pipeline, tiny_sd3_pipeline, tiny_wan_pipeline

K = 10
MASK = [1, 1, 0, 0, 1, 0, 1, 0, 0, 1]


def _family(name):
    family = tiny_families.FAMILIES[name]
    kwargs = {k: v for k, v in family.call_kwargs(seed=3).items() if k not in ("generator", "output_type")}
    return family.pipeline(), kwargs


def cases():
    gen = torch.Generator().manual_seed(5)
    r = lambda *s: torch.randn(*s, generator=gen)
    yield "flux", tiny_flux_pipeline(), dict(prompt_embeds=r(1, 8, 32), pooled_prompt_embeds=r(1, 32),
                                             negative_prompt_embeds=r(1, 8, 32), negative_pooled_prompt_embeds=r(1, 32),
                                             true_cfg_scale=3.0, height=16, width=16)
    yield "wan", tiny_wan_pipeline(), dict(prompt_embeds=r(1, 8, 32), negative_prompt_embeds=r(1, 8, 32),
                                           height=16, width=16, num_frames=5, guidance_scale=4.0)
    yield "sd3", tiny_sd3_pipeline(), dict(prompt_embeds=r(1, 8, 32), pooled_prompt_embeds=r(1, 64),
                                           negative_prompt_embeds=r(1, 8, 32), negative_pooled_prompt_embeds=r(1, 64),
                                           guidance_scale=5.0, height=16, width=16)
    for name in ("z_image", "qwen_image"):
        yield (name, *_family(name))


def run(pipe, kwargs, rule):
    import budcache

    plan = CachePlan(num_steps=K, budget=sum(MASK), mask=MASK, reuse="residual", rule=rule)
    with budcache.apply(pipe, plan):
        return pipe(**kwargs, num_inference_steps=K, generator=torch.Generator().manual_seed(0), output_type="latent")[0]
