//! The schedule's [`Tables`] over redb: [`RedbTables`] in a write
//! transaction, [`RedbRead`] in a read transaction. Both decode through one
//! [`Reader`]. A read or write that fails marks the tables faulted: the
//! batch's commit then refuses ([`RedbTables::finish`]), so nothing computed
//! from a failed read is ever kept.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;

use bulwark_storage::schema::{
    SCHED_ARCHIVE, SCHED_ARCHIVED_IDS, SCHED_ASSIGN, SCHED_BLOCKS, SCHED_CHAIN, SCHED_DAYS,
    SCHED_DUTY, SCHED_KEYS, SCHED_KEY_ORDER, SCHED_LEAVE, SCHED_META, SCHED_OPEN, SCHED_PEOPLE,
    SCHED_REJECTIONS, SCHED_RETIRED,
};
use bulwark_storage::{codec, StorageError, Store};
use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Done, Meta};
use crate::ledger::{ChainHead, Link, ANCHOR_WINDOW};
use crate::schedule::{
    ArchivedBlock, Assignment, Block, BlockId, IdempotencyKey, Interval, KeyRecord, MemTables,
    Person, PersonId, RejectionRecord, Tables, TablesRead, Understaffed, IDEMPOTENCY_KEYS_MAX,
    REJECTIONS_KEPT,
};

type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;
type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// Where rows are read from: a write or a read transaction.
pub(crate) trait Source {
    fn get(&self, def: Def, key: &[u8]) -> Result<Option<Vec<u8>>, redb::Error>;
    /// Rows with keys in `[from, to)` (`to` empty: no end), at most `limit`.
    fn range(&self, def: Def, from: &[u8], to: &[u8], limit: usize) -> Result<Rows, redb::Error>;
}

fn collect<T: ReadableTable<&'static [u8], &'static [u8]>>(
    t: &T,
    from: &[u8],
    to: &[u8],
    limit: usize,
) -> Result<Rows, redb::Error> {
    let mut out = Vec::new();
    let iter = if to.is_empty() {
        t.range::<&[u8]>(from..)?
    } else {
        t.range::<&[u8]>(from..to)?
    };
    for row in iter.take(limit) {
        let (k, v) = row?;
        out.push((k.value().to_vec(), v.value().to_vec()));
    }
    Ok(out)
}

impl Source for &WriteTransaction {
    fn get(&self, def: Def, key: &[u8]) -> Result<Option<Vec<u8>>, redb::Error> {
        let t = self.open_table(def)?;
        let v = t.get(key)?.map(|v| v.value().to_vec());
        Ok(v)
    }

    fn range(&self, def: Def, from: &[u8], to: &[u8], limit: usize) -> Result<Rows, redb::Error> {
        let t = self.open_table(def)?;
        collect(&t, from, to, limit)
    }
}

impl Source for ReadTransaction {
    fn get(&self, def: Def, key: &[u8]) -> Result<Option<Vec<u8>>, redb::Error> {
        let t = match self.open_table(def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let v = t.get(key)?.map(|v| v.value().to_vec());
        Ok(v)
    }

    fn range(&self, def: Def, from: &[u8], to: &[u8], limit: usize) -> Result<Rows, redb::Error> {
        let t = match self.open_table(def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        collect(&t, from, to, limit)
    }
}

/// Key of a row under two ids: `a 0x00 b`.
pub(crate) fn pair(a: &str, b: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + 1 + b.len());
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

/// `id 0x00`: the prefix of every row under `id`.
fn prefix(id: &str) -> Vec<u8> {
    pair(id, "")
}

/// The first key after every key that starts with `prefix(id)`.
fn prefix_end(id: &str) -> Vec<u8> {
    let mut k = id.as_bytes().to_vec();
    k.push(1);
    k
}

/// The first key after every id that starts with `prefix` (ids are
/// ASCII, so no id byte reaches 0xff).
fn id_prefix_end(prefix: &str) -> Vec<u8> {
    let mut k = prefix.as_bytes().to_vec();
    k.push(0xff);
    k
}

fn duty_key(person: &str, start: u64, block: &str) -> Vec<u8> {
    let mut k = prefix(person);
    k.extend_from_slice(&start.to_be_bytes());
    k.extend_from_slice(block.as_bytes());
    k
}

fn open_key(day: u32, block: &str) -> Vec<u8> {
    let mut k = day.to_be_bytes().to_vec();
    k.extend_from_slice(block.as_bytes());
    k
}

fn leave_key(person: &str, day: u32) -> Vec<u8> {
    let mut k = prefix(person);
    k.extend_from_slice(&day.to_be_bytes());
    k
}

/// A big-endian u64 key.
pub(crate) fn be_u64(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.try_into().ok()?))
}

fn be_u32(k: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(k.try_into().ok()?))
}

/// Decodes rows for both transaction kinds; remembers the first failure.
pub(crate) struct Reader<S> {
    src: S,
    store: Store,
    fault: RefCell<Option<StorageError>>,
}

impl<S: Source> Reader<S> {
    fn new(src: S, store: Store) -> Reader<S> {
        Reader {
            src,
            store,
            fault: RefCell::new(None),
        }
    }

    fn fail(&self, e: StorageError) {
        let mut f = self.fault.borrow_mut();
        if f.is_none() {
            tracing::error!(error = %e, "replica read failed; the batch will not commit");
            *f = Some(e);
        }
    }

    fn get<T: DeserializeOwned>(&self, def: Def, table: &'static str, key: &[u8]) -> Option<T> {
        match self.src.get(def, key) {
            Ok(Some(bytes)) => match codec::decode(&bytes) {
                Ok(v) => Some(v),
                Err(e) => {
                    self.fail(self.store.codec_error(table, hex::encode(key), e));
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                self.fail(self.store.redb(e));
                None
            }
        }
    }

    fn range(&self, def: Def, from: &[u8], to: &[u8], limit: usize) -> Rows {
        self.src.range(def, from, to, limit).unwrap_or_else(|e| {
            self.fail(self.store.redb(e));
            Vec::new()
        })
    }

    fn decode<T: DeserializeOwned>(&self, table: &'static str, key: &[u8], v: &[u8]) -> Option<T> {
        match codec::decode(v) {
            Ok(v) => Some(v),
            Err(e) => {
                self.fail(self.store.codec_error(table, hex::encode(key), e));
                None
            }
        }
    }

    fn assignments_on(&self, block: &BlockId) -> Vec<(PersonId, Assignment)> {
        let from = prefix(block.as_str());
        let rows = self.range(SCHED_ASSIGN, &from, &prefix_end(block.as_str()), usize::MAX);
        rows.into_iter()
            .filter_map(|(k, v)| {
                let person = std::str::from_utf8(&k[from.len()..]).ok()?.parse().ok();
                let Some(person) = person else {
                    self.fail(self.corrupt("sched_assign key is not an id"));
                    return None;
                };
                Some((person, self.decode("sched_assign", &k, &v)?))
            })
            .collect()
    }

    fn corrupt(&self, reason: &str) -> StorageError {
        StorageError::Corrupt {
            path: self.store.path().to_path_buf(),
            reason: reason.to_string(),
        }
    }

    fn duty_starting(&self, person: &PersonId, from: u64, to: u64) -> Vec<(Interval, BlockId)> {
        if from >= to {
            return Vec::new();
        }
        let p = person.as_str();
        let lo = duty_key(p, from, "");
        let hi = duty_key(p, to, "");
        let head = prefix(p).len() + 8;
        self.range(SCHED_DUTY, &lo, &hi, usize::MAX)
            .into_iter()
            .filter_map(|(k, v)| {
                let block = std::str::from_utf8(k.get(head..)?).ok()?.parse().ok();
                let Some(block) = block else {
                    self.fail(self.corrupt("sched_duty key does not name a block"));
                    return None;
                };
                Some((self.decode("sched_duty", &k, &v)?, block))
            })
            .collect()
    }

    fn understaffed(&self, through_day: u32, limit: usize) -> Vec<Understaffed> {
        let to = match through_day.checked_add(1) {
            Some(d) => d.to_be_bytes().to_vec(),
            None => Vec::new(),
        };
        self.range(SCHED_OPEN, &[], &to, limit)
            .into_iter()
            .filter_map(|(k, _)| {
                let id: BlockId = std::str::from_utf8(k.get(4..)?).ok()?.parse().ok()?;
                let b: Block = self.get(SCHED_BLOCKS, "sched_blocks", id.as_str().as_bytes())?;
                Some(Understaffed {
                    staffed: self.assignments_on(&id).len(),
                    block: id,
                    required: b.required,
                })
            })
            .collect()
    }

    fn leave_day_in(&self, person: &PersonId, from: u32, to: u32) -> Option<u32> {
        let p = person.as_str();
        let hi = match to.checked_add(1) {
            Some(t) => leave_key(p, t),
            None => prefix_end(p),
        };
        let rows = self.range(SCHED_LEAVE, &leave_key(p, from), &hi, 1);
        let (k, _) = rows.into_iter().next()?;
        be_u32(&k[prefix(p).len()..])
    }

    fn leave_days(&self, person: &PersonId, from: u32, to: u32) -> Vec<u32> {
        let p = person.as_str();
        let hi = match to.checked_add(1) {
            Some(t) => leave_key(p, t),
            None => prefix_end(p),
        };
        let head = prefix(p).len();
        self.range(SCHED_LEAVE, &leave_key(p, from), &hi, usize::MAX)
            .into_iter()
            .filter_map(|(k, _)| be_u32(k.get(head..)?))
            .collect()
    }

    /// Rows of a `day(u32) block` keyed table for days `from_day..=to_day`,
    /// after (`from_day`, `after`) if given, at most `limit`.
    fn day_rows(
        &self,
        def: Def,
        from_day: u32,
        after: Option<&BlockId>,
        to_day: u32,
        limit: usize,
    ) -> Rows {
        let from = match after {
            // The first key after `after`'s own.
            Some(b) => {
                let mut k = open_key(from_day, b.as_str());
                k.push(0);
                k
            }
            None => from_day.to_be_bytes().to_vec(),
        };
        let to = match to_day.checked_add(1) {
            Some(d) => d.to_be_bytes().to_vec(),
            None => Vec::new(),
        };
        self.range(def, &from, &to, limit)
    }

    fn archived_blocks(
        &self,
        from_day: u32,
        after: Option<&BlockId>,
        to_day: u32,
        limit: usize,
    ) -> Vec<ArchivedBlock> {
        self.day_rows(SCHED_ARCHIVE, from_day, after, to_day, limit)
            .into_iter()
            .filter_map(|(k, v)| self.decode("sched_archive", &k, &v))
            .collect()
    }

    /// The day stored under `key` in `def` (a big-endian u32).
    fn day(&self, def: Def, table: &'static str, key: &[u8]) -> Option<u32> {
        match self.src.get(def, key) {
            Ok(Some(v)) => {
                let day = be_u32(&v);
                if day.is_none() {
                    self.fail(self.corrupt(&format!("{table} holds no day")));
                }
                day
            }
            Ok(None) => None,
            Err(e) => {
                self.fail(self.store.redb(e));
                None
            }
        }
    }

    fn archived_day(&self, id: &BlockId) -> Option<u32> {
        self.day(
            SCHED_ARCHIVED_IDS,
            "sched_archived_ids",
            id.as_str().as_bytes(),
        )
    }

    fn retired_from(&self, person: &PersonId) -> Option<u32> {
        self.day(SCHED_RETIRED, "sched_retired", person.as_str().as_bytes())
    }

    fn blocks_by_day(
        &self,
        from_day: u32,
        after: Option<&BlockId>,
        to_day: u32,
        limit: usize,
    ) -> Vec<Block> {
        self.day_rows(SCHED_DAYS, from_day, after, to_day, limit)
            .into_iter()
            .filter_map(|(k, _)| {
                let id = std::str::from_utf8(k.get(4..)?).ok()?;
                self.get(SCHED_BLOCKS, "sched_blocks", id.as_bytes())
            })
            .collect()
    }

    /// Every row of `def` decoded as `(key, T)`.
    fn all<T: DeserializeOwned>(&self, def: Def, table: &'static str) -> Vec<(Vec<u8>, T)> {
        self.range(def, &[], &[], usize::MAX)
            .into_iter()
            .filter_map(|(k, v)| {
                let t = self.decode(table, &k, &v)?;
                Some((k, t))
            })
            .collect()
    }

    fn take_fault(&self) -> Option<StorageError> {
        self.fault.borrow_mut().take()
    }
}

macro_rules! tables_read {
    ($ty:ty) => {
        impl TablesRead for $ty {
            fn last_index(&self) -> u64 {
                self.meta.last_index
            }

            fn approved_through(&self) -> Option<u32> {
                self.meta.approved_through
            }

            fn chain(&self) -> &ChainHead {
                &self.chain
            }

            fn person(&self, id: &PersonId) -> Option<Person> {
                self.r
                    .get(SCHED_PEOPLE, "sched_people", id.as_str().as_bytes())
            }

            fn block(&self, id: &BlockId) -> Option<Block> {
                self.r
                    .get(SCHED_BLOCKS, "sched_blocks", id.as_str().as_bytes())
            }

            fn assignments_on(&self, block: &BlockId) -> Vec<(PersonId, Assignment)> {
                self.r.assignments_on(block)
            }

            fn assignment(&self, block: &BlockId, person: &PersonId) -> Option<Assignment> {
                self.r.get(
                    SCHED_ASSIGN,
                    "sched_assign",
                    &pair(block.as_str(), person.as_str()),
                )
            }

            fn duty_starting(
                &self,
                person: &PersonId,
                from: u64,
                to: u64,
            ) -> Vec<(Interval, BlockId)> {
                self.r.duty_starting(person, from, to)
            }

            fn understaffed(&self, through_day: u32, limit: usize) -> Vec<Understaffed> {
                self.r.understaffed(through_day, limit)
            }

            fn leave_day_in(&self, person: &PersonId, from: u32, to: u32) -> Option<u32> {
                self.r.leave_day_in(person, from, to)
            }

            fn key(&self, key: &IdempotencyKey) -> Option<KeyRecord> {
                self.r.get(SCHED_KEYS, "sched_keys", &key.0)
            }

            fn leave_days(&self, person: &PersonId, from: u32, to: u32) -> Vec<u32> {
                self.r.leave_days(person, from, to)
            }

            fn blocks_by_day(
                &self,
                from_day: u32,
                after: Option<&BlockId>,
                to_day: u32,
                limit: usize,
            ) -> Vec<Block> {
                self.r.blocks_by_day(from_day, after, to_day, limit)
            }

            fn archived_through(&self) -> Option<u32> {
                self.meta.archived_through
            }

            fn people_with_prefix(&self, prefix: &str, limit: usize) -> Vec<PersonId> {
                self.r
                    .range(
                        SCHED_PEOPLE,
                        prefix.as_bytes(),
                        &id_prefix_end(prefix),
                        limit,
                    )
                    .into_iter()
                    .filter_map(|(k, _)| std::str::from_utf8(&k).ok()?.parse().ok())
                    .collect()
            }

            fn blocks_with_prefix(&self, prefix: &str, limit: usize) -> Vec<Block> {
                self.r
                    .range(
                        SCHED_BLOCKS,
                        prefix.as_bytes(),
                        &id_prefix_end(prefix),
                        limit,
                    )
                    .into_iter()
                    .filter_map(|(k, v)| self.r.decode("sched_blocks", &k, &v))
                    .collect()
            }

            fn retired_from(&self, person: &PersonId) -> Option<u32> {
                self.r.retired_from(person)
            }

            fn archived_day(&self, id: &BlockId) -> Option<u32> {
                self.r.archived_day(id)
            }

            fn archived_blocks(
                &self,
                from_day: u32,
                after: Option<&BlockId>,
                to_day: u32,
                limit: usize,
            ) -> Vec<ArchivedBlock> {
                self.r.archived_blocks(from_day, after, to_day, limit)
            }
        }
    };
}

/// The schedule's tables in one write transaction. See the module docs.
pub struct RedbTables<'a> {
    r: Reader<&'a WriteTransaction>,
    meta: Meta,
    chain: ChainHead,
}

tables_read!(RedbTables<'_>);

impl<'a> RedbTables<'a> {
    pub(crate) fn new(
        tx: &'a WriteTransaction,
        store: Store,
        meta: Meta,
        chain: ChainHead,
    ) -> RedbTables<'a> {
        RedbTables {
            r: Reader::new(tx, store),
            meta,
            chain,
        }
    }

    /// The batch's scalars and chain head, or the first failure.
    pub fn finish(self) -> Result<Done, StorageError> {
        if let Some(e) = self.r.take_fault() {
            return Err(e);
        }
        let mut meta = self.meta;
        meta.chain_height = self.chain.height();
        meta.last_at = self.chain.last_at().clone();
        Ok(Done {
            meta,
            chain: self.chain,
        })
    }

    fn put(&self, def: Def, table: &'static str, key: &[u8], value: &impl Serialize) {
        let bytes = match codec::encode(value) {
            Ok(b) => b,
            Err(e) => {
                return self
                    .r
                    .fail(self.r.store.codec_error(table, hex::encode(key), e))
            }
        };
        self.put_raw(def, key, &bytes);
    }

    fn put_raw(&self, def: Def, key: &[u8], bytes: &[u8]) {
        let res: Result<(), redb::Error> = (|| {
            let mut t = self.r.src.open_table(def)?;
            t.insert(key, bytes)?;
            Ok(())
        })();
        if let Err(e) = res {
            self.r.fail(self.r.store.redb(e));
        }
    }

    fn delete(&self, def: Def, key: &[u8]) {
        let res: Result<(), redb::Error> = (|| {
            let mut t = self.r.src.open_table(def)?;
            t.remove(key)?;
            Ok(())
        })();
        if let Err(e) = res {
            self.r.fail(self.r.store.redb(e));
        }
    }

    fn reopen(&self, block: &Block) {
        let key = open_key(block.day, block.id.as_str());
        if self.r.assignments_on(&block.id).len() < usize::from(block.required) {
            self.put_raw(SCHED_OPEN, &key, &[]);
        } else {
            self.delete(SCHED_OPEN, &key);
        }
    }
}

impl Tables for RedbTables<'_> {
    fn set_last_index(&mut self, index: u64) {
        self.meta.last_index = index;
    }

    fn set_approved_through(&mut self, day: u32) {
        self.meta.approved_through = Some(day);
    }

    fn set_validators(&mut self, v: &crate::epoch::InForce) {
        self.chain.set_in_force(v.clone());
        self.put(SCHED_META, "sched_meta", super::VALIDATORS_KEY, v);
    }

    fn push_link(&mut self, link: &Link) {
        self.chain.push(link);
        let h = self.chain.height();
        self.put_raw(SCHED_CHAIN, &h.to_be_bytes(), &link.hash);
        if let Some(old) = h.checked_sub(ANCHOR_WINDOW).filter(|o| *o > 0) {
            self.delete(SCHED_CHAIN, &old.to_be_bytes());
        }
    }

    fn put_person(&mut self, person: &Person) {
        self.put(
            SCHED_PEOPLE,
            "sched_people",
            person.id.as_str().as_bytes(),
            person,
        );
    }

    fn put_block(&mut self, block: &Block) {
        self.put(
            SCHED_BLOCKS,
            "sched_blocks",
            block.id.as_str().as_bytes(),
            block,
        );
        self.put_raw(SCHED_DAYS, &open_key(block.day, block.id.as_str()), &[]);
        self.reopen(block);
    }

    fn insert_assignment(&mut self, block: &Block, person: &PersonId, assignment: Assignment) {
        let (b, p) = (block.id.as_str(), person.as_str());
        self.put(SCHED_ASSIGN, "sched_assign", &pair(b, p), &assignment);
        let iv = block.interval();
        self.put(SCHED_DUTY, "sched_duty", &duty_key(p, iv.start, b), &iv);
        self.reopen(block);
    }

    fn remove_assignment(&mut self, block: &Block, person: &PersonId) {
        let (b, p) = (block.id.as_str(), person.as_str());
        self.delete(SCHED_ASSIGN, &pair(b, p));
        self.delete(SCHED_DUTY, &duty_key(p, block.interval().start, b));
        self.reopen(block);
    }

    fn add_leave(&mut self, person: &PersonId, from: u32, to: u32) {
        for day in from..=to {
            self.put_raw(SCHED_LEAVE, &leave_key(person.as_str(), day), &[]);
        }
    }

    fn remember_key(&mut self, key: IdempotencyKey, record: KeyRecord) {
        let index = record.index;
        self.put(SCHED_KEYS, "sched_keys", &key.0, &record);
        self.put_raw(SCHED_KEY_ORDER, &index.to_be_bytes(), &key.0);
        self.meta.keys_len += 1;
        while self.meta.keys_len > IDEMPOTENCY_KEYS_MAX as u64 {
            let oldest = self.r.range(SCHED_KEY_ORDER, &[], &[], 1);
            let Some((k, v)) = oldest.into_iter().next() else {
                break;
            };
            self.delete(SCHED_KEY_ORDER, &k);
            self.delete(SCHED_KEYS, &v);
            self.meta.keys_len -= 1;
        }
    }

    fn record_rejection(&mut self, record: RejectionRecord) {
        let seq = self.meta.rejected_total;
        self.put(
            SCHED_REJECTIONS,
            "sched_rejections",
            &seq.to_be_bytes(),
            &record,
        );
        if let Some(old) = seq.checked_sub(REJECTIONS_KEPT as u64) {
            self.delete(SCHED_REJECTIONS, &old.to_be_bytes());
        }
        self.meta.rejected_total += 1;
    }

    fn retire_person(&mut self, person: &PersonId, day: u32) {
        self.put_raw(
            SCHED_RETIRED,
            person.as_str().as_bytes(),
            &day.to_be_bytes(),
        );
    }

    fn remove_block(&mut self, block: &Block) {
        let key = open_key(block.day, block.id.as_str());
        self.delete(SCHED_BLOCKS, block.id.as_str().as_bytes());
        self.delete(SCHED_DAYS, &key);
        self.delete(SCHED_OPEN, &key);
    }

    fn remove_person(&mut self, person: &PersonId) {
        let p = person.as_str();
        self.delete(SCHED_PEOPLE, p.as_bytes());
        self.delete(SCHED_RETIRED, p.as_bytes());
        for (k, _) in self
            .r
            .range(SCHED_LEAVE, &prefix(p), &prefix_end(p), usize::MAX)
        {
            self.delete(SCHED_LEAVE, &k);
        }
    }

    fn archive_block(&mut self, block: &Block) {
        let assigned = self.r.assignments_on(&block.id);
        let (b, start) = (block.id.as_str(), block.interval().start);
        for (p, _) in &assigned {
            self.delete(SCHED_ASSIGN, &pair(b, p.as_str()));
            self.delete(SCHED_DUTY, &duty_key(p.as_str(), start, b));
        }
        self.remove_block(block);
        self.put_raw(SCHED_ARCHIVED_IDS, b.as_bytes(), &block.day.to_be_bytes());
        self.put(
            SCHED_ARCHIVE,
            "sched_archive",
            &open_key(block.day, b),
            &ArchivedBlock {
                block: block.clone(),
                assigned,
            },
        );
    }

    fn set_archived_through(&mut self, day: u32) {
        self.meta.archived_through = Some(day);
    }
}

/// The schedule's tables in one read transaction: a consistent view.
pub struct RedbRead {
    r: Reader<ReadTransaction>,
    meta: Meta,
    chain: Arc<ChainHead>,
}

tables_read!(RedbRead);

impl RedbRead {
    pub(crate) fn new(
        tx: ReadTransaction,
        store: Store,
        meta: Meta,
        chain: Arc<ChainHead>,
    ) -> RedbRead {
        RedbRead {
            r: Reader::new(tx, store),
            meta,
            chain,
        }
    }

    /// The replica's scalars at this view.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The first read failure, if any (a view's answers after a failure
    /// may be incomplete).
    pub fn fault(&self) -> Option<StorageError> {
        self.r.take_fault()
    }

    /// The whole schedule in memory: for checks, tests and whole-schedule
    /// answers. Its size is the history's; bounded reads use the
    /// [`TablesRead`] queries instead.
    pub fn to_mem(&self) -> Result<MemTables, StorageError> {
        let r = &self.r;
        let mut t = MemTables {
            last_index: self.meta.last_index,
            approved_through: self.meta.approved_through,
            archived_through: self.meta.archived_through,
            rejected_total: self.meta.rejected_total,
            chain: (*self.chain).clone(),
            ..MemTables::default()
        };
        for (_, p) in r.all::<Person>(SCHED_PEOPLE, "sched_people") {
            t.people.insert(p.id.clone(), p);
        }
        for (_, b) in r.all::<Block>(SCHED_BLOCKS, "sched_blocks") {
            t.blocks.insert(b.id.clone(), b);
        }
        for (k, a) in r.all::<Assignment>(SCHED_ASSIGN, "sched_assign") {
            let mut parts = k.splitn(2, |b| *b == 0);
            let ids = (parts.next(), parts.next());
            let (Some(b), Some(p)) = ids else {
                return Err(r.corrupt("sched_assign key is not two ids"));
            };
            let parse = |x: &[u8]| std::str::from_utf8(x).ok().map(str::to_string);
            let (Some(b), Some(p)) = (parse(b), parse(p)) else {
                return Err(r.corrupt("sched_assign key is not text"));
            };
            let (Ok(b), Ok(p)) = (b.parse::<BlockId>(), p.parse::<PersonId>()) else {
                return Err(r.corrupt("sched_assign key is not two ids"));
            };
            t.assignments.entry(b).or_default().insert(p, a);
        }
        for (k, _) in r.range(SCHED_LEAVE, &[], &[], usize::MAX) {
            let Some(at) = k.iter().position(|b| *b == 0) else {
                return Err(r.corrupt("sched_leave key has no person"));
            };
            let person: Option<PersonId> = std::str::from_utf8(&k[..at])
                .ok()
                .and_then(|s| s.parse().ok());
            let (Some(person), Some(day)) = (person, be_u32(&k[at + 1..])) else {
                return Err(r.corrupt("sched_leave key is not person and day"));
            };
            t.leave.entry(person).or_default().insert(day);
        }
        for (k, rec) in r.all::<KeyRecord>(SCHED_KEYS, "sched_keys") {
            let Ok(key) = <[u8; 16]>::try_from(k.as_slice()) else {
                return Err(r.corrupt("sched_keys key is not 16 bytes"));
            };
            t.keys.insert(IdempotencyKey(key), rec);
        }
        for (k, v) in r.range(SCHED_RETIRED, &[], &[], usize::MAX) {
            let person: Option<PersonId> =
                std::str::from_utf8(&k).ok().and_then(|s| s.parse().ok());
            let (Some(person), Some(day)) = (person, be_u32(&v)) else {
                return Err(r.corrupt("sched_retired row is not a person and a day"));
            };
            t.retired.insert(person, day);
        }
        for (_, a) in r.all::<ArchivedBlock>(SCHED_ARCHIVE, "sched_archive") {
            t.archive.insert((a.block.day, a.block.id.clone()), a);
        }
        let rejections: VecDeque<RejectionRecord> = r
            .all::<RejectionRecord>(SCHED_REJECTIONS, "sched_rejections")
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        t.rejections = rejections;
        if let Some(e) = r.take_fault() {
            return Err(e);
        }
        t.rebuild().map_err(|reason| r.corrupt(&reason))?;
        self.check_indexes(&t)?;
        Ok(t)
    }

    /// The index tables agree with what `t` (read from the data tables)
    /// derives: each person's duty, the open slots, the blocks by day, the
    /// key order.
    fn check_indexes(&self, t: &MemTables) -> Result<(), StorageError> {
        let r = &self.r;
        let keys = |def: Def| -> Vec<Vec<u8>> {
            r.range(def, &[], &[], usize::MAX)
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        let by_day = |set: &std::collections::BTreeSet<(u32, BlockId)>| -> Vec<Vec<u8>> {
            set.iter()
                .map(|(day, b)| open_key(*day, b.as_str()))
                .collect()
        };
        let duty: Vec<Vec<u8>> = t
            .by_person
            .iter()
            .flat_map(|(p, m)| {
                m.keys()
                    .map(move |(start, b)| duty_key(p.as_str(), *start, b.as_str()))
            })
            .collect();
        if keys(SCHED_DUTY) != duty {
            return Err(r.corrupt("sched_duty disagrees with sched_assign"));
        }
        if keys(SCHED_OPEN) != by_day(&t.open) {
            return Err(r.corrupt("sched_open disagrees with the blocks' staffing"));
        }
        if keys(SCHED_DAYS) != by_day(&t.by_day) {
            return Err(r.corrupt("sched_days disagrees with sched_blocks"));
        }
        let ids: Vec<(Vec<u8>, Vec<u8>)> = t
            .archived_ids
            .iter()
            .map(|(b, d)| (b.as_str().as_bytes().to_vec(), d.to_be_bytes().to_vec()))
            .collect();
        if r.range(SCHED_ARCHIVED_IDS, &[], &[], usize::MAX) != ids {
            return Err(r.corrupt("sched_archived_ids disagrees with sched_archive"));
        }
        let order: Vec<(Vec<u8>, Vec<u8>)> = r.range(SCHED_KEY_ORDER, &[], &[], usize::MAX);
        let derived: Vec<(Vec<u8>, Vec<u8>)> = t
            .key_order
            .iter()
            .map(|(i, k)| (i.to_be_bytes().to_vec(), k.0.to_vec()))
            .collect();
        if order != derived || self.meta.keys_len != t.keys.len() as u64 {
            return Err(r.corrupt("sched_key_order disagrees with sched_keys"));
        }
        if let Some(e) = r.take_fault() {
            return Err(e);
        }
        Ok(())
    }
}
