"""The prompt sampler's step budget: a run asked for more steps than its epochs hold says so."""
from data.sampler import PromptSampler


def test_steps_for_caps_at_the_epochs_and_says_what_to_raise(capsys):
    s = PromptSampler(2000, 8, seed=0, epochs=10)  # 250 steps an epoch
    assert s.steps_for(300) == 300 and capsys.readouterr().out == ""
    assert s.steps_for(2850) == 2500
    out = capsys.readouterr().out
    assert out.strip() == ("trainer.max_steps=2850, but 10 epoch(s) of 2000 prompts at 8 a step give 2500 steps: "
                           "training 2500 (raise trainer.epochs to 12 for all 2850)")
    s12 = PromptSampler(2000, 8, seed=0, epochs=12)
    assert s12.steps_for(2850) == 2850 and sum(s12.next() is not None for _ in range(2850)) == 2850
