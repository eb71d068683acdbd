"""Stage 3 of the data flow: pure decisions (exit profiles, UoE, phi ordering, policy, budgets).

No torch and no Ray here; only numpy and ``devices`` types.
"""
