"""The Excel worker: builds xlsx exports off the event loop and tells their owners."""
