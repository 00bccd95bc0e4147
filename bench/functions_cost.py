"""Server time per call of the profile read, as a function (FCALL) against as a script (EVALSHA).

`python -m bench.functions_cost [--calls N]`: on a standalone node of its own (the local Valkey, then Debian's
redis-server 7.0 when installed), N calls of get_profile each way, pipelined 1,000 at a time, after
CONFIG RESETSTAT; prints INFO commandstats' usec_per_call of fcall and evalsha. The script is the function's
own text with the helpers before it, as the services ran it before functions.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import redis

from common.storage import functions
from common.storage.scripts import script_source
from localdev import processes
from localdev.cluster import server_binary
from localdev.ports import free_ports
from localdev.waiting import poll_until
from profile_svc.profiles import SCRIPTS

BATCH = 1000


def measure(binary: Path, calls: int) -> dict[str, float]:
    port = free_ports(1)[0]
    directory = tempfile.mkdtemp(prefix="functions-cost-")
    server = subprocess.Popen(
        [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", directory],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        node = redis.Redis(port=port, decode_responses=True)
        poll_until(lambda: _answers(node), 30, "the node to start")
        node.function_load(functions.library("profile").source, replace=True)
        function = functions.function(SCRIPTS / "get_profile.lua")
        sha = node.script_load(script_source(SCRIPTS / "get_profile.lua"))
        profile, events, wake = "profile:{p00}ada", "events:{p00}", "wake:{p00}"
        node.hset(profile, mapping={"name": "Ada", "email": "ada@example.com"})
        figures = {}
        for command, head in (("evalsha", ("EVALSHA", sha)), ("fcall", ("FCALL", function.name))):
            node.delete(events)
            node.config_resetstat()
            for _ in range(calls // BATCH):
                pipe = node.pipeline(transaction=False)
                for _ in range(BATCH):
                    pipe.execute_command(*head, 3, profile, events, wake, "ada")
                pipe.execute()
            stats = node.info("commandstats")[f"cmdstat_{command}"]
            assert int(stats["calls"]) == calls, stats
            figures[command] = float(stats["usec_per_call"])
        node.close()
        return figures
    finally:
        processes.stop(server)
        shutil.rmtree(directory, ignore_errors=True)


def _answers(node: redis.Redis) -> bool:
    try:
        return bool(node.ping())
    except redis.RedisError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=100_000)
    options = parser.parse_args()
    binaries = [server_binary()]
    if shutil.which("redis-server"):
        binaries.append(server_binary(tls=True))
    for binary in binaries:
        version = subprocess.run([str(binary), "--version"], capture_output=True, text=True).stdout.split()[:3]
        figures = measure(binary, options.calls)
        print(
            f"{' '.join(version)}: {options.calls:,} calls each; usec_per_call FCALL {figures['fcall']:.2f}, "
            f"EVALSHA {figures['evalsha']:.2f} ({figures['fcall'] / figures['evalsha'] - 1:+.1%})"
        )


if __name__ == "__main__":
    main()
