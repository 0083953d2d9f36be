"""autodidact: a local language model that teaches itself new skills.

detect (router dissonance) -> distill (cloud teacher) -> fit (LoRA) -> export (.lora.arrow) -> deploy.
"""

import os as _os

# Set before anything imports torch (libgomp reads it once, when torch loads it). By default an
# OpenMP thread that waits for its partner spins; on a shared 2-core machine the partner is often
# descheduled, and every one of the thousands of parallel regions in a training step then waits
# out a time slice. Measured here with the machine busy: 30 tiny-model steps took 32.5 s on two
# spinning threads, 1.1 s with PASSIVE (and 1.6 s on one thread). Users can still override it.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
