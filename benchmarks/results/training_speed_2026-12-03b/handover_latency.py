# A throwaway measurement of the tenth part (RESULTS): how long a message from one process
# takes to reach another that is already waiting for it (spinning), through a pipe (as the
# batched vector env hands over) and through shared memory announced by a
# multiprocessing.Semaphore (spin on acquire(False), then block). The receiver "steps" for
# 2 ms between messages, as the worker steps its envs.
import multiprocessing as mp
import sys
import time
from multiprocessing import shared_memory

import numpy as np

ROUNDS = 2000


def busy(seconds):
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        pass


def pipe_receive(connection):
    while not connection.poll():
        pass
    return connection.recv()


def semaphore_acquire(semaphore, spin_s=0.004):
    deadline = time.perf_counter() + spin_s
    while time.perf_counter() < deadline:
        if semaphore.acquire(False):
            return
    semaphore.acquire()


def pipe_worker(connection):
    latencies = []
    while (message := pipe_receive(connection)) is not None:
        latencies.append(time.perf_counter() - message[1])
        busy(0.002)
        connection.send("done")
    connection.send(np.array(latencies))


def semaphore_worker(name, request, answer):
    memory = shared_memory.SharedMemory(name=name)
    sent_at = np.ndarray((2,), dtype=np.float64, buffer=memory.buf)  # [time, stop]
    latencies = []
    while True:
        semaphore_acquire(request)
        if sent_at[1]:
            break
        latencies.append(time.perf_counter() - sent_at[0])
        busy(0.002)
        answer.release()
    np.save("/tmp/handover_latency.npy", np.array(latencies))
    del sent_at
    memory.close()


def through_pipe(context):
    here, there = context.Pipe()
    process = context.Process(target=pipe_worker, args=(there,))
    process.start()
    for _ in range(ROUNDS):
        here.send((np.zeros((8, 7), np.float32), time.perf_counter()))
        pipe_receive(here)
        busy(0.0004)  # the main process's own work between two hand-overs
    here.send(None)
    latencies = pipe_receive(here)
    process.join()
    return latencies


def through_shared_memory(context):
    request, answer = context.Semaphore(0), context.Semaphore(0)
    memory = shared_memory.SharedMemory(create=True, size=16)
    sent_at = np.ndarray((2,), dtype=np.float64, buffer=memory.buf)
    sent_at[:] = 0.0
    process = context.Process(target=semaphore_worker, args=(memory.name, request, answer))
    process.start()
    for _ in range(ROUNDS):
        sent_at[0] = time.perf_counter()
        request.release()
        semaphore_acquire(answer)
        busy(0.0004)
    sent_at[1] = 1.0
    request.release()
    process.join()
    del sent_at
    memory.close()
    memory.unlink()
    return np.load("/tmp/handover_latency.npy")


if __name__ == "__main__":
    context = mp.get_context("spawn")
    for name, measure in (("pipe", through_pipe), ("shared memory", through_shared_memory)):
        latencies = measure(context) * 1e6
        p50, p90 = np.percentile(latencies, [50, 90])
        print(f"{name}: {p50:.1f} us median, {p90:.1f} us at the 90th percentile", file=sys.stdout)
