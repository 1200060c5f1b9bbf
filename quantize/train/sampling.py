"""Stateless batch schedules: which rows form batch `step` is a pure function of (seed, step, rank).

Seeds mix only ints (tuple-of-int hashes do not depend on PYTHONHASHSEED).

Nothing about the data order has to be saved to resume exactly, and every
DDP rank reads a disjoint shard of each epoch's permutation.
"""

from __future__ import annotations

import torch


def batches_per_epoch(n: int, batch: int, world: int) -> int:
    per_rank = n // world
    if per_rank < batch:
        raise ValueError(f"{n} samples over {world} ranks cannot fill a batch of {batch}")
    return per_rank // batch


def batch_indices(n: int, batch: int, step: int, seed: int, stream: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """Row indices of this rank's batch at `step` for one data stream (AU or FE)."""
    per_epoch = batches_per_epoch(n, batch, world)
    epoch, i = divmod(step, per_epoch)
    gen = torch.Generator().manual_seed(hash((seed, stream, epoch)) & 0x7FFF_FFFF_FFFF)
    perm = torch.randperm(n, generator=gen)[: (n // world) * world]
    shard = perm[rank::world]
    return shard[i * batch : (i + 1) * batch]


def augment_generator(seed: int, stream: int, step: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed(hash((seed, stream, step, rank, 7919)) & 0x7FFF_FFFF_FFFF)
