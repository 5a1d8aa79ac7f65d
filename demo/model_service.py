"""A model-serving demo service, standard library only: each request is parsed, run
through Model.predict and answered, on two worker threads. On SIGTERM it prints how
many requests it served and the share of its CPU time each phase took, as its threads
measured it.

usage: python3 model_service.py
"""

import signal
import sys
import threading
import time

STOP = threading.Event()


class Model:
    def __init__(self, size):
        self.weights = [[(i * j) % 7 - 3 for j in range(size)] for i in range(size)]

    def predict(self, features):
        return [sum(w * x for w, x in zip(row, features)) for row in self.weights]


def parse(payload):
    return [int(token) % 13 for token in payload.split(",")]


def respond(scores):
    return ",".join(str(score) for score in scores)


def timed(phases, phase, function, *args):
    """Runs function(*args) and adds the thread CPU time it took to phases[phase]."""
    start = time.thread_time_ns()
    result = function(*args)
    phases[phase] += time.thread_time_ns() - start
    return result


def worker(phases, served):
    model = Model(64)
    payload = ",".join(str(i) for i in range(64 * 2))
    while not STOP.is_set():
        features = timed(phases, "parse", parse, payload)[:64]
        scores = timed(phases, "predict", model.predict, features)
        timed(phases, "respond", respond, scores * 4)
        served[0] += 1


def main():
    signal.signal(signal.SIGTERM, lambda *_: STOP.set())
    # Each thread counts its own phases: a shared, locked tally would make the
    # threads queue on its lock, and that is not the service's work.
    tallies = [{"parse": 0, "predict": 0, "respond": 0} for _ in range(2)]
    served = [[0] for _ in tallies]
    threads = [
        threading.Thread(target=worker, args=(tally, count))
        for tally, count in zip(tallies, served)
    ]
    for thread in threads:
        thread.start()
    print(f"model_service: serving (pid {threading.get_native_id()})", flush=True)
    while not STOP.wait(0.2):
        pass
    for thread in threads:
        thread.join()
    phases = {phase: sum(tally[phase] for tally in tallies) for phase in tallies[0]}
    total = sum(phases.values()) or 1
    shares = ", ".join(f"{phase} {ns / total:.1%}" for phase, ns in phases.items())
    print(f"model_service: served {sum(count[0] for count in served)} requests")
    print(f"model_service: its own measure of its phases: {shares}")
    sys.stdout.flush()


main()
