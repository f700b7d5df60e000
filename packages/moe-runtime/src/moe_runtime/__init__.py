"""moe-runtime: sessions, `generate` and `stream_generate` for Mixture-of-Experts models larger
than memory, on mlx-lm.

`Session(model, memory=..., profile=..., kv_bits=...)` loads a model once with its experts
offloaded by moe-core, reuses the prompt cache across calls and turns, and saves the resident
experts so the next start is warm. `session.open_batch(n)` decodes up to n requests together,
each token for token as it would run alone. Generation runs through mlx-lm's own loop and returns its
`GenerationResponse`s; by default the output is the unmodified model's.

Past one machine, `Session(model, ..., group=mx.distributed.init())` runs this rank's layers of
a model split across hosts (every rank makes the same calls); `Leader` and `follow` serve one,
rank 0 taking the requests and the other ranks following it.
"""

from ._batch import Batch
from ._control import LaunchError, Topology
from ._demo import demo_model_path
from ._distributed import GroupUnavailable, Leader, follow
from ._kv import KVPlan, plan_kv
from ._load import ModelLoadError, load_checked
from ._oneshot import generate, stream_generate
from ._pipeline import Stage, pipeline, plan_split
from ._resolve import ModelNotFoundError, resolve_model
from ._session import Session
from ._snapshot_files import PromptCacheWarning
from ._stops import StopText
from ._stream import Response
from ._verify import FileCheck, verify
from ._warm import WarmStartWarning, default_cache_dir

__all__ = [
    "Batch",
    "FileCheck",
    "GroupUnavailable",
    "KVPlan",
    "LaunchError",
    "Leader",
    "ModelLoadError",
    "ModelNotFoundError",
    "PromptCacheWarning",
    "Response",
    "Session",
    "Stage",
    "StopText",
    "Topology",
    "WarmStartWarning",
    "default_cache_dir",
    "demo_model_path",
    "follow",
    "generate",
    "load_checked",
    "pipeline",
    "plan_kv",
    "plan_split",
    "resolve_model",
    "stream_generate",
    "verify",
]
