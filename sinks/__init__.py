"""Outputs of the engine: ClickHouse (server and embedded), Kafka topics, alert notifiers."""
