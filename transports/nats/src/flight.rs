//! The registry of messages in flight: pulled from an endpoint's consumer and not settled yet.
//! Plain data under one lock (held for a few instructions at a time); the `acks` module does
//! the sending and the waiting around it.
//!
//! It keeps, for one subscription:
//!
//! - a slot per message, from the pull until it is settled, so the pull loop asks for no more
//!   than the prefetch leaves room for, and for a batch at a time: it waits until half a batch
//!   is free (or, after a short linger, whatever is free), not for each message;
//! - the ack subjects of the messages waiting for a handler or being handled, to signal their
//!   progress, all together on a tick instead of a timer per message;
//! - the acks sent and not confirmed yet, numbered in the order they went to the client.
//!
//! ## Confirmations
//!
//! An ack asks the server for a confirmation (a reply subject naming its slot and number) only
//! when no earlier ask is still waiting for its reply (one that got none within a tick waits no
//! more), or when a quarter of the prefetch (at most [`ASK_EVERY_MAX`]) went out since the last
//! ask; the other acks go out plain. A reply confirms the ack that asked *and every ack sent
//! before it on the same connection*: a NATS server reads a connection's messages in order, so
//! it read those before it answered. When the reply comes and later acks are still unconfirmed,
//! the newest of them is sent again, asking (acking twice changes nothing; the server answers).
//! So there is about one ask and one reply per round trip instead of per message, and each ack
//! is confirmed within a round trip or two.
//!
//! Each ack records the connection it went out on (the client's count of connections). A reply
//! that comes on a later connection than its ask confirms nothing (the acks before it may have
//! been lost with the old connection): after every reconnect the unconfirmed acks are sent
//! again on the new one, and their replies confirm them. An ack with no confirmation within the
//! request timeout is logged and its slot freed: JetStream redelivers its message after the
//! ack wait if the ack was lost. Until then a confirmed ack keeps its slot (it still counts
//! against the prefetch, as it does on the server against the consumer's pending acks).

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::Subject;

/// Largest pull request.
pub(crate) const MAX_BATCH: usize = 256;
/// Most acks sent plain in a row while an ask waits for its reply.
pub(crate) const ASK_EVERY_MAX: u64 = 64;

/// No slot: the end of the free list.
const NONE: u32 = u32::MAX;

/// Where one message of the registry stands.
#[derive(Debug, PartialEq)]
enum Slot {
    /// Unused; the next free slot.
    Free(u32),
    /// Pulled, and waiting for a handler or being handled: its progress is signalled.
    Pulled(Subject),
    /// Being settled by a request of its own (a nak); no more progress signals.
    Settling,
    /// Acked, waiting for a confirmation. `reply` is the ack subject (to send the ack again);
    /// `seq` the number of the ack last sent for it; `conn` the connection it went out on;
    /// `tick` when it was first sent.
    Confirming {
        reply: Subject,
        seq: u64,
        conn: u64,
        tick: u64,
    },
}

/// An ack to hand to the client: the ack subject, and the number to ask a confirmation with
/// (in the reply subject), if this one asks.
#[derive(Debug, PartialEq)]
pub(crate) struct Ack {
    pub(crate) subject: Subject,
    pub(crate) ask: Option<u64>,
}

/// What a tick found.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Tick {
    /// Ack subjects to signal progress on.
    pub(crate) progress: Vec<Subject>,
    /// Acks given up on: no confirmation within the limit.
    pub(crate) lost: usize,
    /// The pull loop waits for the room that freed.
    pub(crate) wake: bool,
    /// Unconfirmed acks with no ask after them: one should be sent again, asking.
    pub(crate) ask: bool,
}

/// The registry.
#[derive(Debug)]
pub(crate) struct Flight {
    slots: Vec<Slot>,
    free: u32,
    /// Slots in use.
    used: usize,
    /// Messages the pull in progress asked for and did not get yet.
    requested: usize,
    /// The prefetch.
    capacity: usize,
    /// The pull loop waits until this much room is free (0: it does not wait).
    wanted: usize,
    /// Ticks so far.
    tick: u64,
    /// The number of the last ack handed to the client.
    sent: u64,
    /// Acks handed to the client and not confirmed, in that order: number and slot. An entry
    /// whose slot moved on (confirmed, given up, sent again under a new number) is stale and
    /// skipped.
    unconfirmed: VecDeque<(u64, u32)>,
    /// The number of the newest ack that asked for a confirmation, and the tick it went out
    /// in.
    asked: u64,
    asked_tick: u64,
    /// Acks up to this number are confirmed (or given up on).
    confirmed: u64,
}

impl Flight {
    pub(crate) fn new(capacity: usize) -> Self {
        Flight {
            slots: Vec::new(),
            free: NONE,
            used: 0,
            requested: 0,
            capacity: capacity.max(1),
            wanted: 0,
            tick: 0,
            sent: 0,
            unconfirmed: VecDeque::new(),
            asked: 0,
            asked_tick: 0,
            confirmed: 0,
        }
    }

    /// Slots neither in use nor asked for.
    pub(crate) fn room(&self) -> usize {
        self.capacity.saturating_sub(self.used + self.requested)
    }

    /// The room worth a pull request of its own while other messages are in flight.
    fn half_batch(&self) -> usize {
        (self.capacity.min(MAX_BATCH) / 2).max(1)
    }

    /// Ask for room: `Ok(n)`, the size of the next pull (now counted as requested), when
    /// there is half a batch of room, or any room once `lingered`; else `Err(some room)`, and
    /// the pull loop is to be told when there is more (see [`Flight::remove`]).
    pub(crate) fn take_room(&mut self, lingered: bool) -> Result<usize, bool> {
        let room = self.room();
        let half = self.half_batch();
        if room >= half || (lingered && room > 0) {
            let n = room.min(MAX_BATCH);
            self.requested = n;
            self.wanted = 0;
            return Ok(n);
        }
        // Woken for the first free slot (to start the linger), then for half a batch.
        self.wanted = if room == 0 { 1 } else { half };
        Err(room > 0)
    }

    /// The pull ended: what it did not bring is no longer expected.
    pub(crate) fn end_pull(&mut self) {
        self.requested = 0;
    }

    /// A pulled message takes a slot: its index.
    pub(crate) fn insert(&mut self, reply: Subject) -> u32 {
        self.requested = self.requested.saturating_sub(1);
        self.used += 1;
        let slot = Slot::Pulled(reply);
        if self.free != NONE {
            let index = self.free;
            if let Slot::Free(next) = std::mem::replace(&mut self.slots[index as usize], slot) {
                self.free = next;
            }
            index
        } else {
            self.slots.push(slot);
            (self.slots.len() - 1) as u32
        }
    }

    /// Free a slot; whether the pull loop waits for the room that makes.
    pub(crate) fn remove(&mut self, index: u32) -> bool {
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return false;
        };
        if matches!(slot, Slot::Free(_)) {
            return false;
        }
        *slot = Slot::Free(self.free);
        self.free = index;
        self.used -= 1;
        if self.wanted > 0 && self.room() >= self.wanted {
            self.wanted = 0;
            return true;
        }
        false
    }

    /// The ack subject of a pulled message, its slot then being settled by other means.
    pub(crate) fn settling(&mut self, index: u32) -> Option<Subject> {
        let slot = self.slots.get_mut(index as usize)?;
        match std::mem::replace(slot, Slot::Settling) {
            Slot::Pulled(reply) => Some(reply),
            other => {
                *slot = other;
                None
            }
        }
    }

    /// Settle a message now (an ack not confirmed, a message given back): its ack subject, and
    /// whether the pull loop waits for the room its slot makes.
    pub(crate) fn settle(&mut self, index: u32) -> (Option<Subject>, bool) {
        let reply = self.settling(index);
        (reply, self.remove(index))
    }

    /// Acks between asks while one waits for its reply.
    fn ask_every(&self) -> u64 {
        (self.capacity as u64 / 4).clamp(1, ASK_EVERY_MAX)
    }

    /// An ack that is to be confirmed, sent on connection `conn` (under the lock that keeps
    /// the order in which acks reach the client).
    pub(crate) fn ack(&mut self, index: u32, conn: u64) -> Option<Ack> {
        let tick = self.tick;
        let slot = self.slots.get_mut(index as usize)?;
        let Slot::Pulled(reply) = slot else {
            return None;
        };
        let reply = reply.clone();
        self.sent += 1;
        let seq = self.sent;
        *slot = Slot::Confirming {
            reply: reply.clone(),
            seq,
            conn,
            tick,
        };
        self.unconfirmed.push_back((seq, index));
        let ask = !self.waiting() || seq - self.asked >= self.ask_every();
        if ask {
            self.asked(seq);
        }
        Some(Ack {
            subject: reply,
            ask: ask.then_some(seq),
        })
    }

    /// Whether an entry of the unconfirmed list is live: its slot still waits for the
    /// confirmation of that ack.
    fn live(&self, (seq, index): (u64, u32)) -> bool {
        matches!(self.slots.get(index as usize), Some(Slot::Confirming { seq: s, .. }) if *s == seq)
    }

    /// The server answered ack `seq` of slot `index`, read while the client was on connection
    /// `conn`. Returns whether the pull loop waits for the room freed, and whether an ack is to
    /// be sent again, asking (later acks are unconfirmed and no ask covers them).
    pub(crate) fn confirmed(&mut self, index: u32, seq: u64, conn: u64) -> (bool, bool) {
        let on_its_connection = matches!(
            self.slots.get(index as usize),
            Some(Slot::Confirming { seq: s, conn: c, .. }) if *s == seq && *c == conn
        );
        if !on_its_connection {
            // A late reply, or one from a connection after its ask's: the acks before it may
            // be lost; they are sent again after the reconnect.
            return (false, false);
        }
        self.confirmed = self.confirmed.max(seq);
        let mut wake = false;
        while let Some(&(s, i)) = self.unconfirmed.front() {
            if s > seq {
                break;
            }
            self.unconfirmed.pop_front();
            if self.live((s, i)) {
                wake |= self.remove(i);
            }
        }
        (wake, self.needs_ask())
    }

    /// An ask waits for its reply, sent since the last tick. One that got no reply by then
    /// (lost, or a server that does not answer it) holds up no later ask: the next ack asks.
    fn waiting(&self) -> bool {
        self.asked > self.confirmed && self.asked_tick == self.tick
    }

    fn asked(&mut self, seq: u64) {
        self.asked = seq;
        self.asked_tick = self.tick;
    }

    /// Unconfirmed acks remain and no ask is waiting for its reply.
    fn needs_ask(&mut self) -> bool {
        while let Some(&front) = self.unconfirmed.front() {
            if self.live(front) {
                break;
            }
            self.unconfirmed.pop_front();
        }
        !self.unconfirmed.is_empty() && !self.waiting()
    }

    /// Send the newest unconfirmed ack again, asking (when no ask is waiting): its slot, its
    /// ack subject and new number.
    pub(crate) fn ask_again(&mut self, conn: u64) -> Option<(u32, Subject, u64)> {
        if !self.needs_ask() {
            return None;
        }
        let index = loop {
            let &entry = self.unconfirmed.back()?;
            if self.live(entry) {
                break entry.1;
            }
            self.unconfirmed.pop_back();
        };
        self.sent += 1;
        let seq = self.sent;
        self.asked(seq);
        self.unconfirmed.push_back((seq, index));
        match self.slots.get_mut(index as usize) {
            Some(Slot::Confirming {
                reply,
                seq: s,
                conn: c,
                ..
            }) => {
                *s = seq;
                *c = conn;
                Some((index, reply.clone(), seq))
            }
            _ => None,
        }
    }

    /// Every unconfirmed ack, to send again on connection `conn` (the one they went out on may
    /// have lost them), with new numbers, in order; the last one asks. Their wait for a
    /// confirmation starts over.
    pub(crate) fn send_again(&mut self, conn: u64) -> Vec<(u32, Subject, u64)> {
        let entries: Vec<_> = self.unconfirmed.drain(..).collect();
        let mut again = Vec::with_capacity(entries.len());
        for entry in entries {
            if !self.live(entry) {
                continue;
            }
            let index = entry.1;
            self.sent += 1;
            let seq = self.sent;
            let now = self.tick;
            if let Some(Slot::Confirming {
                reply,
                seq: s,
                conn: c,
                tick,
            }) = self.slots.get_mut(index as usize)
            {
                *s = seq;
                *c = conn;
                *tick = now;
                again.push((index, reply.clone(), seq));
                self.unconfirmed.push_back((seq, index));
            }
        }
        if let Some(&(_, _, last)) = again.last() {
            self.asked(last);
        }
        again
    }

    /// One tick: with `signal`, the ack subjects to signal progress on; acks unconfirmed for
    /// `limit` ticks are given up on (their slots freed).
    pub(crate) fn on_tick(&mut self, signal: bool, limit: u64) -> Tick {
        self.tick += 1;
        let now = self.tick;
        let mut tick = Tick::default();
        let mut lost = Vec::new();
        for (index, slot) in self.slots.iter().enumerate() {
            match slot {
                Slot::Pulled(reply) if signal => tick.progress.push(reply.clone()),
                Slot::Confirming { tick: sent, .. } if now.saturating_sub(*sent) >= limit => {
                    lost.push(index as u32)
                }
                _ => {}
            }
        }
        for index in &lost {
            tick.wake |= self.remove(*index);
        }
        tick.lost = lost.len();
        tick.ask = self.needs_ask();
        tick
    }

    #[cfg(test)]
    fn used(&self) -> usize {
        self.used
    }
}

/// How the registry's task is timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ticks {
    /// Time between ticks.
    pub(crate) every: Duration,
    /// Progress is signalled every this many ticks (`None`: never).
    pub(crate) progress: Option<u64>,
    /// An ack unconfirmed for this many ticks is given up on (only when acks are confirmed).
    pub(crate) confirm_limit: u64,
}

impl Ticks {
    /// Ticks for progress signals at least every `progress` (`None`: none) and confirmations
    /// given up on after at least `request_timeout` (`None`: acks not confirmed). `None` when
    /// there is nothing to tick for.
    pub(crate) fn new(
        progress: Option<Duration>,
        request_timeout: Option<Duration>,
    ) -> Option<Self> {
        let every = match (progress, request_timeout) {
            (None, None) => return None,
            (Some(p), None) => p,
            (None, Some(r)) => r / 2,
            (Some(p), Some(r)) => p.min(r / 2),
        }
        .max(Duration::from_millis(1));
        let ticks_in = |d: Duration| (d.as_nanos() / every.as_nanos()).max(1) as u64;
        Some(Ticks {
            every,
            // Whole ticks within the interval: never later than it.
            progress: progress.map(ticks_in),
            // An ack sent just after a tick has waited more than `limit - 1` ticks when it is
            // given up on: at least the request timeout.
            confirm_limit: request_timeout.map_or(u64::MAX, |r| {
                r.as_nanos().div_ceil(every.as_nanos()) as u64 + 1
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(n: u32) -> Subject {
        Subject::from(format!("$JS.ACK.S.C.1.{n}.{n}.0.0"))
    }

    /// A registry with `n` messages pulled, in slots `0..n`.
    fn pulled(capacity: usize, n: u32) -> Flight {
        let mut f = Flight::new(capacity);
        for i in 0..n {
            assert_eq!(f.insert(reply(i)), i);
        }
        f
    }

    #[test]
    fn slots_are_reused_and_counted() {
        let mut f = pulled(4, 2);
        assert_eq!(f.used(), 2);
        assert_eq!(f.settle(0), (Some(reply(0)), false));
        assert_eq!(f.settle(0), (None, false), "settled once");
        assert_eq!(f.used(), 1);
        assert_eq!(f.insert(reply(3)), 0, "the freed slot first");
        assert_eq!(f.insert(reply(4)), 2);
    }

    #[test]
    fn the_pull_waits_for_half_a_batch_unless_it_lingered() {
        let mut f = Flight::new(8);
        assert_eq!(f.take_room(false), Ok(8));
        for n in 0..8 {
            f.insert(reply(n));
        }
        f.end_pull();
        assert_eq!(f.take_room(false), Err(false));
        assert!(f.remove(0), "the first free slot wakes the pull loop");
        assert_eq!(
            f.take_room(false),
            Err(true),
            "one slot is less than half a batch"
        );
        assert!(!f.remove(1) && !f.remove(2));
        assert_eq!(f.take_room(true), Ok(3), "after the linger, what is free");
        for n in 0..3 {
            f.insert(reply(n));
        }
        f.end_pull();
        assert_eq!(f.take_room(false), Err(false));
        assert!(f.remove(3));
        assert_eq!(f.take_room(false), Err(true));
        assert!(!f.remove(4) && !f.remove(5));
        assert!(f.remove(6), "half a batch");
        assert_eq!(f.take_room(false), Ok(4));
    }

    #[test]
    fn one_reply_confirms_every_ack_before_it() {
        let mut f = pulled(64, 5);
        let first = f.ack(0, 1).expect("pulled");
        assert_eq!(first.ask, Some(1), "nothing waits: the first ack asks");
        assert_eq!(
            f.ack(1, 1).expect("pulled").ask,
            None,
            "sent plain while it waits"
        );
        assert_eq!(f.ack(2, 1).expect("pulled").ask, None);
        assert_eq!(f.ack(0, 1), None, "acked once");
        assert_eq!(f.used(), 5, "slots kept until confirmed");
        // The reply to the first ask confirms it alone; the two after it need an ask.
        assert_eq!(f.confirmed(0, 1, 1), (false, true));
        assert_eq!(f.used(), 4);
        let (index, subject, seq) = f.ask_again(1).expect("one to send again");
        assert_eq!(
            (index, subject, seq),
            (2, reply(2), 4),
            "the newest, asking"
        );
        assert_eq!(f.ask_again(1), None, "an ask waits already");
        assert_eq!(f.ack(3, 1).expect("pulled").ask, None);
        assert_eq!(
            f.confirmed(2, 4, 1),
            (false, true),
            "slots 1 and 2; 3 is left"
        );
        assert_eq!(f.used(), 2);
        let (index, _, seq) = f.ask_again(1).expect("slot 3 asks");
        assert_eq!(f.confirmed(index, seq, 1), (false, false));
        assert_eq!(f.used(), 1);
        assert_eq!(
            f.ack(4, 1).expect("pulled").ask,
            Some(7),
            "nothing waits again"
        );
    }

    #[test]
    fn a_reply_on_a_later_connection_confirms_nothing_until_sent_again() {
        let mut f = pulled(64, 3);
        f.ack(0, 1);
        f.ack(1, 1);
        // The connection dropped; an ack goes out on the next one before the reconnect is
        // handled, and its reply comes.
        assert_eq!(
            f.confirmed(0, 1, 2),
            (false, false),
            "its ask was on connection 1"
        );
        assert_eq!(f.used(), 3);
        let again = f.send_again(2);
        assert_eq!(
            again,
            vec![(0, reply(0), 3), (1, reply(1), 4)],
            "both again, in order, with new numbers"
        );
        assert_eq!(f.confirmed(1, 4, 2), (false, false), "the last asked");
        assert_eq!(f.used(), 1);
        assert_eq!(
            f.confirmed(0, 1, 2),
            (false, false),
            "a late reply changes nothing"
        );
    }

    #[test]
    fn under_load_every_quarter_of_the_prefetch_asks() {
        let mut f = pulled(16, 12);
        let asks: Vec<_> = (0..12).map(|i| f.ack(i, 1).expect("pulled").ask).collect();
        let asking: Vec<_> = asks.iter().flatten().copied().collect();
        assert_eq!(asking, vec![1, 5, 9], "every 4 acks while the first waits");
    }

    #[test]
    fn progress_goes_to_pulled_messages_and_unconfirmed_acks_are_given_up() {
        let mut f = pulled(4, 2);
        f.ack(0, 1);
        let t = f.on_tick(true, 2);
        assert_eq!(t.progress, vec![reply(1)], "the acked one is not signalled");
        assert_eq!(
            (t.lost, t.ask),
            (0, true),
            "no reply within a tick: to ask again"
        );
        let t = f.on_tick(false, 2);
        assert!(t.progress.is_empty());
        assert_eq!((t.lost, t.ask), (1, false), "given up after two ticks");
        assert_eq!(f.used(), 1);
        assert_eq!(
            f.confirmed(0, 1, 1),
            (false, false),
            "a late reply changes nothing"
        );
        assert_eq!(f.insert(reply(2)), 0, "the slot given up on is used again");
        assert_eq!(
            f.ack(1, 1).expect("pulled").ask,
            Some(2),
            "the lost ask waits no more"
        );
    }

    #[test]
    fn a_tick_asks_for_acks_no_ask_covers() {
        let mut f = pulled(64, 3);
        f.ack(0, 1);
        f.ack(1, 1);
        f.ack(2, 1);
        // The reply of the first ask came, but its ask-again could not go out.
        f.confirmed(0, 1, 1);
        let t = f.on_tick(false, 100);
        assert!(t.ask);
        let (index, _, seq) = f.ask_again(1).expect("the newest");
        assert_eq!(index, 2);
        assert_eq!(f.ask_again(1), None, "it waits for its reply");
        assert!(
            f.on_tick(false, 100).ask,
            "no reply within a tick: ask again"
        );
        let (_, _, again) = f.ask_again(1).expect("the newest");
        assert_eq!(
            f.confirmed(index, seq, 1),
            (false, false),
            "that ask moved on"
        );
        f.confirmed(index, again, 1);
        assert_eq!(f.used(), 0);
    }

    #[test]
    fn an_ask_without_reply_holds_up_no_later_ask() {
        let mut f = pulled(64, 4);
        assert_eq!(f.ack(0, 1).expect("pulled").ask, Some(1));
        assert_eq!(f.ack(1, 1).expect("pulled").ask, None);
        f.on_tick(false, 100);
        assert_eq!(
            f.ack(2, 1).expect("pulled").ask,
            Some(3),
            "the first ask is a tick old"
        );
        assert_eq!(f.ack(3, 1).expect("pulled").ask, None);
        assert_eq!(
            f.confirmed(2, 3, 1),
            (false, true),
            "slots 0 to 2; 3 needs an ask"
        );
        assert_eq!(f.used(), 1);
    }

    #[test]
    fn ticks_never_run_late() {
        let s = Duration::from_secs;
        let t = Ticks::new(Some(Duration::from_millis(7_500)), Some(s(5))).expect("ticks");
        assert_eq!(t.every, Duration::from_millis(2_500));
        assert_eq!(t.progress, Some(3));
        assert_eq!(t.confirm_limit, 3);
        let t = Ticks::new(Some(s(15)), None).expect("ticks");
        assert_eq!(
            (t.every, t.progress, t.confirm_limit),
            (s(15), Some(1), u64::MAX)
        );
        assert_eq!(Ticks::new(None, None), None);
        let t = Ticks::new(Some(Duration::from_millis(700)), Some(s(1))).expect("ticks");
        assert_eq!(t.every, Duration::from_millis(500));
        assert_eq!(
            t.progress,
            Some(1),
            "every tick when the interval is shorter than two"
        );
    }
}
