"""Errors a user can cause. The CLI prints their message (no traceback) and exits non-zero."""


class McuforgeError(Exception):
    """Base class: a problem with the user's model, data, options or environment."""

    exit_code = 1


class ModelFormatError(McuforgeError):
    """A model file is missing, corrupt or of an unknown format."""


class UnsupportedOpError(McuforgeError):
    """The model uses an operator mcuforge does not implement."""


class GraphError(McuforgeError):
    """The graph is inconsistent (shapes, dtypes, dangling tensors, cycles)."""


class QuantizationError(McuforgeError):
    """Quantization could not be done (missing or unusable calibration data)."""


class InputError(McuforgeError):
    """Input data does not match what the model expects."""


class OutputDirError(McuforgeError):
    """The output directory cannot be written."""


class ToolchainError(McuforgeError):
    """A compiler or emulator is missing or failed."""


class DatasetError(McuforgeError):
    """A data set is unknown, or its local files are missing or malformed."""


class DoesNotFitError(McuforgeError):
    """The model does not fit the target's RAM or flash."""
