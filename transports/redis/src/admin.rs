//! Looking at an endpoint's streams, taking chosen messages out of them, listing the endpoints,
//! and removing what `declare` created: the Redis side of [`bus_core::Transport::browse`],
//! [`bus_core::Transport::remove`], [`bus_core::Transport::endpoints`] and
//! [`bus_core::Transport::teardown`]. What they show and report is described in the crate docs
//! ("Looking and cleaning up").

use std::collections::BTreeSet;

use bus_core::{Declared, EndpointInfo, Envelope, MessageId, QueueKind, Topology, TransportError};
use redis::Value;

use crate::transport::RedisTransport;
use crate::{scripts, wire};

/// Kinds of [`Declared`] the Redis transport reports.
pub(crate) mod kind {
    /// A stream: an input or error stream.
    pub(crate) const STREAM: &str = "stream";
    /// The consumer group of an input stream: `<stream key> <group>`.
    pub(crate) const GROUP: &str = "consumer group";
    /// A sorted set: the delayed messages of an endpoint.
    pub(crate) const SORTED_SET: &str = "sorted set";
    /// A whole registry set, deleted because no member was left.
    pub(crate) const SET: &str = "set";
    /// A hash.
    pub(crate) const HASH: &str = "hash";
    /// One member of a registry set: `<set key> <member>`.
    pub(crate) const SET_MEMBER: &str = "set member";
}

/// Keys scanned per `SCAN` call.
const SCAN_COUNT: usize = 1000;

/// Registry sets handled per script call.
const SETS_PER_CALL: usize = 256;

/// Stream entries looked at per call of the removal script: a call blocks the server while
/// it runs, so a long stream is walked a range at a time.
const ENTRIES_PER_CALL: usize = 1000;

impl RedisTransport {
    /// See the module docs.
    pub(crate) async fn browse_stream(
        &self,
        endpoint: &str,
        queue: QueueKind,
        limit: usize,
    ) -> Result<Vec<Envelope>, TransportError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let keys = &self.config().keys;
        let mut conn = self.conn();
        let reply: Value = match queue {
            QueueKind::Errors => {
                self.run(
                    "browsing the error stream",
                    redis::cmd("XRANGE")
                        .arg(keys.error_stream(endpoint))
                        .arg("-")
                        .arg("+")
                        .arg("COUNT")
                        .arg(limit)
                        .query_async(&mut conn),
                )
                .await?
            }
            QueueKind::Input => {
                let mut call = scripts::BROWSE_INPUT.key(keys.stream(endpoint));
                call.arg(keys.group(endpoint)).arg(limit);
                self.run("browsing the input stream", call.invoke_async(&mut conn))
                    .await?
            }
        };
        let entries = wire::entries(reply).map_err(|e| TransportError::Other {
            context: format!("browsing the {queue} of `{endpoint}`: {e}"),
            source: None,
        })?;
        Ok(entries
            .into_iter()
            .filter_map(|e| e.fields.map(wire::envelope))
            .take(limit)
            .collect())
    }

    /// See the module docs. The stream is walked oldest first, a range per script call, up
    /// to its last entry when the call started; each call matches and deletes at once.
    pub(crate) async fn remove_entries(
        &self,
        endpoint: &str,
        queue: QueueKind,
        ids: &[MessageId],
    ) -> Result<Vec<MessageId>, TransportError> {
        let keys = &self.config().keys;
        let (stream, group) = match queue {
            QueueKind::Input => (keys.stream(endpoint), keys.group(endpoint)),
            QueueKind::Errors => (keys.error_stream(endpoint), String::new()),
        };
        let mut removed = Vec::new();
        if ids.is_empty() {
            return Ok(removed);
        }
        let mut conn = self.conn();
        let last: Value = self
            .run(
                "finding the end of a stream",
                redis::cmd("XREVRANGE")
                    .arg(&stream)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut conn),
            )
            .await?;
        let unexpected = |e: String| TransportError::Other {
            context: format!("removing messages from the {queue} of `{endpoint}`: {e}"),
            source: None,
        };
        let Some(end) = wire::entries(last).map_err(unexpected)?.pop().map(|e| e.id) else {
            // No stream, or an empty one: nothing to remove.
            return Ok(removed);
        };
        let mut wanted: Vec<MessageId> = ids.to_vec();
        let mut from = "-".to_string();
        while !wanted.is_empty() {
            let mut call = scripts::REMOVE_BY_ID.key(&stream);
            call.arg(&group)
                .arg(&from)
                .arg(&end)
                .arg(ENTRIES_PER_CALL)
                .arg(wire::MESSAGE_ID_FIELDS[0])
                .arg(wire::MESSAGE_ID_FIELDS[1]);
            for id in &wanted {
                call.arg(id.as_str());
            }
            let reply: Value = self
                .run("removing messages by id", call.invoke_async(&mut conn))
                .await?;
            let (last_seen, looked_at, gone) = removal_reply(reply).map_err(unexpected)?;
            for id in gone {
                if let Some(i) = wanted.iter().position(|w| w.as_str() == id) {
                    removed.push(wanted.swap_remove(i));
                }
            }
            if looked_at < ENTRIES_PER_CALL || last_seen.is_empty() || last_seen == end {
                break;
            }
            from = format!("({last_seen}");
        }
        Ok(removed)
    }

    /// See the module docs: the members of the endpoint registry, with the figures of each.
    pub(crate) async fn list_endpoints(&self) -> Result<Vec<EndpointInfo>, TransportError> {
        let keys = &self.config().keys;
        let mut conn = self.conn();
        let mut names: Vec<String> = self
            .run(
                "reading the endpoint registry",
                redis::cmd("SMEMBERS")
                    .arg(keys.endpoints())
                    .query_async(&mut conn),
            )
            .await?;
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let mut call = scripts::ENDPOINT_FIGURES.key(keys.stream(&name));
            call.key(keys.error_stream(&name)).arg(keys.group(&name));
            let (depth, consumers, errors): (i64, i64, i64) = self
                .run(
                    "reading an endpoint's figures",
                    call.invoke_async(&mut conn),
                )
                .await?;
            let mut info = EndpointInfo::named(name);
            info.depth = u64::try_from(depth).ok();
            info.consumers = u64::try_from(consumers).ok();
            info.error_depth = u64::try_from(errors).ok();
            out.push(info);
        }
        Ok(out)
    }

    /// See the module docs.
    pub(crate) async fn teardown_endpoints(
        &self,
        topology: &Topology,
        dry_run: bool,
    ) -> Result<Vec<Declared>, TransportError> {
        let keys = self.config().keys.clone();
        let mut endpoints: Vec<&str> = Vec::new();
        for ep in &topology.endpoints {
            if !endpoints.contains(&ep.name.as_str()) {
                endpoints.push(&ep.name);
            }
        }
        if endpoints.is_empty() {
            return Ok(Vec::new());
        }
        let delete = if dry_run { "0" } else { "1" };
        let mut out = Vec::new();
        let mut conn = self.conn();

        for endpoint in &endpoints {
            let stream = keys.stream(endpoint);
            let group = keys.group(endpoint);
            let error_stream = keys.error_stream(endpoint);
            let delayed = keys.delayed(endpoint);
            let mut call = scripts::TEARDOWN_ENDPOINT.key(&stream);
            call.key(&error_stream)
                .key(&delayed)
                .arg(&group)
                .arg(delete);
            let found: Vec<i64> = self
                .run(
                    "tearing down an endpoint's streams",
                    call.invoke_async(&mut conn),
                )
                .await?;
            let found = |i: usize| found.get(i).is_some_and(|f| *f == 1);
            let candidates = [
                (kind::STREAM, stream.clone()),
                (kind::GROUP, format!("{stream} {group}")),
                (kind::STREAM, error_stream),
                (kind::SORTED_SET, delayed),
            ];
            for (i, (kind, name)) in candidates.into_iter().enumerate() {
                if found(i) {
                    out.push(Declared { kind, name });
                }
            }
        }

        // The scheduled-message keys, shared by the root's buses: only while none waits.
        let mut call = scripts::TEARDOWN_SCHEDULE.key(keys.scheduled());
        call.key(keys.scheduled_claimed())
            .key(keys.scheduled_messages())
            .key(keys.scheduled_wake())
            .arg(delete);
        let found: Vec<i64> = self
            .run(
                "tearing down the scheduled-message keys",
                call.invoke_async(&mut conn),
            )
            .await?;
        let candidates = [
            (kind::SORTED_SET, keys.scheduled()),
            (kind::SORTED_SET, keys.scheduled_claimed()),
            (kind::HASH, keys.scheduled_messages()),
            (kind::STREAM, keys.scheduled_wake()),
        ];
        for (existed, (kind, name)) in found.iter().zip(candidates) {
            if *existed == 1 {
                out.push(Declared { kind, name });
            }
        }

        // The registry first, then every subscriber set (sorted, for a stable report).
        let mut sets = vec![keys.endpoints()];
        let mut subscriber_sets: BTreeSet<String> = topology
            .endpoints
            .iter()
            .flat_map(|ep| ep.events.iter().map(|e| keys.subscribers(e)))
            .collect();
        subscriber_sets.extend(self.subscriber_sets(&keys.subscribers_prefix()).await?);
        sets.extend(subscriber_sets);
        for chunk in sets.chunks(SETS_PER_CALL) {
            let mut call = scripts::TEARDOWN_MEMBERS.prepare_invoke();
            for key in chunk {
                call.key(key);
            }
            call.arg(delete);
            for endpoint in &endpoints {
                call.arg(*endpoint);
            }
            let reply: Value = self
                .run(
                    "removing endpoints from the registries",
                    call.invoke_async(&mut conn),
                )
                .await?;
            let per_set = membership_reply(reply).map_err(|e| TransportError::Other {
                context: format!("tearing down the registries: {e}"),
                source: None,
            })?;
            for (key, (left, members)) in chunk.iter().zip(per_set) {
                out.extend(reported_set(key, left, members));
            }
        }

        if !dry_run {
            // Not declared again by this transport should Redis lose its data.
            self.inner
                .declared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|ep| !endpoints.contains(&ep.name.as_str()));
            tracing::info!(endpoints = ?endpoints, removed = out.len(), "tore down endpoints");
        }
        Ok(out)
    }

    /// Every subscriber set under `prefix` (`SCAN`, one deadline per call).
    async fn subscriber_sets(&self, prefix: &str) -> Result<Vec<String>, TransportError> {
        let pattern = format!("{}*", glob_escape(prefix));
        let mut conn = self.conn();
        let mut cursor = "0".to_string();
        let mut out = Vec::new();
        loop {
            let (next, batch): (String, Vec<String>) = self
                .run(
                    "looking for subscriber sets",
                    redis::cmd("SCAN")
                        .arg(&cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(SCAN_COUNT)
                        .arg("TYPE")
                        .arg("set")
                        .query_async(&mut conn),
                )
                .await?;
            out.extend(batch);
            if next == "0" {
                return Ok(out);
            }
            cursor = next;
        }
    }
}

/// `text` with the characters `SCAN MATCH` treats as a pattern escaped, so a root such as
/// `{bus}` or `a[1]` matches only itself.
pub(crate) fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// What tearing down a registry set removes (or would): the whole set when no member is left,
/// else each member taken out.
pub(crate) fn reported_set(key: &str, left: i64, members: Vec<String>) -> Vec<Declared> {
    if members.is_empty() {
        Vec::new()
    } else if left <= 0 {
        vec![Declared {
            kind: kind::SET,
            name: key.to_string(),
        }]
    } else {
        members
            .into_iter()
            .map(|m| Declared {
                kind: kind::SET_MEMBER,
                name: format!("{key} {m}"),
            })
            .collect()
    }
}

/// The reply of the removal script: the last entry id looked at (empty when none), how many
/// entries were looked at, and the message ids removed.
pub(crate) fn removal_reply(v: Value) -> Result<(String, usize, Vec<String>), String> {
    let Value::Array(parts) = v else {
        return Err(format!("unexpected reply: {v:?}"));
    };
    let mut it = parts.into_iter();
    let last = it.next().and_then(wire::text).ok_or("no last id")?;
    let looked_at = it.next().and_then(wire::int).ok_or("no count")?;
    let removed = match it.next() {
        Some(Value::Array(ids)) => ids.into_iter().filter_map(wire::text).collect(),
        // An empty Lua table comes back as an empty array or as nil.
        Some(Value::Nil) | None => Vec::new(),
        Some(other) => return Err(format!("unexpected removed ids: {other:?}")),
    };
    Ok((last, usize::try_from(looked_at).unwrap_or(0), removed))
}

/// The reply of the members script: per set, the members left and those removed.
pub(crate) fn membership_reply(v: Value) -> Result<Vec<(i64, Vec<String>)>, String> {
    let Value::Array(sets) = v else {
        return Err(format!("unexpected reply: {v:?}"));
    };
    sets.into_iter()
        .map(|set| {
            let Value::Array(parts) = set else {
                return Err(format!("unexpected set item: {set:?}"));
            };
            let mut it = parts.into_iter();
            let left = it
                .next()
                .and_then(wire::int)
                .ok_or("set item without count")?;
            let members = match it.next() {
                Some(Value::Array(m)) => m.into_iter().filter_map(wire::text).collect(),
                // An empty Lua table comes back as an empty array or as nil.
                Some(Value::Nil) | None => Vec::new(),
                Some(other) => return Err(format!("unexpected members: {other:?}")),
            };
            Ok((left, members))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_in_the_root_are_escaped() {
        assert_eq!(glob_escape("bus:subs:"), "bus:subs:");
        assert_eq!(glob_escape("{bus}:subs:"), "{bus}:subs:");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn a_set_left_empty_is_reported_whole_and_a_shared_one_by_member() {
        assert_eq!(
            reported_set("bus:subs:W", 0, vec!["a".into(), "b".into()]),
            vec![Declared {
                kind: "set",
                name: "bus:subs:W".into()
            }]
        );
        assert_eq!(
            reported_set("bus:endpoints", 2, vec!["a".into()]),
            vec![Declared {
                kind: "set member",
                name: "bus:endpoints a".into()
            }]
        );
        assert!(reported_set("bus:subs:X", 0, vec![]).is_empty());
        assert!(reported_set("bus:subs:X", 3, vec![]).is_empty());
    }

    #[test]
    fn the_removal_reply_is_read() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![
            bulk("5-0"),
            Value::Int(3),
            Value::Array(vec![bulk("m-1")]),
        ]);
        assert_eq!(
            removal_reply(reply).unwrap(),
            ("5-0".to_string(), 3, vec!["m-1".to_string()])
        );
        let none = Value::Array(vec![bulk(""), Value::Int(0), Value::Nil]);
        assert_eq!(removal_reply(none).unwrap(), (String::new(), 0, vec![]));
        assert!(removal_reply(Value::Int(1)).is_err());
    }

    #[test]
    fn the_members_reply_is_read() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![
            Value::Array(vec![Value::Int(0), Value::Array(vec![bulk("a")])]),
            Value::Array(vec![Value::Int(4), Value::Array(vec![])]),
            Value::Array(vec![Value::Int(1), Value::Nil]),
        ]);
        assert_eq!(
            membership_reply(reply).unwrap(),
            vec![(0, vec!["a".to_string()]), (4, vec![]), (1, vec![])]
        );
        assert!(membership_reply(Value::Int(1)).is_err());
    }
}
