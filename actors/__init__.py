"""Ray actors: rollout engines (vLLM), reward workers, and the group helper that places them.

Every actor here is a plain class a test can construct without Ray; ``ray.remote`` is applied
where groups are created (``actors.group``).
"""
