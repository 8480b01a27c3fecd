//! Interned identifiers (issue 13 §1, ADR 0010): the dataflow carries `userId`, `sourceId`,
//! `sourceRecordId`, `sessionId` and `productId` as 4-byte [`Name`]s, so that its records are
//! fixed-size `Copy` values and cloning one into an arrangement allocates nothing.
//!
//! A name is interned where a change enters the runtime ([`crate::Runtime::push`], and
//! [`crate::RecoveryFeed`] at recovery) and turned
//! back into its string where a view row is built ([`Name::as_str`]). The table lives for the
//! process: a name is never reused and never freed, and ids are not durable (a restart replays
//! the store and interns afresh), so a `Name` means nothing outside the process that made it.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};

use hashbrown::HashTable;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An interned identifier. Equality and hashing are the id's; the order is the string's byte
/// order, as DOMAIN.md's tie-breaks ask (§1.2 K3 `sourceRecordId`, §1.5 `sourceId`), so every
/// rule and every arrangement orders names exactly as it ordered the strings. Equal ids compare
/// without reading the strings.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Name(u32);

/// The id → string table: lock-free to read (the workers resolve names while comparing), appended
/// to only under [`IDS`]'s lock, so an id is the index its string was pushed at.
static STRINGS: boxcar::Vec<Box<str>> = boxcar::Vec::new();

/// The string → id index, used where names are interned (the writer thread, and a view that
/// names a constant while the dataflow is built). A probe compares the string through
/// [`STRINGS`].
static IDS: LazyLock<Mutex<Index>> =
    LazyLock::new(|| Mutex::new(Index { ids: HashTable::new(), hasher: RandomState::new() }));

/// One entry of the index: an id and 32 bits of its string's hash, so that growing the index
/// rehashes from the entries alone, without reading millions of strings under the lock.
#[derive(Clone, Copy)]
struct Entry {
    id: u32,
    hash: u32,
}

/// The table's hash of an entry: its 32 stored bits spread over 64 (hashbrown takes its control
/// byte from the top bits and its bucket from the low ones).
fn spread(hash: u32) -> u64 {
    u64::from(hash).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

struct Index {
    ids: HashTable<Entry>,
    /// SipHash with per-process random keys: identifiers come from clients, and a hash they could
    /// predict would let them build long probe chains under the writer's lock.
    hasher: RandomState,
}

/// The string of an id pushed to [`STRINGS`].
fn resolve(id: u32) -> &'static str {
    STRINGS.get(id as usize).map_or("", |s| s)
}

impl Name {
    /// The name of `s`, interned on first sight.
    pub fn intern(s: &str) -> Name {
        Interner::lock().name(s)
    }

    /// The string this name stands for.
    pub fn as_str(self) -> &'static str {
        // Every `Name` was made by `Interner::name` (or checked by `Deserialize`), after its string
        // was pushed, so the lookup cannot miss.
        resolve(self.0)
    }

    /// How many names this process has interned (a gauge: the table never shrinks before a
    /// restart).
    pub fn interned() -> usize {
        STRINGS.count()
    }

    /// The process-local id (what `Serialize` writes).
    pub fn id(self) -> u32 {
        self.0
    }
}

/// Holds the interning lock, so that a batch of changes interns its names with one acquisition.
pub struct Interner {
    index: MutexGuard<'static, Index>,
}

impl Interner {
    /// Takes the interning lock (a poisoned lock is taken over: an id enters the index only after
    /// its string is pushed, so the index is consistent at every point a panic can occur).
    pub fn lock() -> Interner {
        Interner { index: IDS.lock().unwrap_or_else(PoisonError::into_inner) }
    }

    /// The name of `s`, interned on first sight.
    ///
    /// Panics after 2³² distinct strings; each costs more than 40 bytes of table, so memory runs
    /// out first on any machine vitalflow runs on.
    pub fn name(&mut self, s: &str) -> Name {
        let Index { ids, hasher } = &mut *self.index;
        let hash = hasher.hash_one(s) as u32;
        if let Some(e) = ids.find(spread(hash), |e| e.hash == hash && resolve(e.id) == s) {
            return Name(e.id);
        }
        let id = u32::try_from(STRINGS.push(s.into())).expect("more than 2^32 interned names");
        ids.insert_unique(spread(hash), Entry { id, hash }, |e| spread(e.hash));
        Name(id)
    }
}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Name {
    fn cmp(&self, other: &Self) -> Ordering {
        if self.0 == other.0 { Ordering::Equal } else { self.as_str().cmp(other.as_str()) }
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Written as the process-local id: timely requires its exchanged data to be serializable, but a
/// single-process runtime passes records by value and never writes them.
impl Serialize for Name {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(self.0)
    }
}

/// Reads a process-local id; an id this process has not interned is an error.
impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let id = u32::deserialize(deserializer)?;
        if STRINGS.get(id as usize).is_none() {
            return Err(serde::de::Error::custom(format!("name id {id} is not interned in this process")));
        }
        Ok(Name(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_get_one_name_and_names_order_as_their_strings() {
        let (b, a, b2) = (Name::intern("names-test-b"), Name::intern("names-test-a"), Name::intern("names-test-b"));
        assert_eq!(b, b2);
        assert_ne!(a, b);
        assert_eq!(b.as_str(), "names-test-b");
        // Interned after `b`, so a greater id, yet it orders first: the string's order.
        assert!(a.id() > b.id());
        assert_eq!(a.cmp(&b), Ordering::Less);
        assert_eq!(b.cmp(&b2), Ordering::Equal);
        // Byte order, not char order: "Z" (0x5A) before "a" (0x61), "é" (0xC3…) after "z".
        let mut names: Vec<Name> = ["z", "é", "Z", "a"].map(Name::intern).to_vec();
        names.sort();
        assert_eq!(names.iter().map(|n| n.as_str()).collect::<Vec<_>>(), ["Z", "a", "z", "é"]);
    }

    #[test]
    fn every_string_keeps_its_one_name_as_the_index_grows() {
        let strings: Vec<String> = (0..50_000).map(|i| format!("names-test-grow-{i}")).collect();
        let names: Vec<Name> = strings.iter().map(|s| Name::intern(s)).collect();
        let mut names_again = Interner::lock();
        for (s, n) in strings.iter().zip(&names) {
            assert_eq!(n.as_str(), s);
            assert_eq!(names_again.name(s), *n);
        }
        let distinct: std::collections::HashSet<u32> = names.iter().map(|n| n.id()).collect();
        assert_eq!(distinct.len(), strings.len());
    }

    #[test]
    fn an_id_not_interned_here_does_not_deserialize() {
        let n = Name::intern("names-test-serde");
        let json = serde_json::to_string(&n).unwrap_or_default();
        assert_eq!(serde_json::from_str::<Name>(&json).ok(), Some(n));
        assert!(serde_json::from_str::<Name>(&u32::MAX.to_string()).is_err());
    }
}
