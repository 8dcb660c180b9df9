#!/usr/bin/env python3
"""Checks that ftune's c10d TCPStore (src/dist/tcp_store.*) interoperates with real torch.

Needs torch (2.x) and a built test_dist_store; no GPU. Three checks, all by default:

  client    torch serves a TCPStore (the libuv server, the legacy one, and the libuv one through a
            PrefixStore as torchrun's agent store is used); test_dist_store's case
            TorchInterop.ClientOfATorchStore joins it, reads what torch wrote, writes its own keys,
            waits for a key torch sets later, and runs connect_store's agent-store path; the script
            then reads ftune's keys from the torch side.
  server    test_dist_store's case TorchInterop.ServerForATorchClient serves a store; a torch
            TCPStore client uses every call of the Python API on it (and a PrefixStore over it),
            two torch processes form a gloo process group through it, and ftune reads back what
            torch wrote.
  torchrun  torchrun --no-python starts two copies of test_dist_store (TorchInterop.UnderTorchrun):
            topology_from_env on torchrun's variables, its agent store, the join and plan checks;
            once with --standalone (c10d rendezvous) and once with the static rendezvous.

    python3 tools/check_tcpstore.py --binary build/test_dist_store [--checks client,server,torchrun]

Prints one line per check and exits 1 when any fails.
"""
import argparse
import datetime
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import torch
import torch.distributed as dist

TIMEOUT = datetime.timedelta(seconds=30)


def run_case(binary, case, env, **kw):
    """Starts test_dist_store on one TorchInterop case with extra environment variables."""
    full = dict(os.environ)
    full.update(env)
    return subprocess.Popen([binary, f"--gtest_filter=TorchInterop.{case}"],
                            env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def finish(proc, what):
    try:
        out, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"{what}: test_dist_store did not finish within 180 s\n{out}")
    if proc.returncode != 0 or "[  PASSED  ] 1 test" not in out or "SKIPPED" in out.split("[==========]")[-1]:
        raise AssertionError(f"{what}: test_dist_store exited {proc.returncode}\n{out}")
    return out


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


# ---------------- client: torch serves, ftune joins ----------------

def check_client(binary, use_libuv, prefix):
    server = dist.TCPStore("127.0.0.1", 0, None, True, TIMEOUT, wait_for_workers=False, use_libuv=use_libuv)
    store = dist.PrefixStore(prefix, server) if prefix else server
    store.set("torch/hello", "from torch")
    expect(store.add("shared/counter", 2) == 2, "torch's add")
    env = {"FTUNE_TORCH_STORE": f"127.0.0.1:{server.port}"}
    if prefix:
        env["FTUNE_TORCH_STORE_PREFIX"] = prefix
    else:
        env["FTUNE_TORCH_STORE_RENDEZVOUS"] = "1"
    proc = run_case(binary, "ClientOfATorchStore", env)
    store.wait(["ftune/ready"], TIMEOUT)  # a key ftune set, seen by torch's WAIT
    store.set("torch/later", "later")  # wakes ftune's WAIT
    finish(proc, "client")
    expect(store.get("ftune/hello") == b"from ftune", "ftune/hello as torch reads it")
    expect(store.get("ftune/binary") == b"\x00\x01\x02\xff", "binary value as torch reads it")
    expect(store.get("shared/counter") == b"7", f"counter: {store.get('shared/counter')!r}")
    expect(store.add("shared/counter", 0) == 7, "counter through torch's add")
    expect(store.get("ftune/done") == b"1", "ftune/done")
    if not prefix:
        expect(store.get("ftune/m1") == b"one+", f"multi_set + append: {store.get('ftune/m1')!r}")
        expect(store.get("ftune/m2") == b"two", "multi_set")
        expect(store.get("ftune/cas") == b"x", "compare_set")
        expect(not store.check(["ftune/doomed"]), "delete_key")
        expect(store.get("/worker/attempt_0/ftune/joined") == b"1", "connect_store's join count under the prefix")
        expect(store.get("/worker/attempt_0/ftune/plan_verdict") == b"ok", "check_same_plan's verdict")
    else:
        expect(server.get(prefix + "/ftune/hello") == b"from ftune", "ftune's key under the prefix")
    return f"libuv={use_libuv} prefix={prefix or '-'}"


# ---------------- server: ftune serves, torch joins ----------------

def gloo_rank(port, rank, world, q):
    try:
        store = dist.TCPStore("127.0.0.1", port, world, False, TIMEOUT, wait_for_workers=True)
        dist.init_process_group("gloo", store=dist.PrefixStore("gloo", store), rank=rank, world_size=world,
                                timeout=TIMEOUT)
        t = torch.tensor([float(rank + 1)])
        dist.all_reduce(t)
        dist.barrier()
        dist.destroy_process_group()
        q.put((rank, float(t.item())))
    except Exception:  # reported to the parent
        q.put((rank, traceback.format_exc()))


def check_server(binary):
    with tempfile.TemporaryDirectory() as tmp:
        port_file = os.path.join(tmp, "port")
        proc = run_case(binary, "ServerForATorchClient", {"FTUNE_SERVE_STORE": port_file})
        deadline = time.time() + 60
        while not os.path.exists(port_file):
            if proc.poll() is not None or time.time() > deadline:
                finish(proc, "server")
                raise AssertionError("server: no port file")
            time.sleep(0.05)
        port = int(open(port_file).read())
    store = dist.TCPStore("127.0.0.1", port, None, False, TIMEOUT, wait_for_workers=False)
    expect(store.get("ftune/hello") == b"from ftune", "torch's get of ftune's key")
    store.set("torch/hello", "from torch")
    expect(store.add("shared/counter", 2) == 2 and store.add("shared/counter", 5) == 7, "add")
    expect(store.check(["torch/hello", "ftune/hello"]) and not store.check(["torch/nope"]), "check")
    expect(store.compare_set("torch/cas", "", "a") == b"a", "compare_set on a missing key")
    expect(store.compare_set("torch/cas", "a", "b") == b"b", "compare_set that matches")
    expect(store.compare_set("torch/cas", "zzz", "c") == b"b", "compare_set that does not")
    store.multi_set(["torch/m1", "torch/m2"], ["one", "two"])
    expect(store.multi_get(["torch/m1", "torch/m2"]) == [b"one", b"two"], "multi_get")
    store.append("torch/app", "x")
    store.append("torch/app", "y")
    expect(store.get("torch/app") == b"xy", "append")
    expect(store.num_keys() >= 6, f"num_keys {store.num_keys()}")
    expect(store.delete_key("torch/app") and not store.delete_key("torch/app"), "delete_key")
    try:
        store.wait(["torch/never"], datetime.timedelta(milliseconds=300))
        raise AssertionError("a wait for a missing key returned")
    except (RuntimeError, dist.DistStoreError) as e:
        expect("timeout" in str(e).lower() or "timed out" in str(e).lower(), f"wait timeout: {e}")
    expect(store.get("torch/hello") == b"from torch", "the connection after a cancelled wait")
    other = dist.TCPStore("127.0.0.1", port, None, False, TIMEOUT, wait_for_workers=False)
    woken = []
    waiter = threading.Thread(target=lambda: (other.wait(["torch/late"]), woken.append(other.get("torch/late"))))
    waiter.start()
    store.set("torch/late", "now")
    waiter.join(60)
    expect(woken == [b"now"], "a WAIT woken by another client's SET")
    if hasattr(store, "queue_push"):
        store.queue_push("torch/q", "a")
        store.queue_push("torch/q", "b")
        expect(store.queue_len("torch/q") == 2, "queue_len")
        expect(store.queue_pop("torch/q") == b"a", "queue_pop")
    pre = dist.PrefixStore("/worker/attempt_0", store)
    pre.set("k", "v")
    expect(store.get("/worker/attempt_0/k") == b"v" and pre.add("n", 3) == 3, "PrefixStore over ftune's store")
    # two torch processes form a gloo group through ftune's store
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    ranks = [ctx.Process(target=gloo_rank, args=(port, r, 2, q)) for r in range(2)]
    for p in ranks:
        p.start()
    results = dict(q.get(timeout=120) for _ in ranks)
    for p in ranks:
        p.join(60)
    expect(results == {0: 3.0, 1: 3.0}, f"gloo all_reduce through ftune's store: {results}")
    store.set("torch/done", "1")
    store.wait(["ftune/verified"], TIMEOUT)
    store.set("torch/bye", "1")
    finish(proc, "server")
    return "python API, PrefixStore, gloo group of 2"


# ---------------- torchrun starts ftune ----------------

def check_torchrun(binary, rdzv):
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--no-python"]
    if rdzv == "standalone":
        args += ["--standalone"]
    else:
        with socket.socket() as probe:  # a port free a moment ago
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        args += ["--nnodes", "1", "--node-rank", "0", "--master-addr", "127.0.0.1", "--master-port", str(port),
                 "--rdzv-backend", "static"]
    args += [binary, "--gtest_filter=TorchInterop.UnderTorchrun"]
    env = dict(os.environ, FTUNE_UNDER_TORCHRUN="1")
    r = subprocess.run(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    if r.returncode != 0 or r.stdout.count("[  PASSED  ] 1 test") != 2:
        raise AssertionError(f"torchrun ({rdzv}) exited {r.returncode}\n{r.stdout}")
    lines = sorted(l.strip() for l in r.stdout.splitlines() if "rank " in l and " store " in l)
    return f"{rdzv}: " + " | ".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default="build/test_dist_store")
    ap.add_argument("--checks", default="client,server,torchrun")
    a = ap.parse_args()
    binary = os.path.abspath(a.binary)
    print(f"torch {torch.__version__}, {binary}")
    checks = []
    wanted = a.checks.split(",")
    if "client" in wanted:
        checks += [("client", lambda: check_client(binary, True, "")),
                   ("client", lambda: check_client(binary, False, "")),
                   ("client", lambda: check_client(binary, True, "/worker/attempt_0"))]
    if "server" in wanted:
        checks += [("server", lambda: check_server(binary))]
    if "torchrun" in wanted:
        checks += [("torchrun", lambda: check_torchrun(binary, "standalone")),
                   ("torchrun", lambda: check_torchrun(binary, "static"))]
    failed = 0
    for name, fn in checks:
        try:
            print(f"ok   {name}: {fn()}", flush=True)
        except Exception as e:  # every check runs; the failures are counted
            failed += 1
            print(f"FAIL {name}: {e}", flush=True)
            traceback.print_exc()
    print(f"{len(checks) - failed} of {len(checks)} checks passed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
