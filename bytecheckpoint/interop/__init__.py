"""Conversions between bytecheckpoint and other checkpoint formats (torch files, safetensors in the
Hugging Face layout, Hugging Face model folders, PyTorch DCP).

    from bytecheckpoint.interop import export_checkpoint, import_checkpoint
    export_checkpoint("ckpt/step_100", "hf-out", to="safetensors", rename={"model.": ""})
    import_checkpoint("hf-model", "ckpt/imported", from_="hf-dir")

A DCP checkpoint needs no import to be loaded: ``bcp.load`` and ``bcp.load_full`` read it in place.
"""

from __future__ import annotations

from .convert import (
    DEFAULT_MAX_SHARD_BYTES,
    ConversionReport,
    ExportFormat,
    ExportReport,
    ImportFormat,
    ImportReport,
    export_checkpoint,
    import_checkpoint,
)
from .errors import ConversionError

__all__ = [
    "DEFAULT_MAX_SHARD_BYTES",
    "ConversionError",
    "ConversionReport",
    "ExportFormat",
    "ExportReport",
    "ImportFormat",
    "ImportReport",
    "export_checkpoint",
    "import_checkpoint",
]
