"""Stage 2 of the data flow: pure-torch encoders with early exits, exit rules, fusion and training.

``encoders`` imports nothing else of exitflow.
"""
