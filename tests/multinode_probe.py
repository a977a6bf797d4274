"""train.py with each rank's training batches recorded: what tests/test_multinode.py has torchrun launch in
place of train.py. Each rank writes the image names of its batches, in order, to
$MULTINODE_PROBE_DIR/rank{RANK}.json; with MULTINODE_PROBE_FAIL_RANK=R, rank R raises at its first batch
(an error in one rank)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch.distributed.elastic.multiprocessing.errors import record

import train
import utils.train.trainer as trainer

RANK = int(os.environ.get("RANK", -1))
_train_one_epoch = trainer.train_one_epoch


class RecordingLoader:
    def __init__(self, loader, batches: list):
        self.loader, self.batches = loader, batches

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            if RANK == int(os.environ.get("MULTINODE_PROBE_FAIL_RANK", -2)):
                raise RuntimeError(f"the probe's planted error in rank {RANK}")
            self.batches.append([Path(path).name for path in batch[2]])
            yield batch


def recording_train_one_epoch(model, loader, *args, **kwargs):
    batches: list = []
    try:
        return _train_one_epoch(model, RecordingLoader(loader, batches), *args, **kwargs)
    finally:
        folder = Path(os.environ["MULTINODE_PROBE_DIR"])
        (folder / f"rank{RANK}.json").write_text(json.dumps(batches))


trainer.train_one_epoch = recording_train_one_epoch

if __name__ == "__main__":
    record(train.main)()  # as train.py runs it
