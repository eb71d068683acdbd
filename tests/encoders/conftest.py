from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from exitflow.encoders.text import TextEarlyExitEncoder, TextEncoderConfig, bundled_minilm_path
from exitflow.encoders.vit import ViTEarlyExitEncoder, ViTEncoderConfig

TINY_VIT = ViTEncoderConfig(
    modality="image",
    image_size=8,
    num_channels=1,
    patch_size=2,
    hidden_size=16,
    num_layers=4,
    num_heads=2,
    intermediate_size=32,
    num_classes=5,
    num_exits=4,
    gah_heads=2,
)


@pytest.fixture
def tiny_vit() -> ViTEarlyExitEncoder:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return ViTEarlyExitEncoder(TINY_VIT).eval()


@pytest.fixture(scope="session")
def minilm_tokenizer():
    return AutoTokenizer.from_pretrained(str(bundled_minilm_path()), local_files_only=True)


@pytest.fixture
def tiny_text(minilm_tokenizer) -> TextEarlyExitEncoder:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    bert = BertModel(
        BertConfig(
            vocab_size=minilm_tokenizer.vocab_size,
            hidden_size=16,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=24,
        ),
        add_pooling_layer=False,
    ).eval()
    cfg = TextEncoderConfig(exit_layers=(1, 2, 3), num_classes=4, head_hidden=8)
    return TextEarlyExitEncoder(cfg, backbone=bert, tokenizer=minilm_tokenizer).eval()
