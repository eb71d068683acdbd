"""Stage 1 of the data flow: power meters, measurement windows and device profiles.

``devices`` imports nothing else of exitflow.
"""
