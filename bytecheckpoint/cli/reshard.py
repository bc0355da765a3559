"""``reshard``: rewrite a checkpoint offline so each rank of a target layout reads one contiguous file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from integrations.cli_style import BadInput

from ..reshard_offline import TargetLayout, dim0_layout, read_layout_file, reshard_checkpoint
from .output import print_json, print_line, size_text
from .paths import new_storage, open_checkpoint
from .progress import byte_progress


def reshard(
    src: Annotated[str, typer.Argument(help="checkpoint to read (directory or URL)", show_default=False)],
    dst: Annotated[str, typer.Argument(help="new checkpoint to write (directory or URL)", show_default=False)],
    world_size: Annotated[int | None, typer.Option("--world-size", min=1, help="Target ranks; every tensor "
                                                   "split along dim 0 as torch.chunk / FSDP2 Shard(0) do.")] = None,
    layout: Annotated[Path | None, typer.Option("--layout", help="JSON layout file: each target rank's boxes "
                                                "(docs/cli.md, 'Layout files').", show_default=False)] = None,
    consolidate: Annotated[bool, typer.Option("--consolidate", help="Write every tensor whole into one "
                                              "data file (the same as --world-size 1).")] = False,
    tp: Annotated[int | None, typer.Option("--tp", min=1, help="Megatron target: tensor-parallel size "
                                           "(--pp and --dp default to 1).", show_default=False)] = None,
    pp: Annotated[int | None, typer.Option("--pp", min=1, help="Megatron target: pipeline-parallel size.",
                                           show_default=False)] = None,
    dp: Annotated[int | None, typer.Option("--dp", min=1, help="Megatron target: data-parallel size.",
                                           show_default=False)] = None,
    pp_layers: Annotated[str | None, typer.Option("--pp-layers", help="Megatron target: layers of each pipeline "
                                                  "stage, e.g. 2,1 (default: as even as torch.chunk splits them).",
                                                  show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Rewrite SRC into DST so that each target rank reads one contiguous file.

    Each rank's data file holds the bytes it loads, in the order it loads them. Source bytes are
    verified; DST gets checksums of its own. Exactly one of --world-size, --layout, --consolidate or
    a Megatron target (--tp/--pp/--dp, for checkpoints saved with framework="megatron")."""
    megatron = any(v is not None for v in (tp, pp, dp, pp_layers))
    chosen = [name for name, given in (("--world-size", world_size is not None), ("--layout", layout is not None),
                                       ("--consolidate", consolidate), ("--tp/--pp/--dp", megatron)) if given]
    if len(chosen) != 1:
        raise BadInput(f"reshard needs exactly one of --world-size, --layout, --consolidate, --tp/--pp/--dp (got "
                       f"{', '.join(chosen) or 'none'})")
    if layout is not None and not layout.is_file():
        raise BadInput(f"--layout {layout}: no such file")
    source, meta = open_checkpoint(src)
    destination = new_storage(dst)
    target: TargetLayout
    if layout is not None:
        target = read_layout_file(layout.read_text(), meta, str(layout))
    elif megatron:
        from integrations.megatron.offline_layout import MegatronTarget, megatron_layout, parse_layer_counts

        counts = parse_layer_counts(pp_layers, "--pp-layers")
        target = megatron_layout(meta, MegatronTarget(tp or 1, pp or 1, dp or 1, counts))
    else:
        target = dim0_layout(meta, 1 if consolidate else world_size)
    with byte_progress("reshard", 2 * meta.total_bytes) as advance:  # every byte read once, written once
        summary = reshard_checkpoint(source, destination, target, progress=advance)
    if as_json:
        print_json({"source": src, "destination": dst, "world_size": summary.world_size,
                    "data_files": summary.data_files, "bytes_per_rank": summary.bytes_per_rank,
                    "seconds": round(summary.seconds, 3)})
        return
    print_line(f"{dst}: {summary.world_size} rank(s), {len(summary.data_files)} data file(s), "
               f"{size_text(sum(summary.bytes_per_rank))} in {summary.seconds:.2f}s; bytes per rank "
               f"{summary.bytes_per_rank}")
