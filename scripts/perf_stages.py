#!/usr/bin/env python3
"""Splits `perf script` samples of scaleout replicas into stages, per process.

Reads `perf script -F pid,tid,comm,ip,sym,dso` on stdin (DWARF call stacks); each sample is
given the stage of its innermost frame that names one (see STAGES, first match from the leaf
up), so a memcpy inside sled counts as sled and a TCP send inside hyper as network. Arguments:
the bench's JSON report (for the job count and which replica led) and the profiled seconds.
Prints, per replica, the share of samples per stage and the CPU microseconds per job that share
is of the replica's measured CPU per job.
"""
import collections
import json
import re
import sys

# (stage, pattern on "symbol dso"), innermost frame first wins.
STAGES = [
    ("fsync (kernel)", r"sys_fdatasync|sys_fsync|file_write_and_wait|ext4_sync_file|jbd2|blkdev_issue_flush|xfs_file_fsync"),
    ("disk write (kernel)", r"ksys_pwrite|ksys_write.*\b(ext4|xfs)|ext4_buffered_write|generic_perform_write|sync_file_range"),
    ("network (kernel)", r"tcp_|sock_|inet_|__sys_sendto|__sys_recvfrom|sock_write_iter|sock_read_iter|net_rx|__netif|loopback"),
    ("epoll/futex/sched (kernel)", r"ep_poll|do_epoll|futex_|schedule|__x64_sys_sched_yield|do_syscall_64|entry_SYSCALL"),
    ("sled", r"\bsled::"),
    ("wal (raft log file)", r"scaleout::raft::(wal|log_store|log_blocks|log_reader)"),
    ("apply: queue model", r"scaleout::queue::"),
    ("apply: rows (job/outbox rows)", r"scaleout::raft::(job_rows|outbox_rows|state_machine|storage)"),
    ("encoding (bincode/serde/prost)", r"\bbincode::|\bserde::|serde_json|\bprost::|_pb\b|scaleout::pb::"),
    ("TLS (rustls/ring)", r"\brustls::|\bring::|ring_core|aes_gcm|chacha|gcm_|aes_hw|sha256"),
    ("gRPC/HTTP2 (tonic/h2/hyper)", r"\btonic::|\bh2::|\bhyper::|hyper_util|\btower::|\bhttp::"),
    ("openraft", r"\bopenraft::"),
    ("scaleout services (master)", r"scaleout::master::|scaleout::rpc::"),
    ("tracing/metrics", r"\btracing|\bmetrics::|metrics_exporter"),
    ("tokio runtime", r"\btokio::"),
]
COMPILED = [(name, re.compile(pattern)) for name, pattern in STAGES]
# Counted to the stage that called them (and shown as that stage's allocator share).
ALLOCATOR = re.compile(r"^(malloc|free|cfree|realloc|calloc|_int_malloc|_int_free|_int_realloc|__libc_\w+|malloc_consolidate|unlink_chunk|tcache_\w+|alloc::alloc::\w+|__rust_\w*alloc\w*|__memmove\w*|__memcpy\w*|__memset\w*)")


def samples(stream):
    header = None
    frames = []
    for line in stream:
        line = line.rstrip("\n")
        if not line.strip():
            if header is not None:
                yield header, frames
            header, frames = None, []
        elif not line.startswith((" ", "\t")):
            header = line
            frames = []
        else:
            frames.append(line.strip())
    if header is not None:
        yield header, frames


def function_of(frame):
    """The function a frame names, without generic arguments (which name other crates)."""
    # "ADDR SYMBOL (DSO)"
    parts = frame.split(" ", 1)
    symbol = parts[1] if len(parts) > 1 else frame
    if symbol.startswith("<"):
        # <Type as Trait>::method: the type is what runs.
        symbol = symbol[1:]
        symbol = symbol.split(" as ", 1)[0]
    depth, kept = 0, []
    for char in symbol:
        if char == "<":
            depth += 1
        elif char == ">":
            depth = max(0, depth - 1)
        elif depth == 0:
            kept.append(char)
    return "".join(kept)


def stage_of(frames):
    """(stage, whether the sample is in malloc/free/memcpy called from that stage)."""
    in_allocator = False
    for frame in frames:
        function = function_of(frame)
        if ALLOCATOR.search(function):
            in_allocator = True
            continue
        for name, pattern in COMPILED:
            if pattern.search(function):
                return name, in_allocator
    return "other", in_allocator


def main():
    report = json.load(open(sys.argv[1]))
    jobs = report["jobs"]
    cpu = report.get("cpu_us_per_job", {})
    names = {str(pid): name for name, pid in report.get("replica_pids", {}).items()}
    by_pid = collections.defaultdict(collections.Counter)
    allocating = collections.defaultdict(collections.Counter)
    for header, frames in samples(sys.stdin):
        match = re.search(r"(\d+)/\d+", header)
        if match:
            stage, in_allocator = stage_of(frames)
            by_pid[match.group(1)][stage] += 1
            if in_allocator:
                allocating[match.group(1)][stage] += 1
    if not names:
        # A report without pids (an older bench): the replica with most samples used most CPU.
        busiest = sorted(by_pid, key=lambda pid: -sum(by_pid[pid].values()))
        costliest = sorted(cpu, key=lambda name: -cpu[name])
        names = dict(zip(busiest, costliest))
    print(f"{report['jobs_per_sec']:.0f} jobs/s, CPU per job (all stages): "
          + ", ".join(f"{name} {us:.0f} us" for name, us in sorted(cpu.items())))
    for pid, stages in sorted(by_pid.items(), key=lambda item: names.get(item[0], "")):
        name = names.get(pid, f"pid {pid}")
        us_per_job = cpu.get(name, 0.0)
        total = sum(stages.values())
        print(f"\n{name} (pid {pid}, {total} samples, {us_per_job:.0f} us/job)")
        print(f"  {'stage':34} {'share':>7}  {'us/job':>6}  of which malloc/free/memcpy")
        for stage, count in stages.most_common():
            share = count / total
            alloc = allocating[pid][stage] / total
            print(f"  {stage:34} {share * 100:5.1f} %  {share * us_per_job:6.1f}"
                  f"  {alloc * us_per_job:6.1f}")


if __name__ == "__main__":
    main()
