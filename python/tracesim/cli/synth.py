"""`tracesim synth train`: synthesise the trace of one training step (tracesim.synth)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()


def register(app: typer.Typer) -> None:
    """Adds the `synth` command group to `app`."""
    synth_app = typer.Typer(
        help="Synthesise traces from a model description and a parallelism plan.", no_args_is_help=True
    )
    app.add_typer(synth_app, name="synth")

    @synth_app.command(name="train")
    def train_cmd(
        model: Annotated[str, typer.Option("--model", help="zoo name (e.g. gpt3-175b) or a model TOML file")],
        gpus: Annotated[int, typer.Option("--gpus", help="number of ranks")],
        global_batch: Annotated[int, typer.Option("--global-batch", help="sequences per step")],
        out: Annotated[Path, typer.Option("--out", help="trace directory to write")],
        tp: Annotated[int, typer.Option("--tp", help="tensor-parallel size")] = 1,
        pp: Annotated[int, typer.Option("--pp", help="pipeline-parallel size")] = 1,
        micro_batch: Annotated[int, typer.Option("--micro-batch", help="sequences per micro-batch")] = 1,
        seq: Annotated[int | None, typer.Option("--seq", help="sequence length (default: model's)")] = None,
        dtype: Annotated[str, typer.Option("--dtype", help="bf16, fp16 or fp8 (GEMMs)")] = "bf16",
        recompute: Annotated[str, typer.Option("--recompute", help="none or full")] = "none",
        schedule: Annotated[str, typer.Option("--schedule", help="1f1b or gpipe")] = "1f1b",
        system: Annotated[
            str | None, typer.Option("--system", help="preset recorded as the trace's source_system")
        ] = None,
        layers: Annotated[int | None, typer.Option("--layers", help="override: layers")] = None,
        hidden: Annotated[int | None, typer.Option("--hidden", help="override: hidden size")] = None,
        heads: Annotated[int | None, typer.Option("--heads", help="override: attention heads")] = None,
        kv_heads: Annotated[int | None, typer.Option("--kv-heads", help="override: KV heads (GQA)")] = None,
        ffn_hidden: Annotated[int | None, typer.Option("--ffn-hidden", help="override: FFN size")] = None,
        vocab: Annotated[int | None, typer.Option("--vocab", help="override: vocabulary size")] = None,
        overwrite: Annotated[bool, typer.Option(help="replace --out if it exists")] = False,
    ) -> None:
        """Write the per-rank trace of one training step (forward, backward, TP/DP/PP communication,
        optimizer, memory)."""
        from tracesim.synth import load_model, synth_train
        from tracesim.trace import write_trace

        spec = load_model(
            model,
            layers=layers,
            hidden=hidden,
            heads=heads,
            kv_heads=kv_heads,
            ffn_hidden=ffn_hidden,
            vocab=vocab,
        )
        t0 = time.perf_counter()
        trace = synth_train(
            spec,
            gpus=gpus,
            tp=tp,
            pp=pp,
            micro_batch=micro_batch,
            global_batch=global_batch,
            seq=seq,
            dtype=dtype,
            recompute=recompute,
            schedule=schedule,
            system=system,
        )
        built = time.perf_counter() - t0
        rate = trace.num_ops / max(built, 1e-9)
        write_trace(trace, out, overwrite=overwrite)
        info = trace.meta["synth"]
        console.print(
            f"[bold]{out}[/bold]: {spec.name} ({spec.params / 1e9:.2f} B params), {trace.num_ops:,} ops on "
            f"{trace.ranks} ranks (tp {tp}, pp {pp}, dp {info['dp']}, {info['microbatches']} micro-batches "
            f"per step); built and validated in {built:.2f} s ({rate:,.0f} ops/s)",
            highlight=False,
        )
