"""free_ports: two processes never hand out the same port, and a block is free again once its holder is gone."""

from __future__ import annotations

import socket
import subprocess
import sys

from localdev import ports

# Claims ports, prints them and the blocks it holds, then holds them until its stdin closes.
HOLDER = """
import sys
from localdev import ports
taken = ports.free_ports(int(sys.argv[1]))
print(" ".join(map(str, taken)), "|", " ".join(map(str, ports._blocks)), flush=True)
sys.stdin.read()
"""


def _start_holder(count: int) -> tuple[subprocess.Popen[str], set[int], set[int]]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(count)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    taken, blocks = holder.stdout.readline().split("|")
    return holder, {int(p) for p in taken.split()}, {int(b) for b in blocks.split()}


def _release(holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None
    holder.stdin.close()
    assert holder.wait(10) == 0


def test_another_process_never_gets_our_ports_nor_we_its() -> None:
    ours = set(ports.free_ports(120))  # more than a block: a second and third block are claimed
    holder, theirs, their_blocks = _start_holder(120)
    try:
        assert len(ours) == len(theirs) == 120
        assert not ours & theirs
        assert not set(ports._blocks) & their_blocks
        # While it lives, none of its blocks can be claimed, so nothing in them is handed out here.
        assert not any(ports.claim_block(first) for first in their_blocks)
        assert not set(ports.free_ports(60)) & {p for b in their_blocks for p in range(b, b + ports.BLOCK_SIZE)}
    finally:
        _release(holder)


def test_a_block_is_free_again_once_its_holder_has_exited() -> None:
    holder, _, their_blocks = _start_holder(1)
    first = next(iter(their_blocks))
    assert not ports.claim_block(first)
    _release(holder)  # exiting releases the lock, however the process ends
    assert ports.claim_block(first)


def test_a_port_bound_by_someone_else_is_skipped() -> None:
    ports.free_ports(1)

    def not_handed_out() -> list[int]:
        return [p for b in ports._blocks for p in range(b, b + ports.BLOCK_SIZE) if p not in ports._handed_out]

    if not not_handed_out():  # the suite used up this process's blocks: hold one more
        ports._claim_any_block()
    taken = not_handed_out()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", taken[0]))  # e.g. a server of a run that used random ports
        listener.listen()
        assert not ports.port_is_free(taken[0])
        assert taken[0] not in ports.free_ports(len(taken))
