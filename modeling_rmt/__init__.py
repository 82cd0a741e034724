"""Recurrent memory wrappers for Hugging Face backbones (docs/design.md, memory wrappers): an encoder classifier and
a decoder LM; both can checkpoint segments (`segment_checkpointing=True`) to train through many segments."""
from modeling_rmt.decoder import MemoryCell, RecurrentWrapper
from modeling_rmt.encoder import RMTEncoderForSequenceClassification

__all__ = ["MemoryCell", "RecurrentWrapper", "RMTEncoderForSequenceClassification"]
