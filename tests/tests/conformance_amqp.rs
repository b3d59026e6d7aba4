//! The transport conformance suite (RELIABILITY.md part A) on the AMQP transport against the
//! running RabbitMQ. Each test runs in its own scope (unique queue, exchange and connection
//! names), removed afterwards even when the test fails. Every test skips with a printed reason
//! when RabbitMQ is unreachable, and fails instead when `BUS_REQUIRE_BROKERS=1`.

bus_tests::conformance_suite!(bus_tests::conformance::AmqpFactory::open);
