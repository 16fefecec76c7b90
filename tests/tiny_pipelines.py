"""Test fixture: tiny text-to-image pipelines with random weights, written to disk like real ones.

Nothing can be downloaded on our machines, so tests (and CPU smoke runs) build a Stable
Diffusion (UNet + VAE + CLIP text encoder) or Stable Diffusion 3 (MMDiT + VAE + two CLIP text
encoders, no T5) pipeline from configs, with a character-level CLIP tokenizer written from a
generated vocabulary, and ``save_pretrained`` it. The policies then load the folder through
the same ``from_pretrained`` path a user's real model takes.

Tests import it as ``tiny_pipelines`` (pytest puts ``tests/`` on the path); from a shell:

    python tests/tiny_pipelines.py sd3 /tmp/tiny-sd3
"""
from __future__ import annotations

import json
import string
import sys
from pathlib import Path

import torch

TEXT_DIM = 32


def clip_tokenizer(folder: Path):
    """A CLIPTokenizer over single characters (no merges), saved to and loaded from ``folder``."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)


def _clip_config(projection: bool):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=200, hidden_size=TEXT_DIM, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                          max_position_embeddings=16, projection_dim=TEXT_DIM, bos_token_id=0, eos_token_id=1, pad_token_id=1)


def _vae(latent_channels: int):
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=[8, 16], in_channels=3, out_channels=3, latent_channels=latent_channels,
                         down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                         norm_num_groups=4, sample_size=32)


def build_tiny_sd(folder: str, seed: int = 0) -> Path:
    """A Stable Diffusion 1.x-shaped pipeline (32x32 images, 16x16 latents) at ``folder``."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = Path(folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=[16, 32],
                                down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                                up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], cross_attention_dim=TEXT_DIM,
                                attention_head_dim=4, norm_num_groups=8)
    pipe = StableDiffusionPipeline(
        vae=_vae(4), text_encoder=CLIPTextModel(_clip_config(False)), tokenizer=clip_tokenizer(folder / "_tok"), unet=unet,
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                                set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def build_tiny_sd3(folder: str, seed: int = 0) -> Path:
    """A Stable Diffusion 3-shaped pipeline (32x32 images, 16x16 latents, no T5) at ``folder``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    folder = Path(folder)
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=2 * TEXT_DIM,
                                        caption_projection_dim=16, pooled_projection_dim=2 * TEXT_DIM, pos_embed_max_size=16)
    tok = clip_tokenizer(folder / "_tok")
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_vae(4),
        text_encoder=CLIPTextModelWithProjection(_clip_config(True)), tokenizer=tok,
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(True)), tokenizer_2=tok, text_encoder_3=None, tokenizer_3=None)
    pipe.save_pretrained(folder)
    return folder


if __name__ == "__main__":  # python tests/tiny_pipelines.py {sd,sd3} FOLDER
    kind, out = sys.argv[1], sys.argv[2]
    print({"sd": build_tiny_sd, "sd3": build_tiny_sd3}[kind](out))
