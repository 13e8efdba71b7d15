"""A TVM RPC server for ``tvmq tune --rpc`` that may run AMX code (``python -m tvmq.tune.rpc_server
--tracker HOST:PORT --key KEY``).

Linux grants a process the AMX tile state only when it asks (``arch_prctl``); without it the first
AMX instruction kills the process with SIGILL. TVM's own ``python -m tvm.exec.rpc_server`` never
asks, so on an AMX board its session process dies on the first AMX candidate. This server asks in
its serving process (``server_init_callback``), whose session processes inherit the permission by
``fork``. On a board without AMX it is TVM's server unchanged.
"""

from __future__ import annotations

import argparse
import time

from ..runtime import request_amx_permission


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tvmq.tune.rpc_server", description=__doc__.split("\n\n")[0])
    p.add_argument("--tracker", required=True, metavar="HOST:PORT", help="the RPC tracker to register with")
    p.add_argument("--key", required=True, help="the device key (tvmq tune --rpc HOST:PORT:KEY)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=9090, help="first port to try (default 9090)")
    p.add_argument("--port-end", type=int, default=9199, help="last port to try (default 9199)")
    args = p.parse_args(argv)
    host, _, port = args.tracker.rpartition(":")
    if not host or not port.isdigit():
        p.error(f"--tracker expects HOST:PORT, got {args.tracker!r}")
    server = start(args.host, args.port, args.port_end, (host, int(port)), args.key, silent=False)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.terminate()
    return 0


def start(host: str, port: int, port_end: int, tracker: tuple[str, int], key: str, *, silent: bool = True):  # type: ignore[no-untyped-def]
    """``tvm.rpc.Server`` whose serving process holds the AMX permission (where the CPU has AMX)."""
    from tvm import rpc

    return rpc.Server(host=host, port=port, port_end=port_end, key=key, tracker_addr=tracker, silent=silent,
                      server_init_callback=request_amx_permission)


if __name__ == "__main__":
    raise SystemExit(main())
