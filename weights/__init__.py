"""The weight wire between the learner and the rollout engines: ``net`` (where they meet) and
``wire`` (what travels, in which order); both ends import it, neither imports the other."""
