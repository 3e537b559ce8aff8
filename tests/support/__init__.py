"""Helpers shared by the end-to-end tests, the demo and the benchmarks: a throwaway PostgreSQL
cluster with outbound_msg preloaded, and SOAP listeners on 127.0.0.1."""
