"""A link with a round-trip time: a TCP relay that hands every byte on a fixed delay after it
arrived, in both directions.

On loopback a round trip costs a fraction of a millisecond, so the benchmark's other rows
measure CPU, not waiting. A device's uplink is a cellular one, where a round trip takes tens
of milliseconds and the requests that wait for their answers decide the time. The kernel's
``netem`` would add that delay, but it is not available everywhere (this project's CI machine
lacks it), so this relay does it in user space.

It is a delay line, not a bandwidth cap: bytes keep flowing while earlier ones are still on
their way, so a connection's throughput is limited by its protocol's windows, as on a real
link, not by the delay itself (unlike :meth:`uploader_chaos.proxy.FaultProxy.latency`, which
holds each chunk back before reading the next). Nothing is held back for flow control either:
the SSH channel window and PostgreSQL's request/answer pattern bound what is in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType

_CHUNK = 65536


class DelayLink:
    """Relay connections on ``127.0.0.1:<port>`` to ``upstream``, each direction delayed by
    ``one_way`` seconds. A context manager: the relay runs on a thread of its own."""

    def __init__(self, upstream_host: str, upstream_port: int, one_way: float) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.one_way = one_way
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="delay-link",
                                        daemon=True)
        self._server: asyncio.Server | None = None

    def __enter__(self) -> DelayLink:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(self._relay, "127.0.0.1", 0)

    async def _relay(self, client_in: asyncio.StreamReader,
                     client_out: asyncio.StreamWriter) -> None:
        try:
            server_in, server_out = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_out.close()
            return
        pumps = [asyncio.ensure_future(self._carry(client_in, server_out)),
                 asyncio.ensure_future(self._carry(server_in, client_out))]
        try:
            await asyncio.gather(*pumps)
        except (OSError, asyncio.CancelledError):
            # A reset, or the link closing: the connection ends either way. Not re-raised,
            # because asyncio's server reports a cancelled connection handler as an error.
            pass
        finally:
            for pump in pumps:
                pump.cancel()
            for writer in (client_out, server_out):
                writer.close()

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read as fast as bytes come; write each chunk ``one_way`` seconds after it came."""
        loop = asyncio.get_running_loop()
        line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await line.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        delivering = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(_CHUNK)
                line.put_nowait((loop.time() + self.one_way, data))
                if not data:
                    break
            await delivering
        finally:
            delivering.cancel()
