"""How many random cases the fuzz and exactness tests draw: every one in the full suite, a fifth in
the edit loop's fast tier (``pytest -m "not e2e"``). ``tests/conftest.py`` sets ``FULL`` from the
run's ``-m`` before any test module is imported; ``VR1_FULL_CASES=1`` draws them all in any run."""
import os

FULL = True


def cases(n: int) -> int:
    """``n`` in the full suite; in the fast tier a fifth of it, at least 50 (or ``n`` if smaller)."""
    if FULL or os.environ.get("VR1_FULL_CASES") == "1":
        return n
    return min(n, max(50, n // 5))
