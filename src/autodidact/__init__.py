"""autodidact: a local language model that teaches itself new skills.

detect (router dissonance) -> distill (cloud teacher) -> fit (LoRA) -> export (.lora.arrow) -> deploy.
"""

__version__ = "0.1.0"
