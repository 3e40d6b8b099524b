"""Exception hierarchy: every error a user can hit names the input and what was expected."""


class DpRuntimeError(Exception):
    """Base class for all dp_runtime errors."""


class BatchNormError(DpRuntimeError):
    """A model holds layers with running statistics (BatchNorm and friends).

    EMA averages parameters but not BatchNorm's running statistics, so the EMA
    model would normalize with statistics that never matched its weights and
    silently perform badly.
    """

    EMA_REASON = ("EMA averages parameters, not BatchNorm running statistics, so an EMA policy "
                  "with BatchNorm silently performs badly")

    SHOWN = 3  # layers named in the message; all of them are in ``layers``
    FIX = "replace BatchNorm with GroupNorm (dp_runtime.model.replace_bn_with_gn) before training"

    def __init__(self, layers, where: str = "model", hint: str = "", reason: str = ""):
        """``hint``: the fix in the source framework's terms (default: ours); ``reason``: why the rule applies
        to this source (default: the EMA mismatch). Two lines: what and the fix, then why."""
        self.layers = list(layers)
        named = ", ".join(f"{name} ({'BatchNorm' if kind.startswith('state-dict') else kind})"
                          for name, kind in self.layers[:self.SHOWN])
        more = f" and {len(self.layers) - self.SHOWN} more" if len(self.layers) > self.SHOWN else ""
        super().__init__(f"{where}: {len(self.layers)} layer(s) keep running statistics: {named}{more}. "
                         f"Fix: {hint or self.FIX}\nWhy: {reason or self.EMA_REASON}.")


class ConfigError(DpRuntimeError):
    """A configuration value is missing, malformed or inconsistent."""


class ShapeError(DpRuntimeError):
    """An array does not have the shape or dtype the spec expects."""


class CheckpointError(DpRuntimeError):
    """A checkpoint file is missing, corrupt, truncated or inconsistent with its config."""


class BundleError(DpRuntimeError):
    """A bundle fails verification (hash, manifest, format version, graph scan)."""


class ParityError(DpRuntimeError):
    """Exported graphs disagree with the torch policy beyond tolerance."""


class InputError(DpRuntimeError):
    """An observation or message cannot be used (NaN, wrong encoding, stale, ...)."""


class StaleInputError(InputError):
    """An input is older than max_obs_age."""


class BagError(DpRuntimeError):
    """A rosbag2 file cannot be read as expected."""


class ServerError(DpRuntimeError):
    """The policy server (dp-serve) did not give a chunk: unreachable, too slow, or it refused the request."""
