"""The RabbitMQ broker (`broker.AMQPBroker`) and one module per idea it relies on."""
