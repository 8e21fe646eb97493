"""`convnet train` with a planted fault on one rank (tests/test_distributed.py), run as
``mpiexec -n K python -m mpi4py tests/dp_train_worker.py FAULT -- train ...``.

FAULT is RANK:STEP:KIND: when rank RANK is about to run global step STEP, it
  kill   SIGKILLs itself (the launcher sees a dead process),
  raise  raises RuntimeError("planted failure"),
  stop   SIGSTOPs itself (alive to the launcher, silent to the others: only the watchdog sees it),
  hang   sleeps for an hour (alive, heartbeating, never reaching the next collective).
Everything else is the real CLI (convnet.__main__.main).
"""
import os
import signal
import sys
import time

from convnet import __main__ as cli
from convnet import distributed as dist


def main():
    fault, sep, *argv = sys.argv[1:]
    assert sep == "--", "usage: dp_train_worker.py RANK:STEP:KIND -- train ..."
    rank, step, kind = fault.split(":")
    rank, step = int(rank), int(step)
    real = dist.TrainingRun.train_step

    def train_step(self, net, x, y, *args, step=0, **kwargs):
        if self.rank == rank and step == globals()["_step"]:
            if kind == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif kind == "stop":
                os.kill(os.getpid(), signal.SIGSTOP)
            elif kind == "hang":
                time.sleep(3600)
            elif kind == "raise":
                raise RuntimeError("planted failure")
        return real(self, net, x, y, *args, step=step, **kwargs)
    globals()["_step"] = step
    dist.TrainingRun.train_step = train_step
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
