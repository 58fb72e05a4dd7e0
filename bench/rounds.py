"""The rounds of the bench scripts' measurements, for their reports.

`wrk_run` (bench/lib.sh) leaves each round's "req/s p50 p99 non2xx" in
`<work>/<name>.<round>`, rounds numbered from 1.
"""


def runs(work, rounds, name):
    """Every round of measurement `name`, as lists of numbers."""
    return [
        [float(x) for x in open(f"{work}/{name}.{r}").read().split()]
        for r in range(1, rounds + 1)
    ]


def median_run(rs):
    """The run with the median throughput, so its latencies go with it."""
    return sorted(rs, key=lambda r: r[0])[(len(rs) - 1) // 2]
