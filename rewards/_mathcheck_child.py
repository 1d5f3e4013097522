"""The child process of ``rewards.mathcheck``: one JSON question per stdin line, one answer per stdout line.

It imports nothing of the project. The parent bounds each answer by killing this process; the
library's own ``signal.alarm`` time limits are switched off (``None``). A watchdog thread exits when
the parent is gone, so an orphan does not keep computing.
"""
import json
import os
import sys
import threading
import time


def _watch(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)


def _parse(parse, text: str):
    """VLM-R1's ``parse(text)``, except that bare LaTeX (a ``\\`` command, no ``$``, no ``\\boxed``)
    is read as ``$text$`` first: ``parse`` would take only the leading number of ``2\\sqrt{2}``."""
    if "\\" in text and "$" not in text and "\\boxed" not in text:
        got = parse(f"${text}$", parsing_timeout=None)
        if got:
            return got
    return parse(text, parsing_timeout=None)


def main() -> None:
    threading.Thread(target=_watch, args=(int(sys.argv[1]),), daemon=True).start()
    try:
        from math_verify import parse, verify
    except ImportError as e:
        print(json.dumps({"ready": False, "error": f"{e}: pip install math-verify"}), flush=True)
        return
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        q = json.loads(line)
        failure = None
        try:
            truth = _parse(parse, q["truth"])
            answer = _parse(parse, q["answer"]) if truth else []
            if not truth:
                failure = "unparsable_solution"
            elif not answer:
                failure = "unparsable"
            equal = bool(truth and answer and verify(truth, answer, timeout_seconds=None))
        except Exception as e:  # noqa: BLE001 -- a library error on model text scores 0, named
            equal, failure = False, f"error:{type(e).__name__}"
        print(json.dumps({"equal": equal, "failure": failure}), flush=True)


if __name__ == "__main__":
    main()
