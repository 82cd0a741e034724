"""Recurrent memory wrappers for Hugging Face backbones (SPEC §4): an encoder classifier and a decoder LM."""
from modeling_rmt.decoder import MemoryCell, RecurrentWrapper
from modeling_rmt.encoder import RMTEncoderForSequenceClassification

__all__ = ["MemoryCell", "RecurrentWrapper", "RMTEncoderForSequenceClassification"]
