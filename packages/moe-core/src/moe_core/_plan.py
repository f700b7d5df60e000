"""`plan_budget(geometry, memory=...) -> Plan`: how many expert slots each MoE layer gets, what the
memory went to, and why. A plan is computed once and handed down: a profile may turn it into
another plan (spreading the same bytes differently over the layers), and `offload` installs it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._backend import Backend, CPUBackend, detect_backend
from ._errors import BudgetError
from ._geometry import Geometry
from ._host import row_bytes
from ._lowbit import lowbit_expert_bytes
from ._size import format_sizes, parse_size

# Tokens per prefill chunk the activation headroom is sized for (mlx-lm prefills in chunks).
PREFILL_TOKENS = 512
_MARGIN = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Plan:
    """Slots per MoE layer for one checkpoint on one backend, and how the memory was spent."""

    capacity: tuple[int, ...]  # slots per MoE layer
    reason: str
    memory: int | None  # the process budget in bytes, when one was given or derived
    backend: str
    base_bytes: int  # what the process held before the model's weights
    dense_bytes: int  # non-expert weights
    expert_bytes: tuple[int, ...]  # one expert's bytes, per layer
    scratch_bytes: int  # activations and margin kept free
    reserve_bytes: int  # kept free for the caller (KV cache)
    num_experts: tuple[int, ...] = ()  # per layer
    fingerprint: str = ""  # of the checkpoint planned for
    # The lossy `lowbit` miss mode's resident low-bit copy of every expert: its bits (0: none)
    # and its bytes per MoE layer, taken from the same budget as the slots
    lowbit_bits: int = 0
    lowbit_bytes: tuple[int, ...] = ()
    # CUDA's second tier: experts per MoE layer kept in host memory (empty: none), and the host
    # memory that was given or derived for it
    host_capacity: tuple[int, ...] = ()
    host_memory: int | None = None

    def __post_init__(self) -> None:
        if len(self.capacity) != len(self.expert_bytes):
            raise ValueError(
                f"the plan has {len(self.capacity)} capacities for {len(self.expert_bytes)} "
                "MoE layers"
            )
        for i, (c, e) in enumerate(zip(self.capacity, self.num_experts, strict=False)):
            if not 1 <= c <= e:
                raise BudgetError(f"capacity of MoE layer {i} must be in 1..{e}, got {c}")
        if self.host_capacity and len(self.host_capacity) != len(self.capacity):
            raise ValueError("the plan's host tier does not list every MoE layer")

    @property
    def slot_bytes(self) -> int:
        """Bytes all the slots take."""
        return sum(c * b for c, b in zip(self.capacity, self.expert_bytes, strict=True))


def plan_budget(
    geometry: Geometry,
    *,
    capacity: int | list[int] | tuple[int, ...] | None = None,
    memory: int | str | None = None,
    reserve: int | str = 0,
    backend: Backend | None = None,
    lowbit_bits: int = 0,
    host_memory: int | str | None = None,
) -> Plan:
    """The slots per MoE layer for `capacity` (one number or one per layer) or `memory` (bytes
    or text such as "16GB" the whole process may use), not both; with neither, what the backend
    has available. `reserve` is kept free for the caller (KV cache).

    `lowbit_bits` (the lossy `lowbit` miss mode): a copy of every expert at that many bits is
    kept resident too, and its bytes come out of `memory` before the slots'.

    Where the GPU has memory of its own (CUDA), `memory` is GPU memory and `host_memory` sizes
    a second tier of experts in host RAM (0: none); without it, the tier takes half of what
    the host has available (the cgroup's limit included). Where there is one memory (CPU,
    Metal), `host_memory` is refused.

    Nothing is loaded, so a tool can show what fits first; raises `BudgetError` when `memory`
    cannot hold the smallest working set.
    """
    if capacity is not None and memory is not None:
        raise ValueError("give capacity or memory, not both")
    memory = None if memory is None else parse_size(memory)
    reserve = parse_size(reserve)
    backend = backend or detect_backend()
    num_experts = geometry.num_experts
    expert_bytes = geometry.expert_bytes
    base = backend.process_memory()
    activations = _activation_bytes(geometry)
    scratch = _MARGIN + backend.cache_reserve(activations) + activations
    lowbit = _lowbit_bytes(geometry, lowbit_bits)
    common: dict[str, Any] = dict(
        backend=backend.name,
        base_bytes=base,
        dense_bytes=geometry.dense_bytes,
        expert_bytes=expert_bytes,
        scratch_bytes=scratch,
        reserve_bytes=reserve,
        num_experts=num_experts,
        fingerprint=geometry.fingerprint,
        lowbit_bits=lowbit_bits,
        lowbit_bytes=lowbit,
    )
    caps: list[int] | tuple[int, ...]
    if capacity is not None:
        caps = [capacity] * len(num_experts) if isinstance(capacity, int) else list(capacity)
        if len(caps) != len(num_experts):
            raise ValueError(
                f"capacity lists {len(caps)} layers, the model has {len(num_experts)} MoE layers"
            )
        for i, (c, e) in enumerate(zip(caps, num_experts, strict=True)):
            if c < 1:
                raise BudgetError(f"capacity of MoE layer {i} must be at least 1, got {c}")
            caps[i] = min(c, e)
        reason = "capacity given" + _lowbit_reason(lowbit, expert_bytes, lowbit_bits)
        tier, why = _host_tier(geometry, tuple(caps), host_memory, backend)
        return Plan(tuple(caps), reason + why, None, **common, **tier)

    given = memory is not None
    memory = memory if memory is not None else backend.available_memory()
    fixed = base + geometry.dense_bytes + scratch + reserve + sum(lowbit)
    per_slot = sum(expert_bytes)  # one slot in every MoE layer
    slots = (memory - fixed) // per_slot
    smallest = max(k or 1 for k in geometry.top_k)
    if slots < smallest:
        need = fixed + smallest * per_slot
        budget, needed, process, dense, extra, slot = format_sizes(
            memory, need, base, geometry.dense_bytes, scratch + reserve + sum(lowbit), per_slot
        )
        what = "scratch, reserve and low-bit copies" if lowbit else "scratch and reserve"
        raise BudgetError(
            f"memory budget {budget} is too small: it needs at least {needed} ({process} process, "
            f"{dense} non-expert weights, {extra} {what}, {smallest} experts per "
            f"layer of {slot} per slot across layers)"
        )
    caps = tuple(int(min(slots, e)) for e in num_experts)
    source = "given" if given else f"available on {backend.name}"
    most = max(num_experts)
    room = (
        f"every expert of every layer ({most if min(num_experts) == most else 'all'} per layer)"
        if slots >= most
        else f"{int(slots)} of {most} experts per layer"
    )
    budget, kept = format_sizes(memory, fixed)
    reason = (
        f"{budget} {source}: {kept} for the process, non-expert weights, scratch and "
        f"reserve{' and low-bit copies' if lowbit else ''} leaves room for {room}"
    ) + _lowbit_reason(lowbit, expert_bytes, lowbit_bits)
    tier, why = _host_tier(geometry, caps, host_memory, backend)
    return Plan(caps, reason + why, memory, **common, **tier)


def _host_tier(
    geometry: Geometry, caps: tuple[int, ...], host_memory: int | str | None, backend: Backend
) -> tuple[dict, str]:
    """The host tier's experts per layer (as `Plan` fields) and what to add to the reason."""
    if _no_tier(host_memory):
        host_memory = 0
    if backend.unified_memory:
        if host_memory is not None and parse_size(host_memory) > 0:
            raise BudgetError(
                f"--host-memory is for CUDA, where the GPU has memory of its own; on "
                f"{backend.name} there is one memory, which --memory sizes"
            )
        return {}, ""
    given = host_memory is not None
    size = (
        parse_size(host_memory) if host_memory is not None else CPUBackend().available_memory() // 2
    )
    rows = [row_bytes(bank) for bank in geometry.banks]
    per_row = sum(rows)  # one expert in every MoE layer
    held = size // per_row if per_row else 0
    tier = tuple(int(min(held, e)) for e in geometry.num_experts)
    # The tier holds what the GPU holds too (it is inclusive): no larger than the slots, it
    # would only stage; nor is there anything to hold where the GPU holds every expert.
    resident = all(c >= e for c, e in zip(caps, geometry.num_experts, strict=True))
    if size == 0 or held <= max(caps) or resident:
        if given and size and not resident:
            need = format_sizes(max(c + 1 for c in caps) * per_row)[0]
            raise BudgetError(
                f"host memory {format_sizes(size)[0]} holds {held} experts per layer, no more "
                f"than the GPU's slots: give at least {need}, or 0 for no host tier"
            )
        return {"host_memory": 0}, ""
    used = sum(h * r for h, r in zip(tier, rows, strict=True))
    source = "given" if given else "half of the host's available memory"
    most = max(geometry.num_experts)
    room = "every expert" if min(tier) == most else f"{min(tier)} of {most} experts per layer"
    (text,) = format_sizes(used)
    return {
        "host_capacity": tier,
        "host_memory": size,
    }, f"; host tier ({source}): {text} for {room}"


def _lowbit_bytes(geometry: Geometry, bits: int) -> tuple[int, ...]:
    """Bytes of every expert's low-bit copy, per MoE layer (empty without copies)."""
    if not bits:
        return ()
    if bits not in (2, 3, 4):
        raise ValueError(f"low-bit copies are 2, 3 or 4 bits, got {bits}")
    if len(geometry.projections) != len(geometry.banks):
        raise ValueError("this geometry does not list its projections: describe(model, path)")
    return tuple(
        bank.num_experts * lowbit_expert_bytes(dims, bits)
        for bank, dims in zip(geometry.banks, geometry.projections, strict=True)
    )


def _lowbit_reason(lowbit: tuple[int, ...], expert_bytes: tuple[int, ...], bits: int) -> str:
    if not lowbit:
        return ""
    (text,) = format_sizes(sum(lowbit))
    slots = sum(lowbit) / sum(expert_bytes)
    return (
        f"; {bits}-bit copies of every expert (LOSSY miss mode lowbit) take {text}, "
        f"the memory of {slots:.1f} full slots per layer"
    )


def _no_tier(host_memory: int | str | None) -> bool:
    """`0` (or "0", "0GB"): no host tier, where sizes are otherwise positive."""
    if isinstance(host_memory, str):
        digits = host_memory.strip().lower().rstrip("kmgtib ")
        return digits.replace(".", "", 1).isdigit() and float(digits) == 0
    return host_memory == 0


def _activation_bytes(geometry: Geometry) -> int:
    """Float32 activations of one prefill chunk through the widest expert bank, its logits, and
    the recurrent states a linear-attention layer keeps while it prefills."""
    widest = 0
    for bank, k in zip(geometry.banks, geometry.top_k, strict=True):
        rows = {p.name.split(".")[0]: p.shape for p in bank.params if p.name.endswith("weight")}
        hidden = sum(shape[0] for shape in rows.values())
        widest = max(widest, (k or 1) * hidden)
    per_token = (widest + geometry.vocab_size) * 4 * 2 + geometry.state_bytes_per_token
    return PREFILL_TOKENS * per_token
