import torch

# One intra-op thread for every test, whichever subset runs. The CI box has 2 cores shared by every
# test, so more threads only oversubscribe; and numbers depend on the thread count (a reduction
# split over 2 threads sums in another order): the bitwise-resume comparisons need the same count
# in every run, and the parity references (tests/parallel) must sum like the worker processes,
# which run with OMP_NUM_THREADS=1. Before this lived at the root, running tests/parallel alone
# used 2 threads and the full suite 1, and a reference calm under one count drifted under the other.
torch.set_num_threads(1)
