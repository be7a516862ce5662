import pytest
import torch

from tests.fixtures.gmm import GaussianMixtureFlow
from tests.fixtures.tiny import tiny_flux_transformer

torch.set_num_threads(1)  # tiny models gain nothing from threads; results independent of the core count


class TinyFlux:
    """diffusers' own tiny FLUX test config with random weights, and fixed conditioning."""

    def __init__(self, batch: int = 3, seed: int = 0):
        self.transformer = tiny_flux_transformer(seed)
        gen = torch.Generator().manual_seed(seed + 1)
        self.cond = dict(
            encoder_hidden_states=torch.randn(batch, 8, 32, generator=gen),
            pooled_projections=torch.randn(batch, 32, generator=gen),
            img_ids=torch.randn(16, 3, generator=gen),
            txt_ids=torch.zeros(8, 3),
        )
        self.noise = torch.randn(batch, 16, 4, generator=gen)

    def velocity(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        t = torch.full((x.shape[0],), float(sigma))
        return self.transformer(hidden_states=x, timestep=t, return_dict=False, **self.cond)[0]


@pytest.fixture
def tiny_flux() -> TinyFlux:
    return TinyFlux()


@pytest.fixture(scope="session")
def gmm() -> GaussianMixtureFlow:
    return GaussianMixtureFlow(dim=8, components=4, seed=3)


@pytest.fixture(scope="session")
def demo_model():
    from budcache.demo.model import load_demo_model

    return load_demo_model()
