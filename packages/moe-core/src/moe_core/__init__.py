"""moe-core: run Mixture-of-Experts models larger than memory on MLX.

`offload(model, model_path, ...)` swaps every expert bank of a lazily loaded mlx-lm model for one
that keeps only some experts resident and reads the rest from the checkpoint when the router picks
them. By default the output is identical to the unmodified model's.
"""

from ._backend import Backend, CPUBackend, CUDABackend, MetalBackend, detect_backend
from ._cache import CacheStats, ExpertCache, Wave
from ._checkpoint import fingerprint
from ._errors import BudgetError, CheckpointError, MoEError, UnsupportedModelError
from ._geometry import Geometry, describe
from ._handle import OffloadHandle
from ._miss import MISS_MODES
from ._offload import offload
from ._pack import PACK_NAME, open_pack, pack
from ._plan import Plan, plan_budget
from ._policy import POLICIES, Policy, make_policy
from ._size import parse_size

__all__ = [
    "MISS_MODES",
    "PACK_NAME",
    "POLICIES",
    "Backend",
    "BudgetError",
    "CPUBackend",
    "CUDABackend",
    "CacheStats",
    "CheckpointError",
    "ExpertCache",
    "Geometry",
    "MetalBackend",
    "MoEError",
    "OffloadHandle",
    "Plan",
    "Policy",
    "UnsupportedModelError",
    "Wave",
    "describe",
    "detect_backend",
    "fingerprint",
    "make_policy",
    "offload",
    "open_pack",
    "pack",
    "parse_size",
    "plan_budget",
]
