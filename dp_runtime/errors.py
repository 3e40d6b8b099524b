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

    def __init__(self, layers, where: str = "model", hint: str = "", reason: str = ""):
        """``reason``: why the rule applies to this source (default: the EMA mismatch)."""
        self.layers = list(layers)
        listed = ", ".join(f"{name} ({kind})" for name, kind in self.layers)
        msg = (
            f"{where} has {len(self.layers)} layer(s) with running statistics: {listed}. "
            f"{reason or self.EMA_REASON}; replace BatchNorm with GroupNorm "
            "(dp_runtime.model.replace_bn_with_gn) before training."
        )
        if hint:
            msg += " " + hint
        super().__init__(msg)


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
