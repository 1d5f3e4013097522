"""Run management: checkpoints and resume, evaluation, monitoring, and the HTML report."""
