import torch

# The CI box has 2 cores shared by every test; one intra-op thread avoids oversubscription, and
# the bitwise-resume comparisons need the same thread count in every run anyway.
torch.set_num_threads(1)
