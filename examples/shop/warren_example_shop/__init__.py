"""An example application on Warren's public API (examples/shop/README.md).

It imports only from ``warren``: a job (:mod:`.words`), a report over the shop's own
SQLite database (:mod:`.report`), a service answering ``orders.create``
(:mod:`.service`) and a backend script publishing over HTTP (:mod:`.notice`).
"""
