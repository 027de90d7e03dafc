"""One client per server kind, shared by brokers and backends."""
