//! The transport conformance suite (RELIABILITY.md part A) on the Redis Streams transport
//! against the running Redis. Each test runs under its own key prefix, deleted afterwards even
//! when the test fails. Every test skips with a printed reason when Redis is unreachable, and
//! fails instead when `BUS_REQUIRE_BROKERS=1`.

bus_tests::conformance_suite!(bus_tests::conformance::RedisFactory::open);
