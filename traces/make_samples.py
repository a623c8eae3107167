"""Regenerates the sample traces in this directory: `python traces/make_samples.py`."""

from pathlib import Path

from tracesim import write_trace
from tracesim.samples import data_parallel_step, pipeline_step

HERE = Path(__file__).parent

if __name__ == "__main__":
    write_trace(data_parallel_step(ranks=2, layers=4), HERE / "dp2_allreduce", overwrite=True)
    write_trace(pipeline_step(stages=8, microbatches=4), HERE / "pp8_gpipe", overwrite=True)
    write_trace(data_parallel_step(ranks=16, layers=8), HERE / "dp16_two_nodes", overwrite=True)
