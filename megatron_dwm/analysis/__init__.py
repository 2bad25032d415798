"""Reading a finished run's logs: DWM weight plots and preference tables, DWM-vs-baseline comparisons.

Downstream of `training/` (it reads what the trainer writes); nothing in the training path imports it.
"""
