//! The transport conformance suite (RELIABILITY.md part A) on the in-memory transport, twice:
//! with typed bodies (the default) and with bodies serialized to bytes. Each test gets its own
//! transport, so tests share no queues.

mod typed {
    bus_tests::conformance_suite!(bus_tests::conformance::MemoryFactory::open_typed);
}

mod serialized {
    bus_tests::conformance_suite!(bus_tests::conformance::MemoryFactory::open_serialized);
}
