"""The demo model: a small class-conditional flow-matching FLUX transformer on 16x16 digits.

The network is a real ``diffusers.FluxTransformer2DModel`` (double + single blocks, RoPE,
adaLN output head) so the demo runs exactly the code path FLUX users run. Images are packed
into 4x4 patches (16 tokens of 16 channels); the class label becomes one text token and the
pooled projection through a small embedding table (index 10 is the null class).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import FluxTransformer2DModel
from safetensors.torch import load_file
from torch import nn

DEMO_CONFIG: dict = dict(
    patch_size=1,
    in_channels=16,
    num_layers=2,
    num_single_layers=4,
    attention_head_dim=32,
    num_attention_heads=4,
    joint_attention_dim=64,
    pooled_projection_dim=64,
    axes_dims_rope=(8, 12, 12),
)
IMAGE_SIZE = 16
PATCH = 4
NUM_CLASSES = 10
NULL_CLASS = NUM_CLASSES
WEIGHTS = Path(__file__).parent / "weights" / "digits_flux.safetensors"
GRID = IMAGE_SIZE // PATCH
TOKENS = GRID * GRID
CHANNELS = PATCH * PATCH


def pack(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, 16, 16) images -> (N, 16 tokens, 16 channels)."""
    n = images.shape[0]
    x = images.reshape(n, GRID, PATCH, GRID, PATCH).permute(0, 1, 3, 2, 4)
    return x.reshape(n, TOKENS, CHANNELS)


def unpack(tokens: torch.Tensor) -> torch.Tensor:
    """(N, 16, 16) tokens -> (N, 1, 16, 16) images."""
    n = tokens.shape[0]
    x = tokens.reshape(n, GRID, GRID, PATCH, PATCH).permute(0, 1, 3, 2, 4)
    return x.reshape(n, 1, IMAGE_SIZE, IMAGE_SIZE)


def image_ids() -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(TOKENS, 3).float()


class DigitsFlux(nn.Module):
    """FLUX transformer plus the label conditioner; ``forward`` returns the flow velocity."""

    def __init__(self) -> None:
        super().__init__()
        self.transformer = FluxTransformer2DModel(**DEMO_CONFIG)
        self.text = nn.Embedding(NUM_CLASSES + 1, DEMO_CONFIG["joint_attention_dim"])
        self.pooled = nn.Embedding(NUM_CLASSES + 1, DEMO_CONFIG["pooled_projection_dim"])
        self.register_buffer("img_ids", image_ids(), persistent=False)
        self.register_buffer("txt_ids", torch.zeros(1, 3), persistent=False)

    def conditioning(self, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The transformer kwargs that encode ``labels`` (what a pipeline's text encoders would give)."""
        return {
            "encoder_hidden_states": self.text(labels)[:, None, :],
            "pooled_projections": self.pooled(labels),
            "img_ids": self.img_ids,
            "txt_ids": self.txt_ids,
        }

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype).expand(x.shape[0])
        return self.transformer(hidden_states=x, timestep=sigma, return_dict=False, **self.conditioning(labels))[0]


def load_demo_model(path: str | Path = WEIGHTS) -> DigitsFlux:
    """The trained demo model, in float32 and eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"demo weights not found at {path}; train them with `python -m budcache.demo.train`")
    model = DigitsFlux()
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)
