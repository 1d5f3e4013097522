"""Learner side of the weight broadcast: rank 0 opens the group and sends tensors in order.

Protocol (the engine side is ``actors/vllm_ext.py``): rank 0 of the learner creates a TCPStore
(listening on its own address only) and a process group (gloo on CPU, NCCL on GPU) with every
engine worker, once; gloo pairs listen on each side's own node address. Per update it
sends the list of ``(name, dtype, shape)`` through Ray, then broadcasts each tensor in that
order. Names are the transformers ``state_dict`` names, which vLLM's loader maps itself.
"""
from __future__ import annotations

import datetime
import os
import socket

import torch
import torch.distributed as dist


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tcp_store(host: str, port: int, is_master: bool, timeout_s: float = 600.0) -> dist.TCPStore:
    """A TCPStore whose server listens on ``host`` only. torch's own server binds every interface
    (``::``); here the master binds the socket itself and hands it over, so a loopback host stays
    on loopback and a cluster node listens on its node address alone."""
    timeout = datetime.timedelta(seconds=timeout_s)
    if not is_master:
        return dist.TCPStore(host, port, None, is_master=False, timeout=timeout)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    return dist.TCPStore(host, port, None, is_master=True, timeout=timeout, wait_for_workers=False,
                         master_listen_fd=sock.detach())  # the store's server owns the socket from here


NODE_HOST_ENV = "VR1_NODE_HOST"


def node_address() -> str:
    """The address this process's sockets (stores, gloo pairs) listen on: ``cluster.node_host`` in
    a private local cluster (passed to every actor as ``VR1_NODE_HOST``; Ray itself replaces a
    loopback node address by the outside one), else this node's address in the Ray cluster."""
    host = os.environ.get(NODE_HOST_ENV)
    if host:
        return host
    import ray
    return ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"


def gloo_group(store, rank: int, world_size: int, timeout: datetime.timedelta, host: str):
    """A gloo process group whose pairs listen on ``host`` only. Without a device, gloo picks one
    from the hostname, and where that resolves to loopback it takes the default route's interface:
    an outside address."""
    opts = dist.ProcessGroupGloo._Options()
    opts._devices = [dist.ProcessGroupGloo.create_device(hostname=host)]
    opts._timeout = timeout
    return dist.ProcessGroupGloo(store, rank, world_size, opts)


def interface_of(ip: str) -> str | None:
    """Name of the network interface holding ``ip`` (``lo`` for 127.0.0.1), or None."""
    import psutil
    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == ip for a in addrs):
            return name
    return None


def bind_default_gloo(host: str) -> str | None:
    """Make the gloo groups torch creates itself (``init_process_group``, which takes no device)
    listen on ``host``'s interface, through ``GLOO_SOCKET_IFNAME``; returns the interface."""
    name = interface_of(host)
    if name is not None:
        os.environ["GLOO_SOCKET_IFNAME"] = name
    return name


class WeightSender:
    """Rank 0 of the weight group (``world_size`` = 1 + number of engine workers)."""

    def __init__(self, host: str, port: int, world_size: int, backend: str = "gloo", timeout_s: float = 600.0):
        self.store = tcp_store(host, port, is_master=True, timeout_s=timeout_s)
        self.host, self.world_size, self.backend = host, world_size, backend
        self.group = None
        self.timeout = datetime.timedelta(seconds=timeout_s)

    def connect(self) -> None:
        """Join the group (blocks until every engine worker has joined too)."""
        if self.backend == "gloo":
            self.group = gloo_group(self.store, 0, self.world_size, self.timeout, self.host)
        else:
            self.group = dist.ProcessGroupNCCL(self.store, 0, self.world_size)

    def send(self, tensors: list[torch.Tensor]) -> int:
        """Broadcast each tensor in order; returns the bytes sent."""
        nbytes, works = 0, []
        for t in tensors:
            t = t.contiguous()
            works.append(self.group.broadcast(t, 0))
            nbytes += t.numel() * t.element_size()
        for w in works:
            w.wait()
        return nbytes


def buckets(named, limit_bytes: float, numel):
    """Consecutive groups of ``(name, param, ...)`` items of about ``limit_bytes`` (fp32 sizes), so
    that ZeRO-3 gathers, and the copies sent or saved, stay bounded in memory."""
    bucket, size = [], 0.0
    for item in named:
        bucket.append(item)
        size += numel(item[1]) * 4
        if size >= limit_bytes:
            yield bucket
            bucket, size = [], 0.0
    if bucket:
        yield bucket
