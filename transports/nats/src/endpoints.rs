//! Listing the endpoints under this transport's naming, with their depths.
//!
//! An endpoint is an input stream of the naming (`[<NAMESPACE>_]<PREFIX>_EP_<name>`); its name
//! is read back from the command subject the stream holds (stream names lose characters a
//! subject keeps), and a stream whose name is not the one that name gives is left out. The
//! depth is the messages of the input stream, which with work-queue retention are those not
//! acked yet, being handled included; the error depth those of the error stream.
//!
//! Consumers are not counted: every instance of an endpoint pulls from the one durable
//! consumer `bus`, and the server keeps no count of the clients that pull from it (its waiting
//! pull requests come and go with each pull), so the figure is `None`.

use bus_core::{EndpointInfo, TransportError};
use futures_util::StreamExt;

use crate::topology::get_stream;
use crate::transport::NatsTransport;

/// See the module docs.
pub(crate) async fn endpoints(
    transport: &NatsTransport,
) -> Result<Vec<EndpointInfo>, TransportError> {
    let inner = &transport.inner;
    let config = &inner.config;
    let naming = &config.naming;
    let prefix = format!("{}EP_", naming.stream_name_prefix());
    let listing = async {
        let mut names = Vec::new();
        let mut all = inner.js.stream_names();
        while let Some(name) = all.next().await {
            let name = name.map_err(|e| TransportError::connection("listing the streams", e))?;
            if name.starts_with(&prefix) {
                names.push(name);
            }
        }
        Ok::<_, TransportError>(names)
    };
    let names =
        TransportError::within("listing the streams", config.connect_timeout, listing).await??;
    let subject_stem = naming.command_subject("");
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        // Deleted since it was listed: left out.
        let Some(info) = get_stream(&inner.js, config, &name).await? else {
            continue;
        };
        let Some(endpoint) = info
            .config
            .subjects
            .iter()
            .find_map(|s| s.strip_prefix(subject_stem.as_str()))
            .filter(|e| !e.is_empty() && naming.endpoint_stream(e) == name)
        else {
            continue;
        };
        let errors = get_stream(&inner.js, config, &naming.error_stream(endpoint)).await?;
        let mut found = EndpointInfo::named(endpoint);
        found.depth = Some(info.state.messages);
        found.error_depth = errors.map(|e| e.state.messages);
        out.push(found);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
