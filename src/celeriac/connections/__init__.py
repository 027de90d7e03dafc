"""One client per server kind (Redis, RabbitMQ, SQLite), shared by brokers and backends."""
