//! The tables of a facility's redb file. Every table is declared here, once,
//! so the whole on-disk layout can be read in one place.
//!
//! Values are bytes produced by [`crate::codec`]; keys are plain redb types.

use redb::TableDefinition;

/// File metadata: format version and owning facility.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Durable per-actor state, keyed by a name the actor chooses.
pub const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
/// Raft log entries by index.
pub const RAFT_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Raft hard state, conf state and snapshot metadata.
pub const RAFT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
/// The hash-chained ledger, by height: each final entry's bytes (its hash
/// is blake3 of them; it names the previous entry's hash).
pub const LEDGER: TableDefinition<u64, &[u8]> = TableDefinition::new("ledger");
/// The quorum certificate of each final entry, by height. Any quorum of
/// valid votes certifies an entry, so two honest facilities may hold
/// different (equally valid) certificates for one entry: they are kept
/// beside the chain, which is byte-identical everywhere.
pub const LEDGER_CERTS: TableDefinition<u64, &[u8]> = TableDefinition::new("ledger_certs");
/// This validator's own votes by height (written before a vote leaves):
/// an honest validator never signs two entries at one height, even across
/// restarts.
pub const BFT_VOTES: TableDefinition<u64, &[u8]> = TableDefinition::new("bft_votes");
/// Entries this validator voted for that are not final yet, by height.
pub const BFT_PENDING: TableDefinition<u64, &[u8]> = TableDefinition::new("bft_pending");
/// Evidence of misbehaviour, by local sequence.
pub const EVIDENCE: TableDefinition<u64, &[u8]> = TableDefinition::new("evidence");
/// Provisional (AP) changes made during a partition, by local sequence.
pub const PROVISIONAL: TableDefinition<u64, &[u8]> = TableDefinition::new("provisional");
/// The healer's reconciliation reports, by round.
pub const RECONCILIATION: TableDefinition<u64, &[u8]> = TableDefinition::new("reconciliation");
/// Idempotency keys already applied, with their outcome and expiry.
pub const IDEMPOTENCY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("idempotency");

// The replica: the applied schedule, written in one transaction with the
// applied index. Keys are order-preserving bytes (ids never hold 0x00, so
// `id 0x00 rest` sorts by id first); numbers are big-endian.

/// The replica's scalars: applied index, approval, counters, chain height.
pub const SCHED_META: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sched_meta");
/// People by id.
pub const SCHED_PEOPLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sched_people");
/// Blocks by id.
pub const SCHED_BLOCKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sched_blocks");
/// Assignments by `block 0x00 person`.
pub const SCHED_ASSIGN: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sched_assign");
/// Each person's duty by `person 0x00 start(u64) block`: the interval.
pub const SCHED_DUTY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sched_duty");
/// Every block by `day(u32) block`: reads of a range of days.
pub const SCHED_DAYS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sched_days");
/// Blocks with an open slot by `day(u32) block`.
pub const SCHED_OPEN: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sched_open");
/// Leave by `person 0x00 day(u32)`.
pub const SCHED_LEAVE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sched_leave");
/// Idempotency keys' first outcomes, by key.
pub const SCHED_KEYS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sched_keys");
/// Idempotency keys by the log index they applied at (oldest forgotten first).
pub const SCHED_KEY_ORDER: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sched_key_order");
/// The last rejections, by sequence.
pub const SCHED_REJECTIONS: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("sched_rejections");
/// The ledger chain's recent hashes, by height.
pub const SCHED_CHAIN: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sched_chain");
/// The ledger's verdict on each entry since the log's compaction point, by
/// index, for showing entries delivered again (after a restart, or after a
/// snapshot whose index the log then reached) to the validators as they
/// were decided. Each facility prunes it at its own compaction point; a
/// snapshot carries the sender's.
pub const SCHED_VERDICTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sched_verdicts");
/// Retired people: `person` -> the first day they cannot work (u32).
pub const SCHED_RETIRED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sched_retired");
/// Archived blocks with their people by `day(u32) block`, out of the hot
/// tables (see `Op::Archive`).
pub const SCHED_ARCHIVE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sched_archive");
/// Archived blocks' days by block id (`id` -> day u32): an archived id is
/// not used again.
pub const SCHED_ARCHIVED_IDS: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("sched_archived_ids");
/// A snapshot being received, by sequence: rows of the tables above.
pub const SCHED_STAGING: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sched_staging");

/// The replica's tables, in the order a snapshot streams them (the index in
/// this list is the table's number in a snapshot row).
pub const SCHED_TABLES: [TableDefinition<&[u8], &[u8]>; 16] = [
    SCHED_META,
    SCHED_PEOPLE,
    SCHED_BLOCKS,
    SCHED_DAYS,
    SCHED_ASSIGN,
    SCHED_DUTY,
    SCHED_OPEN,
    SCHED_LEAVE,
    SCHED_KEYS,
    SCHED_KEY_ORDER,
    SCHED_REJECTIONS,
    SCHED_CHAIN,
    SCHED_VERDICTS,
    SCHED_RETIRED,
    SCHED_ARCHIVE,
    SCHED_ARCHIVED_IDS,
];

/// Every `&str`-keyed table (backups copy these lists: a new table must
/// join one).
pub const STR_TABLES: [TableDefinition<&str, &[u8]>; 3] = [META, STATE, RAFT_META];
/// Every `u64`-keyed table.
pub const U64_TABLES: [TableDefinition<u64, &[u8]>; 8] = [
    RAFT_LOG,
    LEDGER,
    LEDGER_CERTS,
    BFT_VOTES,
    BFT_PENDING,
    EVIDENCE,
    PROVISIONAL,
    RECONCILIATION,
];
/// Every `&[u8]`-keyed table.
pub const BYTES_TABLES: [TableDefinition<&[u8], &[u8]>; 18] = [
    IDEMPOTENCY,
    SCHED_META,
    SCHED_PEOPLE,
    SCHED_BLOCKS,
    SCHED_DAYS,
    SCHED_ASSIGN,
    SCHED_DUTY,
    SCHED_OPEN,
    SCHED_LEAVE,
    SCHED_KEYS,
    SCHED_KEY_ORDER,
    SCHED_REJECTIONS,
    SCHED_CHAIN,
    SCHED_VERDICTS,
    SCHED_STAGING,
    SCHED_RETIRED,
    SCHED_ARCHIVE,
    SCHED_ARCHIVED_IDS,
];

/// The format this build writes and accepts.
///
/// - 1: the applied schedule lived in memory, restored from a snapshot blob.
/// - 2: the applied schedule lives in the `sched_*` tables. A format-1 file
///   is refused with a message naming both versions.
pub const FORMAT_VERSION: u32 = 2;
/// Key in [`META`] holding the format version.
pub const META_FORMAT: &str = "format";
/// Key in [`META`] holding the owning facility id.
pub const META_FACILITY: &str = "facility";
/// Key in [`META`] holding the cluster id (16 bytes), stamped at the
/// first start that names one.
pub const META_CLUSTER: &str = "cluster";
