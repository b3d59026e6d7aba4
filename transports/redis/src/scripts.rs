//! The Lua scripts: each does, atomically inside Redis, a step that must not be split (check
//! a registry and write; move a due message and remove it from the delay set). Times come
//! from the server's clock (`TIME`), so instances with skewed clocks agree on due times.
//!
//! Scripts name only their own keys in `KEYS`, except the publish script, which writes to the
//! streams of the subscribers it reads from the registry: fine on a single Redis, and on a
//! cluster when the key prefix is a hash tag.

use std::sync::LazyLock;

use redis::Script;

/// Send to an endpoint, if it is declared: append to its stream, or, with a delay, add to its
/// delay set scored by the due time.
///
/// `KEYS[1]` the endpoint registry, `KEYS[2]` the stream or the delay set;
/// `ARGV[1]` the endpoint, `ARGV[2]` the delay in ms or empty, then the fields
/// (`XADD`) or the delay-set member.
/// Returns 1, or 0 when the endpoint is not declared (unroutable).
pub(crate) static SEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then
  return 0
end
if ARGV[2] == '' then
  redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
else
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[3])
end
return 1
"#,
    )
});

/// Publish an event: append it to the stream of every endpoint in the event's subscriber set.
///
/// `KEYS[1]` the subscriber set; `ARGV[1]` the prefix of stream keys, then the fields.
/// Returns the number of subscribers.
pub(crate) static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local subscribers = redis.call('SMEMBERS', KEYS[1])
for _, endpoint in ipairs(subscribers) do
  redis.call('XADD', ARGV[1] .. endpoint, '*', unpack(ARGV, 2))
end
return #subscribers
"#,
    )
});

/// Move due delayed messages to the stream, each in the same step as its removal from the
/// delay set, so none is lost or doubled whichever instance runs it. A member that does not
/// decode (not written by this transport) goes to the error stream as it is.
///
/// `KEYS[1]` the delay set, `KEYS[2]` the stream, `KEYS[3]` the error stream; `ARGV[1]` the
/// most to move. Returns `{moved, ms until the next one is due or -1}`.
pub(crate) static MOVE_DUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local function decode(s)
  local out, i, n = {}, 1, #s
  while i <= n do
    local colon = string.find(s, ':', i, true)
    if not colon then return nil end
    local len = tonumber(string.sub(s, i, colon - 1))
    if not len then return nil end
    local stop = colon + len
    if string.sub(s, stop + 1, stop + 1) ~= ',' then return nil end
    out[#out + 1] = string.sub(s, colon + 1, stop)
    i = stop + 2
  end
  return out
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  local parts = decode(member)
  if parts and #parts >= 3 and (#parts - 1) % 2 == 0 then
    redis.call('XADD', KEYS[2], '*', unpack(parts, 2))
  else
    redis.call('XADD', KEYS[3], '*', 'body', member,
      'bus-failure-reason', 'deserialization-failed',
      'bus-failure-error', 'a delayed entry could not be decoded')
  end
  redis.call('ZREM', KEYS[1], member)
end
local next = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = -1
if next[2] then
  wait = math.max(0, tonumber(next[2]) - now)
end
return {#due, wait}
"#,
    )
});

/// Renew deliveries in progress: reset the idle time of those entries that are still pending
/// on this consumer, so no other consumer takes them over while their handler runs. Entries
/// taken over meanwhile stay with their new owner, and nacked ones (marked idle since long
/// ago, beyond `ARGV[3]`) stay claimable.
///
/// `KEYS[1]` the stream; `ARGV[1]` the group, `ARGV[2]` the consumer, `ARGV[3]` the idle time
/// (ms) past which an entry counts as nacked, then entry ids. Returns how many were renewed.
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local renewed = 0
for i = 4, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)[1]
  if p and p[2] == ARGV[2] and p[3] < tonumber(ARGV[3]) then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    renewed = renewed + 1
  end
end
return renewed
"#,
    )
});

/// Remove consumers that hold no pending entries and have been idle for a while, so names of
/// stopped instances do not pile up. Checked and removed in one step: removing a consumer
/// drops its pending entries, so one that took an entry in between must be kept.
///
/// `KEYS[1]` the stream; `ARGV[1]` the group, `ARGV[2]` the least idle time (ms), `ARGV[3]`
/// one consumer to consider, or empty for all. Returns how many were removed.
pub(crate) static FORGET_IDLE_CONSUMERS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local removed = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local name, pending, idle
  for i = 1, #c, 2 do
    if c[i] == 'name' then name = c[i + 1]
    elseif c[i] == 'pending' then pending = c[i + 1]
    elseif c[i] == 'idle' then idle = c[i + 1] end
  end
  if pending == 0 and idle >= tonumber(ARGV[2]) and (ARGV[3] == '' or ARGV[3] == name) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
    removed = removed + 1
  end
end
return removed
"#,
    )
});

/// The entries of an input stream still to be handled, oldest first, at most `ARGV[2]`: those
/// the group handed out and nobody acked yet (its pending list), then those it has not handed
/// out (after its last delivered id). Entries the group has moved past and that are not
/// pending were acked; an ack deletes its entry, but one acked without (by another tool) is
/// left out all the same. Without the group, every entry is still to be handled.
///
/// `KEYS[1]` the stream; `ARGV[1]` the group, `ARGV[2]` the most entries to return. Returns
/// the entries as `XRANGE` does.
pub(crate) static BROWSE_INPUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local limit = tonumber(ARGV[2])
if limit <= 0 or redis.call('EXISTS', KEYS[1]) == 0 then
  return {}
end
local last
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, id
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1]
    elseif g[i] == 'last-delivered-id' then id = g[i + 1] end
  end
  if name == ARGV[1] then last = id end
end
local out = {}
local from = '-'
if last then
  local start = '-'
  while #out < limit do
    local pending = redis.call('XPENDING', KEYS[1], ARGV[1], start, last, limit - #out)
    if #pending == 0 then break end
    for _, p in ipairs(pending) do
      local entry = redis.call('XRANGE', KEYS[1], p[1], p[1])[1]
      if entry then out[#out + 1] = entry end
    end
    start = '(' .. pending[#pending][1]
  end
  from = '(' .. last
end
if #out < limit then
  for _, entry in ipairs(redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', limit - #out)) do
    out[#out + 1] = entry
  end
end
return out
"#,
    )
});

/// Tear down the keys of one endpoint: its input stream (and the consumer group in it), its
/// error stream and its delay set, or, as a dry run, only say which exist.
///
/// `KEYS[1]` the input stream, `KEYS[2]` the error stream, `KEYS[3]` the delay set; `ARGV[1]`
/// the group, `ARGV[2]` `1` to delete. Returns `{input stream, group, error stream, delay set}`,
/// each 1 when it existed.
pub(crate) static TEARDOWN_ENDPOINT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local found = {0, 0, 0, 0}
if redis.call('EXISTS', KEYS[1]) == 1 then
  found[1] = 1
  if redis.call('TYPE', KEYS[1]).ok == 'stream' then
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
      for i = 1, #g, 2 do
        if g[i] == 'name' and g[i + 1] == ARGV[1] then found[2] = 1 end
      end
    end
  end
end
found[3] = redis.call('EXISTS', KEYS[2])
found[4] = redis.call('EXISTS', KEYS[3])
if ARGV[2] == '1' then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
end
return found
"#,
    )
});

/// Tear down the scheduled-message keys of the root, shared by every bus under it, but only
/// while nothing is scheduled or being delivered (so no scheduled message is ever dropped);
/// or, as a dry run, only say which exist.
///
/// `KEYS[1]` the scheduled set, `KEYS[2]` the claimed set, `KEYS[3]` the message hash,
/// `KEYS[4]` the wake stream; `ARGV[1]` `1` to delete. Returns, per key, 1 when it existed
/// (and was, or would be, deleted); all 0 while messages wait.
pub(crate) static TEARDOWN_SCHEDULE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('ZCARD', KEYS[1]) > 0 or redis.call('ZCARD', KEYS[2]) > 0
   or redis.call('HLEN', KEYS[3]) > 0 then
  return {0, 0, 0, 0}
end
local found = {}
for i = 1, 4 do found[i] = redis.call('EXISTS', KEYS[i]) end
if ARGV[1] == '1' then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
end
return found
"#,
    )
});

/// Remove endpoints from registry sets (the endpoint registry, subscriber sets), or, as a dry
/// run, only say which are members. Redis deletes a set once its last member is removed.
///
/// `KEYS` the sets; `ARGV[1]` `1` to remove, then the endpoint names. Returns, per set,
/// `{members left afterwards, {the names that were members}}`.
pub(crate) static TEARDOWN_MEMBERS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local out = {}
for k = 1, #KEYS do
  local members = {}
  for i = 2, #ARGV do
    if redis.call('SISMEMBER', KEYS[k], ARGV[i]) == 1 then
      members[#members + 1] = ARGV[i]
    end
  end
  local left = redis.call('SCARD', KEYS[k]) - #members
  if ARGV[1] == '1' and #members > 0 then
    redis.call('SREM', KEYS[k], unpack(members))
  end
  out[k] = {left, members}
end
return out
"#,
    )
});

/// Remove entries by message id from a stream, one range of it per call: for each id in
/// `ARGV[7..]` (one per message to remove), the first entry in the range whose message id
/// field is that id is acked in the group (when one is named: so no consumer takes over a
/// removed entry) and deleted. Matching and deleting in one step means a consumer never sees
/// half of it.
///
/// `KEYS[1]` the stream; `ARGV[1]` the group or empty, `ARGV[2]` where the range starts (`-`,
/// or `(` and the last id looked at), `ARGV[3]` where it ends, `ARGV[4]` the most entries to
/// look at, `ARGV[5]` the message id field, `ARGV[6]` its name in older entries. Returns
/// `{last id looked at or '', entries looked at, {message ids removed}}`.
pub(crate) static REMOVE_BY_ID: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local wanted = {}
for i = 7, #ARGV do
  wanted[ARGV[i]] = (wanted[ARGV[i]] or 0) + 1
end
local entries = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[3], 'COUNT', tonumber(ARGV[4]))
local removed = {}
for _, e in ipairs(entries) do
  local fields = e[2]
  local id, old
  for i = 1, #fields, 2 do
    if fields[i] == ARGV[5] then id = fields[i + 1]
    elseif fields[i] == ARGV[6] then old = fields[i + 1] end
  end
  id = id or old
  if id and wanted[id] and wanted[id] > 0 then
    wanted[id] = wanted[id] - 1
    if ARGV[1] ~= '' then
      pcall(redis.call, 'XACK', KEYS[1], ARGV[1], e[1])
    end
    redis.call('XDEL', KEYS[1], e[1])
    removed[#removed + 1] = id
  end
end
local last = ''
if #entries > 0 then
  last = entries[#entries][1]
end
return {last, #entries, removed}
"#,
    )
});

/// The figures of one endpoint: the entries of its input stream (acked ones are deleted, so
/// those still to handle), the consumers of its group, and the entries of its error stream.
///
/// `KEYS[1]` the input stream, `KEYS[2]` the error stream; `ARGV[1]` the group. Returns
/// `{depth, consumers or -1 without the group, error depth}`.
pub(crate) static ENDPOINT_FIGURES: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local depth, consumers = 0, -1
if redis.call('TYPE', KEYS[1]).ok == 'stream' then
  depth = redis.call('XLEN', KEYS[1])
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local name, n
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1]
      elseif g[i] == 'consumers' then n = g[i + 1] end
    end
    if name == ARGV[1] then consumers = n end
  end
end
local errors = 0
if redis.call('TYPE', KEYS[2]).ok == 'stream' then
  errors = redis.call('XLEN', KEYS[2])
end
return {depth, consumers, errors}
"#,
    )
});

/// Keep a reply stream: renew its expiry, or, when it is gone (expired during a long outage,
/// or Redis lost its data), create it again, empty, with the expiry.
///
/// `KEYS[1]` the reply stream; `ARGV[1]` the expiry in ms. Returns 1 when it existed, 0 when
/// it was created again.
pub(crate) static KEEP_REPLIES: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('PEXPIRE', KEYS[1], ARGV[1]) == 1 then
  return 1
end
redis.call('XADD', KEYS[1], 'MAXLEN', 0, '*', 'bus-reply-address', 'open')
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 0
"#,
    )
});

/// Store a scheduled message until it is due, if its endpoint is declared: its id in the
/// scheduled set scored by the due time, the message in the hash, and a poke on the wake
/// stream so the buses taking due messages look again.
///
/// `KEYS[1]` the endpoint registry, `KEYS[2]` the scheduled set, `KEYS[3]` the hash of
/// scheduled messages, `KEYS[4]` the wake stream (gone a day after the last poke); `ARGV[1]`
/// the endpoint (empty for an event), `ARGV[2]` the message id, `ARGV[3]` the due time (ms
/// since the Unix epoch), `ARGV[4]` the stored message. Returns 1, or 0 when the endpoint is
/// not declared.
pub(crate) static SCHEDULE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if ARGV[1] ~= '' and redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('XADD', KEYS[4], 'MAXLEN', 16, '*', 'due', ARGV[3])
redis.call('PEXPIRE', KEYS[4], 86400000)
return 1
"#,
    )
});

/// Take due scheduled messages: first make those whose lease ran out (handed out to a bus that
/// stopped without settling them) due again, then move up to `ARGV[2]` due ids (due time at or
/// before the server's clock) into the claimed set, scored by the end of their lease, and
/// return them with their messages. An id whose message is gone (acked or cancelled
/// meanwhile) is dropped.
///
/// `KEYS[1]` the scheduled set, `KEYS[2]` the claimed set, `KEYS[3]` the hash of messages;
/// `ARGV[1]` the lease in ms, `ARGV[2]` the most to take. Returns `{ms until the next due
/// message or the next lease end, or -1 when neither; {id, message, id, message, ...}}`.
pub(crate) static CLAIM_DUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZADD', KEYS[1], now, id)
end
local out = {}
local lease = now + tonumber(ARGV[1])
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))) do
  redis.call('ZREM', KEYS[1], id)
  local message = redis.call('HGET', KEYS[3], id)
  if message then
    redis.call('ZADD', KEYS[2], lease, id)
    out[#out + 1] = id
    out[#out + 1] = message
  end
end
local wait = -1
for k = 1, 2 do
  local first = redis.call('ZRANGE', KEYS[k], 0, 0, 'WITHSCORES')
  if first[2] then
    local w = math.max(0, tonumber(first[2]) - now)
    if wait < 0 or w < wait then wait = w end
  end
end
return {wait, out}
"#,
    )
});

/// Extend the lease of scheduled messages a bus still holds (handed out, not settled). Ids no
/// longer claimed (settled, or taken back) are left alone.
///
/// `KEYS[1]` the claimed set; `ARGV[1]` the lease in ms, then the ids. Returns how many were
/// extended.
pub(crate) static RENEW_CLAIMS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local lease = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local renewed = 0
for i = 2, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', lease, ARGV[i])
end
return renewed
"#,
    )
});

/// Give a scheduled message handed out back: due again now, if it is still claimed.
///
/// `KEYS[1]` the scheduled set, `KEYS[2]` the claimed set; `ARGV[1]` the id. Returns 1 when
/// it was given back.
pub(crate) static RELEASE_DUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then
  return 0
end
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), ARGV[1])
return 1
"#,
    )
});

/// Cancel a scheduled message that still waits: out of the scheduled set and the hash. One
/// handed out (being delivered) or unknown is left alone.
///
/// `KEYS[1]` the scheduled set, `KEYS[2]` the hash of messages; `ARGV[1]` the id. Returns 1
/// when it was waiting and is now cancelled, else 0.
pub(crate) static CANCEL_SCHEDULED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"#,
    )
});
