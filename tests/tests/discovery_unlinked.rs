//! Discovery when a handler crate is a dependency that nothing in the binary names: the
//! linker leaves it out, and hosting its endpoint is a build error that says why and what to
//! do, instead of an endpoint that silently handles nothing. (`discovery_linked.rs` is the
//! same binary with the crate named once.)

use bus_core::{Bus, BusError};
use bus_transport_memory::MemoryTransport;

#[tokio::test]
async fn hosting_an_endpoint_whose_handler_crate_is_not_linked_is_a_build_error_naming_the_fix() {
    let err = Bus::builder()
        .transport(MemoryTransport::new())
        .host(["t-audit"])
        .build()
        .await
        .expect_err("an endpoint with no handlers must not build");
    assert!(
        matches!(&err, BusError::EmptyEndpoint { endpoint, .. } if endpoint == "t-audit"),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("endpoint `t-audit` is hosted but no handler"),
        "{text}"
    );
    assert!(text.contains("use <that_crate> as _;"), "{text}");
}

#[tokio::test]
async fn a_misspelled_endpoint_lists_the_endpoints_that_have_handlers() {
    #[bus_core::handler(endpoint = "t-ledger")]
    async fn on_entry(_evt: Entry) -> Result<(), bus_core::HandlerError> {
        Ok(())
    }
    #[derive(bus_core::Event, serde::Serialize, serde::Deserialize, Clone, Debug)]
    #[event(name = "t.discovery.Entry")]
    struct Entry;

    let err = Bus::builder()
        .transport(MemoryTransport::new())
        .host(["t-ledgr"])
        .build()
        .await
        .expect_err("a misspelled endpoint must not build");
    let text = err.to_string();
    assert!(
        text.contains("(endpoints with handlers: t-ledger)"),
        "{text}"
    );
}
