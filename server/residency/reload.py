"""A reload: its plan (which models keep their state, which open before the swap, the rest start unloaded),
and the plan applied: new models opened, all or none, within the budget, then swapped in with the adapters."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from ..engine.engine import Engine
from ..errors import ConfigError
from ..models_toml import SAMPLING_KEYS, ModelConfig
from ..quantities import format_size
from .footprint import Footprint, as_placed, estimate_together
from .manager import Residency
from .resident import Resident, ServedModel, Status

# A reload's swap: the new model set's engines (None: not loaded) and the names whose engine changes, to the
# catalogue, which opens their adapters and calls the commit in the same step as its own.
Swap = Callable[[Mapping[str, Engine | None], set[str], Callable[[], None]], Awaitable[None]]

# The sampling defaults are read per request from the config (registry.resolve), so they change without a reload.
_ROUTING_ONLY = {"aliases", "load", "keep_alive", *SAMPLING_KEYS}


@dataclass(frozen=True)
class ReloadPlan:
    """What serving a new models.toml changes. A model not kept and not loaded starts unloaded; a loaded model
    not kept is retired once the new set serves."""

    configs: tuple[ModelConfig, ...]  # every model from now on, in models.toml's order
    kept: frozenset[str]  # unchanged but for ids, load or keep_alive: its state carries over
    load: tuple[ModelConfig, ...]  # opened before the swap, all or none: changed models that were loaded, pinned ones


def plan_reload(residents: Mapping[str, Resident], configs: Iterable[ModelConfig]) -> ReloadPlan:
    """The plan for serving `configs` where `residents` are served now."""
    configs = tuple(configs)
    kept = frozenset(c.name for c in configs if c.name in residents and not needs_reload(residents[c.name].config, c))

    def loaded(name: str) -> bool:
        return name in residents and residents[name].status is Status.LOADED

    load = tuple(c for c in configs
                 if (c.name in kept and c.pinned and not loaded(c.name))
                 or (c.name not in kept and (c.pinned or loaded(c.name))))
    return ReloadPlan(configs, kept, load)


def needs_reload(old: ModelConfig, new: ModelConfig) -> bool:
    """Anything but the ids and residency changes how the model is loaded; those only change routing and unloads."""
    return old.model_dump(exclude=_ROUTING_ONLY) != new.model_dump(exclude=_ROUTING_ONLY)


async def apply(residency: Residency, plan: ReloadPlan,
                open_all: Callable[[list[ModelConfig]], dict[str, ServedModel]], swap: Swap) -> list[ServedModel]:
    """Serve `plan` (inside `residency.reloading()`): open its new models, all or none, within the budget beside
    the models kept (ConfigError), then let `swap` commit the new model set. Returns the engines retired:
    nobody reaches them any more; they close once their admitted requests end (the caller's)."""
    old = residency.residents
    kept = {name: old[name] for name in plan.kept}
    # The kept engines stay open until the swap: the catalogue opens adapters on them.
    leases = [residency.hold(n) for n, r in kept.items() if r.status is Status.LOADED and r.served is not None]
    try:
        # Opened together, so each plans its GPU layers beside the ones before it (residency/footprint.py).
        footprints = await asyncio.to_thread(estimate_together, plan.load, residency.gpu_room())
        _check_fits(residency.budget, plan, kept, footprints)
        opened = await asyncio.to_thread(open_all, [as_placed(c, footprints[c.name]) for c in plan.load])
        residents = {c.name: kept.get(c.name) or Resident(c, int(time.time())) for c in plan.configs}
        engines = {n: (opened[n].engine if n in opened else r.served.engine if r.served is not None else None)
                   for n, r in residents.items()}
        changed = {n for n, r in old.items() if r.served is not None and residents.get(n) is not r} | set(opened)
        retired: list[ServedModel] = []

        def commit() -> None:
            for config in plan.configs:
                residents[config.name].config = config  # ids, keep_alive, load may change without a reload
            retired.extend(residency.swap_in(residents, {n: (s, footprints[n]) for n, s in opened.items()}))

        try:
            await swap(engines, changed, commit)
        except BaseException:
            if residency.residents is not residents:  # not swapped in: the new engines serve nobody
                await asyncio.to_thread(_close_each, list(opened.values()))
            raise
    finally:
        for lease in leases:
            lease.release()
    for resident in residents.values():
        residency.keep_alive.reschedule(resident)
    return retired


def _check_fits(budget: int, plan: ReloadPlan, kept: Mapping[str, Resident],
                footprints: Mapping[str, Footprint]) -> None:
    in_use = sum(r.memory("cpu") for r in kept.values() if r.holds_memory)
    need = sum(f.cpu() for f in footprints.values())
    if plan.load and in_use + need > budget:
        raise ConfigError(f"loading {', '.join(c.name for c in plan.load)} needs an estimated {format_size(need)}; "
                          f"memory_budget {format_size(budget)} has {format_size(max(0, budget - in_use))} left "
                          "beside the models that stay loaded")


def _close_each(models: list[ServedModel]) -> None:
    for served in models:
        served.close()
