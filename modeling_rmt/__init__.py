"""Recurrent memory wrappers for Hugging Face backbones (docs/design.md, memory wrappers): an encoder classifier and
a decoder LM, both configured by one `MemoryConfig` (docs/design.md, "The memory configuration"); both can
checkpoint segments (`segment_checkpointing=True`) to train through many segments."""
from modeling_rmt.decoder import MemoryCell, RecurrentWrapper
from modeling_rmt.encoder import RMTEncoderForSequenceClassification
from modeling_rmt.memory_config import MemoryConfig
from modeling_rmt.pretrained import (RMTDecoderConfig, RMTEncoderConfig, RMTForCausalLM, RMTForSequenceClassification,
                                     register_auto_classes)

register_auto_classes()  # the RMT model types become known to transformers' Auto classes (modeling_rmt.pretrained)

__all__ = ["MemoryConfig", "MemoryCell", "RecurrentWrapper", "RMTEncoderForSequenceClassification", "RMTEncoderConfig",
           "RMTDecoderConfig", "RMTForSequenceClassification", "RMTForCausalLM"]
