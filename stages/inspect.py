"""``ocd inspect``: a readable summary of a weight-delta store (not a DVC stage)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def inspect(
    store: Path = typer.Argument(Path("artifacts/deltas.zarr"), help="The Zarr store to summarise."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    sample: int = typer.Option(256, min=0, help="Deltas per split used for the rank-one share (0: none)."),
    check: bool = typer.Option(False, "--verify", help="Read every finished chunk, verify its checksum and "
                               "list the damaged ones (exit code 1 if any)."),
) -> None:
    """Summarise a weight-delta store: arrays, attrs, rho, losses, rank-one shares."""
    if not store.exists():  # refused before Zarr and torch load: in a fraction of a second
        raise FileNotFoundError(f"{store} does not exist")
    from ocd.store import REPAIR, summarize, verify_path

    if check:
        damaged = verify_path(store)
        for d in damaged:
            typer.echo(f"damaged: {d}")
        if damaged:
            typer.echo(f"{store}: {len(damaged)} damaged chunk(s) or attribute(s); {REPAIR}", err=True)
            raise typer.Exit(1)
        typer.echo(f"{store}: every finished chunk reads back and matches its checksum")
        return
    summary = summarize(store, sample=sample)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    attrs = summary["attrs"]
    typer.echo(f"{summary['path']}  (format {attrs.get('format_version')})")
    typer.echo(f"  layer {attrs.get('layer')} {attrs.get('weight_shape')} of {attrs.get('base_model', {}).get('name')}"
               f" (base sha256 {str(attrs.get('base_sha256'))[:12]}), dataset {attrs.get('dataset')}")
    typer.echo(f"  overfit {attrs.get('overfit')}")
    typer.echo(f"  rho: {attrs.get('rho')}")
    for split, s in summary["splits"].items():
        typer.echo(f"\n[{split}] {s['n']} rows, {s['chunks_done']} chunks done — {s['role']}")
        for name, a in s["arrays"].items():
            typer.echo(f"  {name:24s} {str(tuple(a['shape'])):18s} {a['dtype']:8s} chunks {tuple(a['chunks'])}"
                       f" {'+'.join(a['compressors']) or 'uncompressed'}")
        # rank1_share: |u r^T|^2 / |delta|^2 (r from i_L), the share a rank1 diffusion target
        # keeps; rank_one_share: sigma_1^2 / sum sigma^2, the best any rank one does.
        for key in ("rho", "loss_before", "loss_after", "rank1_share", "rank_one_share"):
            st = s[key]
            if st:
                typer.echo(f"  {key:14s} mean {st['mean']:.4g}  sd {st['sd']:.4g}  median {st['median']:.4g}"
                           f"  p05 {st['p05']:.4g}  p95 {st['p95']:.4g}")
