"""One rank of a shard pool's data order under torchrun (gloo on CPU): the pool from tar shards, the engine's
sampler (`StepBatchSampler`) and a `DataLoader` with data workers decoding the images, one epoch twice. Rank 0
prints one JSON line: every rank's keys of each pass, and the pool's keys.

usage: python -m torch.distributed.run --nproc_per_node 2 --standalone tests/shards_worker.py PATTERN EXCLUDE BATCH"""

import json
import sys

import torch
import torch.distributed as dist

from cskd.data import UnlabeledPool, collate_skip_none, eval_transform
from cskd.sampler import SeededFetch, StepBatchSampler


def one_pass(pool: UnlabeledPool, batch_size: int, rank: int, world: int) -> list:
    "This rank's keys of one epoch, in the order its batches arrived (2 data workers decode them)."
    sampler = StepBatchSampler(len(pool), batch_size, seed=7, rank=rank, world_size=world)
    loader = torch.utils.data.DataLoader(
        SeededFetch(pool), batch_sampler=sampler, num_workers=2, collate_fn=collate_skip_none
    )
    keys = []
    for images, ids in loader:
        assert images.shape[0] == len(ids) == batch_size // world, (images.shape, len(ids))
        keys += list(ids)
    return keys


def main(pattern: str, exclude: str, batch_size: int):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    pool = UnlabeledPool(pattern, exclude_ids=exclude, transform=eval_transform(16, (0.5,) * 3, (0.25,) * 3))
    passes = [one_pass(pool, batch_size, rank, world) for _ in range(2)]
    gathered = [None] * world
    dist.all_gather_object(gathered, passes)
    if rank == 0:
        print(json.dumps(dict(ranks=gathered, pool=pool.ids)))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
