"""bench_workers.py's CPU accounting: where the cores went, and the most they allow."""
import pytest

from benchmarks import bench_workers


def test_cpu_split_gives_the_rest_of_the_busy_time_to_others():
    split = bench_workers.cpu_split(server_s=2.0, client_s=1.0, busy_s=3.5, idle_s=0.5, wall_s=2.0)
    assert split == {"server": 1.0, "client": 0.5, "others": 0.25, "idle": 0.25}


def test_cpu_split_never_reports_negative_others():
    # /proc ticks of the processes and of the machine are read at slightly different moments
    split = bench_workers.cpu_split(server_s=2.0, client_s=1.0, busy_s=2.9, idle_s=1.1, wall_s=2.0)
    assert split["others"] == 0.0


def test_machine_cpu_reads_proc_stat():
    busy, idle = bench_workers.machine_cpu_s()
    assert busy > 0 and idle >= 0


def run(target, repeat, rps, server_ms, client_ms, others=0.0):
    return {"target": target, "repeat": repeat, "requests_per_s": rps, "rows_per_s": 2 * rps,
            "latency_ms": {"p50": 1.0, "p99": 2.0}, "server_cpu_s_per_request": server_ms / 1e3,
            "client_cpu_s_per_request": client_ms / 1e3, "client_cpu_utilization": 0.5, "errors": {},
            "cpu_cores": {"server": 1.0, "client": 0.5, "others": others, "idle": 0.4}}


def test_summary_pairs_ratios_by_repeat_and_bounds_them_by_the_cores():
    runs = [run("workers=1", 0, 4000, 0.2, 0.1), run("workers=2", 0, 4400, 0.3, 0.1),
            run("workers=1", 1, 5000, 0.2, 0.1), run("workers=2", 1, 5000, 0.3, 0.1)]
    summary = bench_workers.summarize(runs, ["workers=1", "workers=2"], {"workers=1": 1, "workers=2": 2}, cores=2)
    assert summary["workers=2"]["vs_workers_1"] == pytest.approx({"min": 1.0, "median": 1.05})
    # 2 cores / 0.4 ms per request = 5,000 req/s: 1.25x of 4,000 and 1.0x of 5,000
    assert summary["workers=2"]["cpu_bound_vs_workers_1_median"] == pytest.approx(1.125)
    assert summary["workers=1"]["cpu_cores_median"]["idle"] == pytest.approx(0.4)
    assert "cpu_bound_vs_workers_1_median" not in summary["workers=1"]


def test_no_bound_without_the_clients_cpu():
    record = run("workers=2", 0, 1000, 0.3, float("nan"))
    assert bench_workers.cpu_bound_requests_per_s(record, 2) is None
    assert bench_workers.cpu_bound_requests_per_s(run("workers=2", 0, 1000, 0.3, 0.1), 2) == pytest.approx(5000)


def test_the_bound_counts_only_the_cores_others_left():
    record = run("workers=2", 0, 1000, 0.3, 0.1, others=0.5)
    assert bench_workers.cpu_bound_requests_per_s(record, 2) == pytest.approx(3750)


def test_worker_targets_name_each_count_and_cpu_mode():
    assert bench_workers.worker_targets("1,2,2:split") == [
        ("workers=1", 1, "none"), ("workers=2", 2, "none"), ("workers=2 split", 2, "split")]
    assert bench_workers.worker_targets(" 1 , 4:none ") == [("workers=1", 1, "none"), ("workers=4", 4, "none")]


@pytest.mark.parametrize("text", ["1,0", "1,2:pinned", "1,x", "1,:split"])
def test_worker_targets_refuse_what_they_cannot_run_or_compare(text):
    with pytest.raises(ValueError, match="--workers"):
        bench_workers.worker_targets(text)
