import os

# One BLAS thread, as Dask workers run theirs: a BLAS product sums in an order that depends on its thread
# count, and the same video must give the same bits in a shell, in the daemon and on a Dask worker (exoacq
# runs its own work in parallel: detection threads, locate workers, Dask processes). Before numpy loads.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

__version__ = "0.1.0"
