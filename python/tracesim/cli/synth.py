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
        recompute: Annotated[str, typer.Option("--recompute", help="none, full or selective")] = "none",
        schedule: Annotated[str, typer.Option("--schedule", help="1f1b or gpipe")] = "1f1b",
        attention: Annotated[str, typer.Option("--attention", help="flash or unfused")] = "flash",
        vp: Annotated[int, typer.Option("--vp", help="model chunks per stage (interleaved 1F1B)")] = 1,
        sp: Annotated[bool, typer.Option("--sp", help="sequence parallelism (with tp > 1)")] = False,
        zero: Annotated[int, typer.Option("--zero", help="ZeRO stage 0-3 (sharding over dp)")] = 0,
        ep: Annotated[int, typer.Option("--ep", help="expert-parallel size (MoE; inside dp)")] = 1,
        granularity: Annotated[
            str, typer.Option("--granularity", help="op, or block: merge compute ops between communications")
        ] = "op",
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
            attention=attention,
            vp=vp,
            sp=sp,
            zero=zero,
            ep=ep,
            granularity=granularity,
            system=system,
        )
        built = time.perf_counter() - t0
        rate = trace.num_ops / max(built, 1e-9)
        write_trace(trace, out, overwrite=overwrite)
        info = trace.meta["synth"]
        extra = "".join(f", {k} {v}" for k, v in (("vp", vp), ("ep", ep)) if v > 1)
        extra += (f", zero {zero}" if zero else "") + (", sp" if sp else "")
        console.print(
            f"[bold]{out}[/bold]: {spec.name} ({spec.params / 1e9:.2f} B params), {trace.num_ops:,} ops on "
            f"{trace.ranks} ranks (tp {tp}, pp {pp}, dp {info['dp']}{extra}, {info['microbatches']} "
            f"micro-batches per step); built and validated in {built:.2f} s ({rate:,.0f} ops/s)",
            highlight=False,
        )

    @synth_app.command(name="infer")
    def infer_cmd(
        model: Annotated[
            str, typer.Option("--model", help="zoo name (e.g. llama2-70b) or a model TOML file")
        ],
        out: Annotated[Path, typer.Option("--out", help="trace directory to write")],
        system: Annotated[
            str,
            typer.Option(
                "--system", help="preset or TOML: times iterations for the scheduler, sizes the KV cache"
            ),
        ] = "dgx-h100",
        tp: Annotated[int, typer.Option("--tp", help="tensor-parallel size")] = 1,
        pp: Annotated[int, typer.Option("--pp", help="pipeline-parallel size")] = 1,
        batch: Annotated[int | None, typer.Option("--batch", help="static batch: number of requests")] = None,
        prompt: Annotated[int | None, typer.Option("--prompt", help="static batch: prompt tokens")] = None,
        output: Annotated[int | None, typer.Option("--output", help="static batch: output tokens")] = None,
        requests: Annotated[
            Path | None,
            typer.Option(
                "--requests", help="request CSV: arrival_time_s (or arrival_ns), prompt_tokens, output_tokens"
            ),
        ] = None,
        dtype: Annotated[str, typer.Option("--dtype", help="bf16, fp16 or fp8 (GEMMs)")] = "bf16",
        max_batch: Annotated[
            int | None, typer.Option("--max-batch", help="most running sequences (default 256, or --batch)")
        ] = None,
        max_prefill_tokens: Annotated[
            int, typer.Option("--max-prefill-tokens", help="most prompt tokens prefilled in one iteration")
        ] = 8192,
        kv_block: Annotated[int, typer.Option("--kv-block", help="KV-cache block size in tokens")] = 16,
        max_kv_tokens: Annotated[
            int | None,
            typer.Option("--max-kv-tokens", help="KV-cache budget in tokens (default: from memory)"),
        ] = None,
        layers: Annotated[int | None, typer.Option("--layers", help="override: layers")] = None,
        hidden: Annotated[int | None, typer.Option("--hidden", help="override: hidden size")] = None,
        heads: Annotated[int | None, typer.Option("--heads", help="override: attention heads")] = None,
        kv_heads: Annotated[int | None, typer.Option("--kv-heads", help="override: KV heads (GQA)")] = None,
        ffn_hidden: Annotated[int | None, typer.Option("--ffn-hidden", help="override: FFN size")] = None,
        vocab: Annotated[int | None, typer.Option("--vocab", help="override: vocabulary size")] = None,
        overwrite: Annotated[bool, typer.Option(help="replace --out if it exists")] = False,
    ) -> None:
        """Write the per-rank trace of LLM serving: prefill and decode iterations under continuous
        batching, TP/PP communication, a paged KV cache, and per-request bookkeeping for TTFT/TPOT."""
        from tracesim.synth import load_model, synth_infer
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
        trace = synth_infer(
            spec,
            system=system,
            tp=tp,
            pp=pp,
            batch=batch,
            prompt=prompt,
            output=output,
            requests=requests,
            dtype=dtype,
            max_batch=max_batch,
            max_prefill_tokens=max_prefill_tokens,
            kv_block_tokens=kv_block,
            max_kv_tokens=max_kv_tokens,
        )
        built = time.perf_counter() - t0
        rate = trace.num_ops / max(built, 1e-9)
        write_trace(trace, out, overwrite=overwrite)
        info = trace.meta["synth"]
        console.print(
            f"[bold]{out}[/bold]: {spec.name} ({spec.params / 1e9:.2f} B params), {trace.num_ops:,} ops on "
            f"{trace.ranks} ranks (tp {tp}, pp {pp}), {len(trace.meta['serving']['arrival_ns']):,} requests "
            f"in "
            f"{info['iterations']:,} iterations, KV budget {info['kv_budget_tokens']:,} tokens; built and "
            f"validated in {built:.2f} s ({rate:,.0f} ops/s)",
            highlight=False,
        )
