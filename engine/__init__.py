"""scanstream's engine: the pipeline stages and their pure logic, configuration and CLI."""
