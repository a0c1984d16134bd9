"""A tiny width-128 ``Sam3TrackerVideoModel`` for the video task's tests (the narrowest the
video tracker runs at: its object pointers split into 64-wide memory tokens)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Sam3TrackerVideoConfig, Sam3TrackerVideoModel

from sam3_lora.model.loading import tiny_config

WIDTH = 128


def tiny_video_config(image_size: int = 56) -> Sam3TrackerVideoConfig:
    """``sam3-tiny``'s ViT at ``image_size`` under a width-128 neck, heads and memory, one
    memory-attention layer and one fuser block."""
    vision = tiny_config(image_size=image_size).vision_config
    vision.fpn_hidden_size = WIDTH
    return Sam3TrackerVideoConfig(
        vision_config=vision.to_dict(),
        prompt_encoder_config={"hidden_size": WIDTH, "image_size": image_size, "patch_size": 14},
        mask_decoder_config={"hidden_size": WIDTH, "mlp_dim": 2 * WIDTH, "num_attention_heads": 4,
                             "iou_head_hidden_dim": WIDTH},
        memory_attention_hidden_size=WIDTH, memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=2 * WIDTH, memory_encoder_hidden_size=WIDTH,
        memory_encoder_output_channels=64, mask_downsampler_embed_dim=WIDTH, memory_fuser_embed_dim=WIDTH,
        memory_fuser_intermediate_dim=2 * WIDTH, memory_fuser_num_layers=1, image_size=image_size)


def tiny_video_tracker(image_size: int = 56, seed: int = 0) -> Sam3TrackerVideoModel:
    """Random weights, seeded; dropout off (memory attention has 0.1), so that a loss curve
    depends on the weights alone. The memory fuser's layer scale starts at SAM 2's 1e-6
    (``memory_fuser_layer_scale_init_value``): transformers' random init sets it to 0, which
    shuts the fuser block (and any adapter inside it) off until the scale itself trains, as it
    does not under LoRA; a trained checkpoint has its own."""
    config = tiny_video_config(image_size)
    config.memory_attention_dropout = config.memory_attention_rope_dropout = 0.0
    torch.manual_seed(seed)
    model = Sam3TrackerVideoModel(config)
    with torch.no_grad():
        for block in model.memory_encoder.memory_fuser.layers:
            block.scale.fill_(config.memory_fuser_layer_scale_init_value)
    return model


def save_tiny_video_tracker(folder: Path, image_size: int = 56) -> Path:
    tiny_video_tracker(image_size).save_pretrained(folder)
    return folder
