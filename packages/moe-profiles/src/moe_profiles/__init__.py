"""moe-profiles: routing traces, expert profiles, pinning, per-layer budgets, a policy simulator.

Pure data and analysis: record a trace with `TraceRecorder` (observing an offload handle), replay it
with `simulate` (through `moe_core.ExpertCache`) against `belady`'s optimum, and distil it into a
`Profile` (counts, pinned set, per-layer budgets) that a session starts from; `select` chooses a
model's cache settings on a trace and keeps them only where they beat the defaults on its held-out
last part.
"""

from ._budget import allocate_slots, choose_pinned, hit_curves, pin_limit
from ._errors import ProfileError, TraceError
from ._presets import PRESETS, PresetPrompt, load_preset, load_preset_requests
from ._profile import Profile, find_profile
from ._select import Choice, Scored, Selection, compare_held_out, select
from ._simulate import (
    DEFAULT_POLICY,
    LayerResult,
    SimResult,
    belady,
    best_policy,
    compare,
    simulate,
)
from ._synthetic import synthetic_trace
from ._trace import LayerTrace, Segment, Trace, TraceRecorder

__all__ = [
    "DEFAULT_POLICY",
    "PRESETS",
    "Choice",
    "LayerResult",
    "LayerTrace",
    "PresetPrompt",
    "Profile",
    "ProfileError",
    "Scored",
    "Segment",
    "Selection",
    "SimResult",
    "Trace",
    "TraceError",
    "TraceRecorder",
    "allocate_slots",
    "belady",
    "best_policy",
    "choose_pinned",
    "compare",
    "compare_held_out",
    "find_profile",
    "hit_curves",
    "load_preset",
    "load_preset_requests",
    "pin_limit",
    "select",
    "simulate",
    "synthetic_trace",
]
