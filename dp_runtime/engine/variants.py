"""Which precision variant of a bundle to run: the one asked for, or the fastest allowed on this device.

A variant runs only if its recorded max action error (measured at export
against the fp32 torch policy) is within its tolerance, or within an explicit
``max_action_error`` the user sets, and only on a device with native kernels
for it (``precision.check_runs_on``).
"""
from __future__ import annotations

from ..errors import BundleError
from ..precision import PRECISIONS, check_runs_on, supported_on
from ..spec import BundleSpec, GraphSet
from .backends import device_kind


def measured_on(g: GraphSet) -> str:
    """The device kind ('cpu' | 'cuda') whose latency the variant recorded ('' when emulated or unknown).

    ``latency_device`` is "<provider> <machine>[ (emulated...)]", as the exporter writes it."""
    label = g.latency_device
    if not label or "emulated" in label:
        return ""
    return device_kind(label.split()[0])


def error_limit(g: GraphSet, max_action_error: float | None) -> float:
    return g.tolerance if max_action_error is None else max_action_error


def choose_graphs(spec: BundleSpec, fmt: str, precision: str, device: str, max_action_error: float | None = None,
                  need_inpaint: bool = False) -> GraphSet:
    """``device``: the resolved device ('cpu' | 'cuda'). ``precision``: a name or 'auto'."""
    sets = [g for g in spec.graphs if g.format == fmt]
    if not sets:
        raise BundleError(f"bundle has no {fmt} graphs (has {spec.formats})")
    if precision != "auto":
        g = next((g for g in sets if g.precision == precision), None)
        if g is None:
            raise BundleError(f"bundle has no {fmt} graphs in precision {precision!r} (has "
                              f"{[s.precision for s in sets]}; dp-export --precision adds variants)")
        check_runs_on(precision, device, fmt)
        if need_inpaint and not g.inpaint_step:
            has = [s.precision for s in sets if s.inpaint_step]
            fix = f"variants with one: {has}" if has else "re-export the bundle with dp-export --inpaint"
            raise BundleError(f"{g.name} has no inpainting step graph (chunk_transition inpaint); {fix}")
        limit = error_limit(g, max_action_error)
        if not g.max_abs_error <= limit:
            raise BundleError(f"{g.name}: recorded max action error {g.max_abs_error:.4f} (normalized) exceeds "
                              f"{limit:g}{' (it was forced at export)' if g.forced else ''}; set max_action_error "
                              f">= {g.max_abs_error:.4f} to run it anyway")
        return g
    allowed = [g for g in sets if g.max_abs_error <= error_limit(g, max_action_error)
               and g.precision in supported_on(device, fmt) and (g.inpaint_step or not need_inpaint)]
    if not allowed:
        raise BundleError(f"no {fmt} variant of this bundle runs on {device} within its recorded error bound "
                          f"(variants: {[(g.precision, round(g.max_abs_error, 5)) for g in sets]}"
                          f"{'; inpainting needs one with an inpaint step graph' if need_inpaint else ''})")
    if all(measured_on(g) == device and g.latency_ms > 0 for g in allowed):
        return min(allowed, key=lambda g: g.latency_ms)
    return min(allowed, key=lambda g: PRECISIONS[g.precision].bytes_per_weight)  # fewest bytes streamed
