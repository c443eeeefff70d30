"""Run `alphaspec ARGS...` as one rank of a torchrun job, recording which files and tensors this rank read.

    torchrun --standalone --nproc-per-node 2 tests/torchrun_driver.py RECORD_DIR FAIL_RANK analyze ...
    torchrun --standalone --nproc-per-node 2 tests/torchrun_driver.py RECORD_DIR -1 api SOURCE

FAIL_RANK (-1 for none): that rank's reads raise a SourceError, as a damaged shard on one node would.
`api` calls analyze_checkpoint() in a process group instead and records each progress call and the table.
"""

import json
import os
import sys
from pathlib import Path

from alphaspec.sources.checkpoint import Checkpoint, SourceError

record, fail_rank, argv = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
rank = int(os.environ["RANK"])
reads: list = []
original = Checkpoint.read


def read(self, file, names, device=None):
    if rank == fail_rank:
        raise SourceError(f"{file}: injected read failure")
    reads.append([str(file), list(names)])
    yield from original(self, file, names, device)


Checkpoint.read = read

def api(source: str) -> None:
    import torch.distributed as dist

    from alphaspec import analyze_checkpoint
    from alphaspec.analysis.sharded import job_store
    from alphaspec.distributed import joined

    calls = []
    with joined(use_cuda=False):
        result = analyze_checkpoint(source, device="cpu", progress=lambda done, total: calls.append([done, total]))
        store = job_store()
        store.add("alphaspec/test/ranks", 1)  # every rank, through its own client of the job's store
        dist.barrier()
        seen = store.add("alphaspec/test/ranks", 0)
    (record / f"api{rank}.json").write_text(json.dumps({"progress": calls, "names": list(result.table["name"]),
                                                         "ranks_in_store": seen}))


sys.argv = ["alphaspec", *argv]
try:
    if argv[0] == "api":
        api(argv[1])
    else:
        from alphaspec.cli import main

        main()
except SystemExit as done:
    code = done.code if isinstance(done.code, int) else 1
else:
    code = 0
finally:
    (record / f"rank{rank}.json").write_text(json.dumps(reads))

from alphaspec.distributed import end_rank  # noqa: E402 - as the `alphaspec` program ends a torchrun rank

end_rank(code)
