"""Pieces of bench/proxy.py: the machine (system), the proxies and backends (targets), the loads
(load) and the tables (report)."""
