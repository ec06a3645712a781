"""The pieces of hamanet's benchmark runner (`bench/run.py`): what runs, how, and the report."""
