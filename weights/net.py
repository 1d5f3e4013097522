"""The network of the weight group: ports, the rendezvous store, gloo groups on the right interface.

    port = free_port(host)
    store = tcp_store(host, port, is_master=True)
    group = gloo_group(store, rank, world_size, timeout, host)

Both ends of the weight wire (the learner's rank 0 and every engine worker) meet through these;
sockets listen on ``node_address()``: ``cluster.node_host`` in a private local cluster (handed to
every actor as ``VR1_NODE_HOST``), else this node's address in the Ray cluster.
"""
from __future__ import annotations

import datetime
import os
import socket

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


def node_address(default: str = "127.0.0.1") -> str:
    """The address this process's sockets (stores, gloo pairs) listen on: ``cluster.node_host`` in
    a private local cluster (passed to every actor as ``VR1_NODE_HOST``; Ray itself replaces a
    loopback node address by the outside one), else this node's address in the Ray cluster, else
    (outside Ray) ``default``."""
    host = os.environ.get(NODE_HOST_ENV)
    if host:
        return host
    import ray
    return ray.util.get_node_ip_address() if ray.is_initialized() else default


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
