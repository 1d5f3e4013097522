"""The learner: GRPO maths (``grpo``), batch building, the DeepSpeed actor and weight sync."""
