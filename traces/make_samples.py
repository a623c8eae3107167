"""Regenerates the sample traces in this directory: `python traces/make_samples.py`."""

from pathlib import Path

from tracesim import write_trace
from tracesim.samples import data_parallel_step, pipeline_step
from tracesim.synth import synth_train

HERE = Path(__file__).parent

if __name__ == "__main__":
    write_trace(data_parallel_step(ranks=2, layers=4), HERE / "dp2_allreduce", overwrite=True)
    write_trace(pipeline_step(stages=8, microbatches=4), HERE / "pp8_gpipe", overwrite=True)
    write_trace(data_parallel_step(ranks=16, layers=8), HERE / "dp16_two_nodes", overwrite=True)
    # One training step of GPT-3 1.7B on 4 DGX nodes: TP 8 inside each node, DP 4 across them.
    gpt = synth_train("gpt3-1.7b", gpus=32, tp=8, micro_batch=4, global_batch=64, seq=2048, system="dgx-h100")
    write_trace(gpt, HERE / "gpt3-1.7b_tp8_dp4", overwrite=True)
