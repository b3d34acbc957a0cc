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
pub const BYTES_TABLES: [TableDefinition<&[u8], &[u8]>; 1] = [IDEMPOTENCY];

/// The format this build writes and accepts.
pub const FORMAT_VERSION: u32 = 1;
/// Key in [`META`] holding the format version.
pub const META_FORMAT: &str = "format";
/// Key in [`META`] holding the owning facility id.
pub const META_FACILITY: &str = "facility";
