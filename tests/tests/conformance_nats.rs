//! The transport conformance suite (RELIABILITY.md part A) on the NATS JetStream transport
//! against the running server. Each test runs under its own subject and stream prefix, whose
//! streams are deleted afterwards even when the test fails. Every test skips with a printed
//! reason when NATS is unreachable, and fails instead when `BUS_REQUIRE_BROKERS=1`.

bus_tests::conformance_suite!(bus_tests::conformance::NatsFactory::open);
