"""The server's end of the compute child's batch pipe (serving.compute_process._BatchPipe) against a real
multiprocessing Connection at the other end: the framing the child reads and writes."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import socket
import threading

import pytest

from serving.compute_process import _BatchPipe


async def _connected(conn) -> _BatchPipe:
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    conn.close()
    _, pipe = await asyncio.get_running_loop().create_unix_connection(_BatchPipe, sock=sock)
    return pipe


def _echo_child(conn, answers: int) -> None:
    """What the compute child does: recv a pickle, send one back (here: the message, many times over)."""
    for _ in range(answers):
        message = conn.recv()
        conn.send([message] * 20_000)  # ~1 MB: arrives in many pieces
    conn.close()


@pytest.mark.timeout(30)
def test_answers_larger_than_a_socket_buffer_arrive_whole_one_batch_after_another():
    server_end, child_end = multiprocessing.Pipe()
    child = threading.Thread(target=_echo_child, args=(child_end, 3))
    child.start()

    async def exchange() -> list:
        pipe = await _connected(server_end)
        got = []
        for n in range(3):
            message = (f"arm{n}", n, [((1, "i1\x1fa\x1fb\x1fc\x1fd"),)], 50)
            got.append(pickle.loads(await asyncio.wait_for(pipe.exchange(pickle.dumps(message)), 10)))
        return got

    answers = asyncio.run(exchange())
    child.join(5)
    assert [a[0][1] for a in answers] == [0, 1, 2] and all(len(a) == 20_000 for a in answers)


@pytest.mark.timeout(30)
def test_a_child_that_closes_its_end_fails_the_batch_in_flight_and_every_later_one():
    server_end, child_end = multiprocessing.Pipe()

    async def exchange() -> None:
        pipe = await _connected(server_end)
        answer = pipe.exchange(pickle.dumps("batch"))
        assert child_end.recv() == "batch"
        child_end.close()  # dies before answering
        with pytest.raises(EOFError):
            await asyncio.wait_for(answer, 10)
        with pytest.raises(EOFError):
            pipe.exchange(pickle.dumps("next"))

    asyncio.run(exchange())
