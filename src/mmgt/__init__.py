"""mmgt: co-speech gesture video generation (MMGT re-implementation) on Lightning + Hydra."""

import logging as _logging

__version__ = "0.1.0"

# bitsandbytes (the optional `bnb` extra: 8-bit AdamW), which diffusers imports whenever it is installed, warns at
# import on CPUs with AVX512-BF16 that an optional 4-bit kernel package is missing; mmgt uses only its optimisers
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
