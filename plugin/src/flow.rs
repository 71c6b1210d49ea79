//! Bidirectional five-tuple keys and a bounded flow table with least-recently-seen order.
//!
//! The table never holds more than its capacity: inserting into a full table evicts the flow
//! idle the longest and hands it back to the caller, which reports its verdict. Slots are
//! reused, so a steady stream of flows allocates nothing once the table has filled.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::net::IpAddr;

use rustc_hash::FxHasher;

use crate::parse::Packet;

/// A flow as first seen: the initiator is `src`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
}

impl FiveTuple {
    pub fn of(packet: &Packet<'_>) -> Self {
        let (src_port, dst_port) = packet.ports();
        Self { src: packet.src, dst: packet.dst, src_port, dst_port, protocol: packet.protocol }
    }
}

/// The same key for both directions of a flow: the endpoints in a fixed order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    low: (IpAddr, u16),
    high: (IpAddr, u16),
    protocol: u8,
}

impl From<&FiveTuple> for FlowKey {
    fn from(t: &FiveTuple) -> Self {
        let a = (t.src, t.src_port);
        let b = (t.dst, t.dst_port);
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        Self { low, high, protocol: t.protocol }
    }
}

const NONE: u32 = u32::MAX;

/// Flows the index has room for before its first growth.
pub const RESERVED_FLOWS: usize = 65_536;

struct Slot<S> {
    key: FlowKey,
    /// Neighbours in recency order; `NONE` at the ends.
    newer: u32,
    older: u32,
    last_seen_ns: u64,
    state: S,
}

/// A flow removed from the table, with its state, for the caller to finish.
pub struct Removed<S> {
    pub key: FlowKey,
    pub last_seen_ns: u64,
    pub state: S,
}

/// Outcome of [`FlowTable::lookup_or_insert`].
pub enum Entry<S> {
    Existing(u32),
    /// A new flow went into the slot; `evicted` is the flow it displaced when the table was
    /// full.
    Inserted {
        slot: u32,
        evicted: Option<Removed<S>>,
    },
}

/// Flows keyed by [`FlowKey`], most recently seen first.
///
/// Invariants: `index` maps exactly the keys of the live slots; the recency list links every
/// live slot once, `newest` and `oldest` being its ends; a slot is either live or in `free`.
pub struct FlowTable<S> {
    index: HashMap<FlowKey, u32, BuildHasherDefault<FxHasher>>,
    slots: Vec<Slot<S>>,
    free: Vec<u32>,
    newest: u32,
    oldest: u32,
    capacity: usize,
}

impl<S> FlowTable<S> {
    /// `capacity` is the most flows ever held. The index reserves room for up to
    /// [`RESERVED_FLOWS`] flows up front and grows (amortised) beyond, so a large table costs
    /// memory only when traffic fills it.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, NONE as usize - 1);
        Self {
            index: HashMap::with_capacity_and_hasher(
                capacity.min(RESERVED_FLOWS),
                Default::default(),
            ),
            slots: Vec::new(),
            free: Vec::new(),
            newest: NONE,
            oldest: NONE,
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Finds the flow of `key` and marks it seen at `now_ns`, or inserts a new flow whose
    /// state `make` builds.
    pub fn lookup_or_insert(
        &mut self,
        key: FlowKey,
        now_ns: u64,
        make: impl FnOnce() -> S,
    ) -> Entry<S>
    where
        S: Default,
    {
        if let Some(&slot) = self.index.get(&key) {
            self.touch(slot, now_ns);
            return Entry::Existing(slot);
        }

        // Make room: evict the flow idle the longest when full.
        let mut evicted = None;
        if self.index.len() >= self.capacity {
            evicted = self.remove_oldest();
        }

        // Reuse a free slot or grow the slot vector.
        let slot = match self.free.pop() {
            Some(slot) => {
                let entry = &mut self.slots[slot as usize];
                entry.state = make();
                entry.key = key;
                entry.last_seen_ns = now_ns;
                slot
            }
            None => {
                let slot = self.slots.len() as u32;
                self.slots.push(Slot {
                    key,
                    newer: NONE,
                    older: NONE,
                    last_seen_ns: now_ns,
                    state: make(),
                });
                slot
            }
        };
        self.index.insert(key, slot);
        self.push_newest(slot);
        Entry::Inserted { slot, evicted }
    }

    pub fn state_mut(&mut self, slot: u32) -> &mut S {
        &mut self.slots[slot as usize].state
    }

    pub fn state(&self, slot: u32) -> Option<&S> {
        self.slots.get(slot as usize).map(|s| &s.state)
    }

    /// The flow seen least recently, if it has been idle since before `deadline_ns`, or if
    /// its last packet claimed a time after `future_ns` (a bogus stamp must not keep the flow
    /// at the head of the queue, where it would stop every other flow from expiring).
    pub fn oldest_before(&self, deadline_ns: u64, future_ns: u64) -> Option<u32> {
        let slot = self.oldest;
        if slot == NONE {
            return None;
        }
        let last_seen = self.slots[slot as usize].last_seen_ns;
        (last_seen < deadline_ns || last_seen > future_ns).then_some(slot)
    }

    /// Removes the flow in `slot`. Its state is moved out; the slot keeps a default state
    /// until reused.
    pub fn remove(&mut self, slot: u32) -> Removed<S>
    where
        S: Default,
    {
        self.unlink(slot);
        let entry = &mut self.slots[slot as usize];
        self.index.remove(&entry.key);
        self.free.push(slot);
        Removed {
            key: entry.key,
            last_seen_ns: entry.last_seen_ns,
            state: std::mem::take(&mut entry.state),
        }
    }

    pub fn remove_oldest(&mut self) -> Option<Removed<S>>
    where
        S: Default,
    {
        (self.oldest != NONE).then(|| self.remove(self.oldest))
    }

    /// Slots of every live flow, oldest first.
    pub fn slots_oldest_first(&self) -> Vec<u32> {
        let mut slots = Vec::with_capacity(self.len());
        let mut slot = self.oldest;
        while slot != NONE {
            slots.push(slot);
            slot = self.slots[slot as usize].newer;
        }
        slots
    }

    fn touch(&mut self, slot: u32, now_ns: u64) {
        let entry = &mut self.slots[slot as usize];
        // Capture time can step back (merged interfaces); recency never does.
        entry.last_seen_ns = entry.last_seen_ns.max(now_ns);
        if self.newest != slot {
            self.unlink(slot);
            self.push_newest(slot);
        }
    }

    fn push_newest(&mut self, slot: u32) {
        let previous_newest = self.newest;
        {
            let entry = &mut self.slots[slot as usize];
            entry.older = previous_newest;
            entry.newer = NONE;
        }
        if previous_newest != NONE {
            self.slots[previous_newest as usize].newer = slot;
        } else {
            self.oldest = slot;
        }
        self.newest = slot;
    }

    fn unlink(&mut self, slot: u32) {
        let (newer, older) = {
            let entry = &self.slots[slot as usize];
            (entry.newer, entry.older)
        };
        if newer != NONE {
            self.slots[newer as usize].older = older;
        } else {
            self.newest = older;
        }
        if older != NONE {
            self.slots[older as usize].newer = newer;
        } else {
            self.oldest = newer;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> FlowKey {
        let t = FiveTuple {
            src: "10.0.0.1".parse().unwrap(),
            dst: "10.0.0.2".parse().unwrap(),
            src_port: port,
            dst_port: 443,
            protocol: 6,
        };
        FlowKey::from(&t)
    }

    #[test]
    fn both_directions_share_a_key() {
        let forward = FiveTuple {
            src: "192.168.1.2".parse().unwrap(),
            dst: "1.1.1.1".parse().unwrap(),
            src_port: 50000,
            dst_port: 443,
            protocol: 6,
        };
        let backward = FiveTuple {
            src: forward.dst,
            dst: forward.src,
            src_port: forward.dst_port,
            dst_port: forward.src_port,
            protocol: 6,
        };
        assert_eq!(FlowKey::from(&forward), FlowKey::from(&backward));
        let udp = FiveTuple { protocol: 17, ..forward };
        assert_ne!(FlowKey::from(&forward), FlowKey::from(&udp));
    }

    #[test]
    fn full_table_evicts_least_recently_seen() {
        let mut table: FlowTable<u32> = FlowTable::new(3);
        for (i, port) in [1, 2, 3].into_iter().enumerate() {
            assert!(matches!(
                table.lookup_or_insert(key(port), i as u64, || port as u32),
                Entry::Inserted { evicted: None, .. }
            ));
        }
        // Seeing flow 1 again makes flow 2 the oldest.
        assert!(matches!(table.lookup_or_insert(key(1), 10, || 0), Entry::Existing(_)));
        let Entry::Inserted { evicted: Some(evicted), .. } =
            table.lookup_or_insert(key(4), 11, || 4)
        else {
            panic!("a full table must evict");
        };
        assert_eq!(evicted.key, key(2));
        assert_eq!(evicted.state, 2);
        assert_eq!(table.len(), 3);
        assert!(table.index.len() <= table.capacity());
    }

    #[test]
    fn idle_flows_come_out_oldest_first_and_slots_are_reused() {
        let mut table: FlowTable<Vec<u8>> = FlowTable::new(100);
        for port in 0..50u16 {
            table.lookup_or_insert(key(port), port as u64 * 10, || vec![port as u8]);
        }
        let mut expired = Vec::new();
        while let Some(slot) = table.oldest_before(200, u64::MAX) {
            expired.push(table.remove(slot).state[0]);
        }
        assert_eq!(expired, (0..20).collect::<Vec<u8>>());
        assert_eq!(table.len(), 30);
        let slots_before = table.slots.len();
        table.lookup_or_insert(key(999), 1000, Vec::new);
        assert_eq!(table.slots.len(), slots_before);
        assert_eq!(table.slots_oldest_first().len(), 31);
    }

    #[test]
    fn table_never_exceeds_capacity_under_a_flood() {
        let mut table: FlowTable<u8> = FlowTable::new(64);
        let mut evictions = 0;
        for port in 0..10_000u16 {
            if let Entry::Inserted { evicted: Some(_), .. } =
                table.lookup_or_insert(key(port), port as u64, || 0)
            {
                evictions += 1;
            }
            assert!(table.len() <= 64);
        }
        assert_eq!(evictions, 10_000 - 64);
        assert_eq!(table.slots.len(), 64);
    }
}
