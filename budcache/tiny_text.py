"""Tiny random text-to-image/video pipelines *with* text encoders and tokenizers, saved to disk offline.

Unlike :mod:`budcache.tiny` these take plain text prompts and load back with
``DiffusionPipeline.from_pretrained(path)``. Tokenizers are character-level, built in memory (no download).
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers.utils import logging as df_logging
from tokenizers import pre_tokenizers
from transformers import (
    CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5Tokenizer, UMT5Config,
    UMT5EncoderModel,
)
from transformers.utils import logging as hf_logging


@contextmanager
def quiet() -> Iterator[None]:
    """Silence transformers' warnings and the progress bars of both libraries (saving/loading) for the duration."""
    verbosity, bars = hf_logging.get_verbosity(), (hf_logging.is_progress_bar_enabled(),
                                                  df_logging.is_progress_bar_enabled())
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    df_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars[0]:
            hf_logging.enable_progress_bar()
        if bars[1]:
            df_logging.enable_progress_bar()


# Importing these pipelines first (anywhere) makes transformers warn once that CLIP/Siglip image processors fall
# back to PIL without torchvision; nothing here uses image processors.
with quiet():
    from diffusers import FluxPipeline, WanPipeline

    from .tiny import tiny_flux_pipeline, tiny_flux_transformer, tiny_wan_pipeline

_CHARS = [c for c in string.printable if not c.isspace()]  # T5 pieces: ASCII letters, digits, punctuation


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """Byte-level CLIP BPE tokenizer without merges (one token per byte), padded/truncated to 77 tokens."""
    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    specials = ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(specials + chars + [c + "</w>" for c in chars])}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def tiny_t5_tokenizer() -> T5Tokenizer:
    """Character-level T5 unigram tokenizer (``<pad>``=0, ``</s>``=1, ``<unk>``=2), no sentinel tokens."""
    pieces = ["<pad>", "</s>", "<unk>", "▁"] + _CHARS + ["▁" + c for c in _CHARS]
    return T5Tokenizer(vocab=[(p, 0.0 if i < 3 else -1.0) for i, p in enumerate(pieces)], extra_ids=0,
                       model_max_length=512)


def tiny_clip_text_model(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """Random CLIP text encoder, hidden size 32 (so ``pooler_output`` is (B, 32))."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=32, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return CLIPTextModel(config).eval()


def _t5_config(cls: type[T5Config], tokenizer: T5Tokenizer) -> T5Config:
    return cls(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
               relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def save_tiny_flux_pipeline(path: str | Path, seed: int = 0) -> Path:
    """Save the tiny random ``FluxPipeline`` of :mod:`budcache.tiny` with CLIP + T5 text encoders (dim 32)."""
    with torch.random.fork_rng(devices=[]):
        base = tiny_flux_pipeline(tiny_flux_transformer(seed))
        torch.manual_seed(seed)
        tokenizer, tokenizer_2 = tiny_clip_tokenizer(), tiny_t5_tokenizer()
        text = dict(tokenizer=tokenizer, text_encoder=tiny_clip_text_model(tokenizer), tokenizer_2=tokenizer_2,
                    text_encoder_2=T5EncoderModel(_t5_config(T5Config, tokenizer_2)).eval())
    with quiet():
        FluxPipeline(**{**base.components, **text}).save_pretrained(path)
    return Path(path)


def save_tiny_wan_pipeline(path: str | Path, seed: int = 0) -> Path:
    """Save the tiny random ``WanPipeline`` of :mod:`budcache.tiny` with a UMT5 text encoder (dim 32)."""
    with torch.random.fork_rng(devices=[]):
        base = tiny_wan_pipeline(seed)
        tokenizer = tiny_t5_tokenizer()
        text = dict(tokenizer=tokenizer, text_encoder=UMT5EncoderModel(_t5_config(UMT5Config, tokenizer)).eval())
    with quiet():
        WanPipeline(**{**base.components, **text}).save_pretrained(path)
    return Path(path)
