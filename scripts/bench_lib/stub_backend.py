"""A one-process plaintext FTP login stub, for scripts/bench's 10,000-session check.

Holding 10,000 idle sessions through ftpsgate in front of vsftpd would need
20,000 vsftpd processes (a privileged parent and an unprivileged child per
session), most of this machine's pid space (kernel.pid_max is 32768 here),
shared with whatever else runs. The proxy's own memory per session does not
depend on what the backend is, so this stub stands in for it: it greets, takes
USER/PASS, answers NOOP/QUIT and holds the connection, all in one asyncio
process.

    python3 stub_backend.py PORT      prints "listening PORT" when ready
"""

import asyncio
import resource
import sys


async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 bench stub backend ready\r\n")
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            verb = line.split(b" ", 1)[0].strip().upper()
            if verb == b"USER":
                writer.write(b"331 Please specify the password.\r\n")
            elif verb == b"PASS":
                writer.write(b"230 Login successful.\r\n")
            elif verb == b"NOOP":
                writer.write(b"200 NOOP ok.\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 Goodbye.\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"502 Not implemented in the stub.\r\n")
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = await asyncio.start_server(session, "127.0.0.1", port, backlog=4096)
    print(f"listening {port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
