"""tvmq's kernel library: TE computes, schedule templates and packing for CPU kernels."""
