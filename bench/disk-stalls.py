#!/usr/bin/env python3
"""How long a durable append waits on this disk, alone and next to bulk writes.

A group commit of the embedded engine is an append plus fdatasync. An LSM
tree also writes in bulk in the background: a memtable flush or a compaction
writes a table of several MiB and fsyncs it. This measures what that does to
the appends' latency, the floor under the submit p99 of `bench/run.sh`:

  alone   appends only
  bulk    appends while another thread writes 8 MiB files and fsyncs each
          (~50 MB/s, what fjall's flushes and compactions wrote under run.sh)
  paced   the same bytes, synced every 256 KiB

Each append is 16 KiB (one group of ~50 envelopes) to a preallocated file,
written round, so fdatasync need not touch metadata. Prints per-append percentiles and the
share of wall time spent in appends slower than 8 ms.

  python3 bench/disk-stalls.py [--dir DIR] [--seconds N]
"""

import argparse
import os
import tempfile
import threading
import time

APPEND = 16 * 1024
TABLE = 8 * 1024 * 1024
CHUNK = 256 * 1024
LOG_BYTES = 64 * 1024 * 1024


def bulk_writer(directory, paced, stop):
    data = os.urandom(TABLE)
    i = 0
    while not stop.is_set():
        path = os.path.join(directory, f"table-{i % 4}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            if paced:
                for off in range(0, TABLE, CHUNK):
                    os.write(fd, data[off : off + CHUNK])
                    os.fdatasync(fd)
            else:
                os.write(fd, data)
                os.fsync(fd)
        finally:
            os.close(fd)
        i += 1
        time.sleep(0.15)


def measure(directory, mode, seconds):
    log = os.path.join(directory, "log")
    fd = os.open(log, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    zeros = b"\0" * (1 << 20)
    for _ in range(LOG_BYTES >> 20):
        os.write(fd, zeros)
    os.fsync(fd)
    time.sleep(1)  # let the device settle after the preallocation
    stop = threading.Event()
    writer = None
    if mode != "alone":
        writer = threading.Thread(target=bulk_writer, args=(directory, mode == "paced", stop))
        writer.start()
    record = b"x" * APPEND
    latencies = []
    offset = 0
    began = time.monotonic()
    try:
        while time.monotonic() < began + seconds:
            start = time.perf_counter()
            os.pwrite(fd, record, offset)
            os.fdatasync(fd)
            latencies.append(time.perf_counter() - start)
            offset = (offset + APPEND) % LOG_BYTES
        elapsed = time.monotonic() - began
    finally:
        stop.set()
        if writer:
            writer.join()
        os.close(fd)
    latencies.sort()
    n = len(latencies)

    def pct(p):
        return latencies[min(n - 1, int(n * p))] * 1e3

    stalled = sum(x for x in latencies if x > 0.008) / elapsed * 100
    return n / elapsed, pct(0.5), pct(0.99), pct(0.999), latencies[-1] * 1e3, stalled


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default=None, help="a directory on the disk to test")
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="disk-stalls-") as directory:
        print(f"{'mode':8} {'appends/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'max ms':>8} {'time in >8 ms appends':>22}")
        for mode in ("alone", "bulk", "paced"):
            rate, p50, p99, p999, top, stalled = measure(directory, mode, args.seconds)
            print(f"{mode:8} {rate:>10.0f} {p50:>8.2f} {p99:>8.2f} {p999:>9.2f} {top:>8.2f} {stalled:>21.1f}%")


if __name__ == "__main__":
    main()
