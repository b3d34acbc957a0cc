//! Validator-set epochs: which vote keys certify which heights.
//!
//! The set starts as the genesis set (the configured vote keys at the
//! cluster's bootstrap, epoch 0, from height 1). An [`Op::Validator`]
//! ledger entry at height `h` adds a facility, rotates its key or removes
//! it; it is certified by the set in force at `h`, and the new set (the
//! next epoch) certifies every height from `h + 1`. So every certificate
//! is checked against the set of its height's epoch, and a ledger verifies
//! from height 1 with the genesis set's public keys alone: each epoch
//! entry it meets names the next set.
//!
//! A proposal is signed under the set its proposer saw: the set in force
//! right after its anchor. One anchored before the current epoch began is
//! checked against the previous set (a key rotated while the proposal was
//! in flight is no forgery); one anchored before that is a CHAIN_BREAK.
//!
//! [`Op::Validator`]: crate::schedule::Op::Validator

use std::collections::BTreeMap;
use std::sync::Arc;

use bulwark_transport::FacilityId;
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::keys::PublicKeys;
use crate::ledger::SIGNERS_MAX;

/// A vote key as a ledger entry carries it: 32 bytes, a valid, non-weak
/// ed25519 point (checked when a change is applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VoteKey(pub [u8; 32]);

impl VoteKey {
    /// The key as ed25519 checks it; refuses a non-point or a weak key.
    pub fn verifying(&self) -> Result<VerifyingKey, String> {
        let k = VerifyingKey::from_bytes(&self.0).map_err(|e| format!("not a vote key: {e}"))?;
        if k.is_weak() {
            return Err("a weak (small-order) vote key".into());
        }
        Ok(k)
    }
}

impl From<&VerifyingKey> for VoteKey {
    fn from(k: &VerifyingKey) -> VoteKey {
        VoteKey(*k.as_bytes())
    }
}

/// One change of the validator set: `key` Some adds `facility` or rotates
/// its key, None removes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidatorChange {
    /// The facility.
    pub facility: FacilityId,
    /// Its new key, or None to remove it.
    pub key: Option<VoteKey>,
}

/// A validator set and the heights it certifies (from `from_height` until
/// the next epoch's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatorSet {
    /// The epoch's number (genesis: 0).
    pub number: u64,
    /// The first height it certifies.
    pub from_height: u64,
    keys: PublicKeys,
}

/// The stored form of a [`ValidatorSet`].
#[derive(Serialize, Deserialize)]
struct Stored {
    number: u64,
    from_height: u64,
    keys: Vec<(FacilityId, VoteKey)>,
}

impl Serialize for ValidatorSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Stored {
            number: self.number,
            from_height: self.from_height,
            keys: self.entries().collect(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for ValidatorSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ValidatorSet, D::Error> {
        let st = Stored::deserialize(d)?;
        if st.keys.is_empty() || st.keys.len() > SIGNERS_MAX {
            return Err(serde::de::Error::custom(format!(
                "a validator set holds 1 to {SIGNERS_MAX} keys, not {}",
                st.keys.len()
            )));
        }
        let mut keys = Vec::with_capacity(st.keys.len());
        for (f, k) in st.keys {
            keys.push((f, k.verifying().map_err(serde::de::Error::custom)?));
        }
        Ok(ValidatorSet {
            number: st.number,
            from_height: st.from_height,
            keys: PublicKeys::new(keys),
        })
    }
}

impl ValidatorSet {
    /// Epoch `number` of `keys`, certifying from `from_height` (a checker
    /// that keeps its own account of the epochs builds them so).
    pub fn new(number: u64, from_height: u64, keys: PublicKeys) -> ValidatorSet {
        ValidatorSet {
            number,
            from_height,
            keys,
        }
    }

    /// The genesis set: `keys`, epoch 0, from height 1.
    pub fn genesis(keys: PublicKeys) -> ValidatorSet {
        ValidatorSet {
            number: 0,
            from_height: 1,
            keys,
        }
    }

    /// The set's keys.
    pub fn keys(&self) -> &PublicKeys {
        &self.keys
    }

    /// `(facility, key)` in facility order.
    pub fn entries(&self) -> impl Iterator<Item = (FacilityId, VoteKey)> + '_ {
        self.keys
            .facilities()
            .map(|f| (f.clone(), VoteKey::from(self.keys.get(f).expect("listed"))))
    }

    /// The next epoch's set after `change`, made by the entry at `height`
    /// (so it certifies from `height + 1`). Refused, with why: a key that is
    /// no point or weak, a key another facility holds, a change that
    /// changes nothing, removing a facility not in the set or the last one,
    /// a set over [`SIGNERS_MAX`].
    pub fn change(&self, change: &ValidatorChange, height: u64) -> Result<ValidatorSet, String> {
        let f = &change.facility;
        let mut keys: BTreeMap<FacilityId, VerifyingKey> = self
            .keys
            .facilities()
            .map(|g| (g.clone(), *self.keys.get(g).expect("listed")))
            .collect();
        match &change.key {
            Some(k) => {
                let key = k.verifying()?;
                if let Some((holder, _)) = keys.iter().find(|(g, v)| **v == key && *g != f) {
                    return Err(format!("{holder} holds that vote key"));
                }
                if keys.get(f) == Some(&key) {
                    return Err(format!("{f} already holds that vote key"));
                }
                keys.insert(f.clone(), key);
                if keys.len() > SIGNERS_MAX {
                    return Err(format!("a validator set holds at most {SIGNERS_MAX}"));
                }
            }
            None => {
                if keys.remove(f).is_none() {
                    return Err(format!("{f} is not a validator"));
                }
                if keys.is_empty() {
                    return Err("the last validator cannot be removed".into());
                }
            }
        }
        Ok(ValidatorSet {
            number: self.number + 1,
            from_height: height + 1,
            keys: PublicKeys::new(keys),
        })
    }
}

/// Every epoch one knows, by first height: the set of any height.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epochs {
    by_height: BTreeMap<u64, Arc<ValidatorSet>>,
}

/// Most epochs a history keeps (a change a week for twenty years is about
/// 1,000): beyond it, [`Epochs::insert`] refuses.
pub const EPOCHS_MAX: usize = 4096;

impl Epochs {
    /// A history that starts with `genesis`.
    pub fn new(genesis: ValidatorSet) -> Epochs {
        let mut by_height = BTreeMap::new();
        by_height.insert(genesis.from_height, Arc::new(genesis));
        Epochs { by_height }
    }

    /// The set that certifies `height`.
    pub fn at(&self, height: u64) -> &Arc<ValidatorSet> {
        self.by_height
            .range(..=height.max(1))
            .next_back()
            .or_else(|| self.by_height.iter().next())
            .map(|(_, s)| s)
            .expect("a history holds its genesis")
    }

    /// The newest set.
    pub fn newest(&self) -> &Arc<ValidatorSet> {
        self.by_height
            .values()
            .next_back()
            .expect("a history holds its genesis")
    }

    /// Records `set` (again: no change). Answers whether it was new, or
    /// refuses a set whose first height another epoch holds with other
    /// keys, or one beyond [`EPOCHS_MAX`].
    pub fn insert(&mut self, set: Arc<ValidatorSet>) -> Result<bool, String> {
        match self.by_height.get(&set.from_height) {
            Some(s) if **s == *set => return Ok(false),
            Some(s) => {
                return Err(format!(
                    "height {} already starts epoch {}; another set claims it",
                    set.from_height, s.number
                ))
            }
            None => {}
        }
        if self.by_height.len() >= EPOCHS_MAX {
            return Err(format!("over {EPOCHS_MAX} validator epochs"));
        }
        self.by_height.insert(set.from_height, set);
        Ok(true)
    }

    /// Every epoch, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<ValidatorSet>> {
        self.by_height.values()
    }

    /// Every facility in any epoch.
    pub fn everyone(&self) -> std::collections::BTreeSet<FacilityId> {
        self.by_height
            .values()
            .flat_map(|s| s.keys().facilities().cloned().collect::<Vec<_>>())
            .collect()
    }
}

/// The sets the replicated state keeps: the one in force and the one
/// before it (proposals anchored before the current epoch are checked
/// against it). None anywhere: the genesis set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct InForce {
    /// The set in force (None: genesis).
    pub current: Option<ValidatorSet>,
    /// The one before (None: genesis).
    pub prior: Option<ValidatorSet>,
}

impl InForce {
    /// The set a proposal anchored at `anchor_height` is signed under, with
    /// `genesis` for "none": the current one if its epoch began by the
    /// height after the anchor, else the one before if its did; else None.
    pub fn for_anchor<'a>(
        &'a self,
        genesis: &'a ValidatorSet,
        anchor_height: u64,
    ) -> Option<&'a ValidatorSet> {
        let next = anchor_height + 1;
        let current = self.current.as_ref().unwrap_or(genesis);
        if current.from_height <= next {
            return Some(current);
        }
        let prior = self.prior.as_ref().unwrap_or(genesis);
        (prior.from_height <= next).then_some(prior)
    }

    /// The set in force.
    pub fn current<'a>(&'a self, genesis: &'a ValidatorSet) -> &'a ValidatorSet {
        self.current.as_ref().unwrap_or(genesis)
    }

    /// The set that certifies `height`, if it is one of these two (or
    /// genesis, when no epoch began since).
    pub fn at_height<'a>(
        &'a self,
        genesis: &'a ValidatorSet,
        height: u64,
    ) -> Option<&'a ValidatorSet> {
        let current = self.current(genesis);
        if current.from_height <= height {
            return Some(current);
        }
        let prior = self.prior.as_ref().unwrap_or(genesis);
        (prior.from_height <= height).then_some(prior)
    }

    /// What an entry admitted at `height` showed of epochs when it was
    /// first applied, rebuilt after a restart from these two sets: the
    /// epoch that certifies it and, for a validator change, the set it
    /// began. None when the two sets no longer tell.
    pub fn shown_again(
        &self,
        genesis: &ValidatorSet,
        height: u64,
        op: Option<&crate::schedule::Op>,
    ) -> Option<(u64, Option<ValidatorSet>)> {
        let certifies = self.at_height(genesis, height)?.number;
        match op {
            Some(crate::schedule::Op::Validator(_)) => {
                let next = self.at_height(genesis, height + 1)?;
                (next.from_height == height + 1).then(|| (certifies, Some(next.clone())))
            }
            _ => Some((certifies, None)),
        }
    }

    /// After `next` took force.
    pub fn advanced(&self, next: ValidatorSet) -> InForce {
        InForce {
            prior: self.current.clone(),
            current: Some(next),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keyring;

    fn ids(n: usize) -> Vec<FacilityId> {
        ["alpha", "bravo", "charlie", "delta", "echo"][..n]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect()
    }

    fn genesis() -> ValidatorSet {
        let rings = Keyring::deterministic(&ids(3), 1);
        ValidatorSet::genesis(rings[&ids(3)[0]].public().clone())
    }

    fn key_of(f: &FacilityId, seed: u64) -> VoteKey {
        let rings = Keyring::deterministic(std::slice::from_ref(f), seed);
        VoteKey::from(rings[f].public().get(f).unwrap())
    }

    #[test]
    fn add_rotate_remove_each_make_the_next_epoch() {
        let g = genesis();
        let d = ids(5)[3].clone();
        let add = ValidatorChange {
            facility: d.clone(),
            key: Some(key_of(&d, 7)),
        };
        let s1 = g.change(&add, 10).unwrap();
        assert_eq!((s1.number, s1.from_height, s1.keys().len()), (1, 11, 4));
        let rot = ValidatorChange {
            facility: ids(3)[0].clone(),
            key: Some(key_of(&ids(3)[0], 9)),
        };
        let s2 = s1.change(&rot, 20).unwrap();
        assert_eq!((s2.number, s2.keys().len()), (2, 4));
        assert_ne!(s2.keys().get(&ids(3)[0]), s1.keys().get(&ids(3)[0]));
        let rm = ValidatorChange {
            facility: d.clone(),
            key: None,
        };
        let s3 = s2.change(&rm, 30).unwrap();
        assert_eq!(s3.keys().len(), 3);
        let mut h = Epochs::new(g.clone());
        for s in [&s1, &s2, &s3] {
            assert!(h.insert(Arc::new(s.clone())).unwrap());
        }
        assert_eq!(h.at(1).number, 0);
        assert_eq!(h.at(10).number, 0);
        assert_eq!(h.at(11).number, 1);
        assert_eq!(h.at(21).number, 2);
        assert_eq!(h.at(10_000).number, 3);
        assert!(!h.insert(Arc::new(s1.clone())).unwrap(), "again: no change");
        let other = s1.change(&rm, 10).unwrap();
        assert!(
            h.insert(Arc::new(other)).is_err(),
            "another set at a taken height"
        );
    }

    #[test]
    fn bad_changes_are_refused_with_why() {
        let g = genesis();
        let a = ids(3)[0].clone();
        let b_key = VoteKey::from(g.keys().get(&ids(3)[1]).unwrap());
        let taken = ValidatorChange {
            facility: a.clone(),
            key: Some(b_key),
        };
        assert!(g
            .change(&taken, 1)
            .unwrap_err()
            .contains("holds that vote key"));
        let same = ValidatorChange {
            facility: a.clone(),
            key: Some(VoteKey::from(g.keys().get(&a).unwrap())),
        };
        assert!(g.change(&same, 1).unwrap_err().contains("already holds"));
        let nobody = ValidatorChange {
            facility: ids(5)[4].clone(),
            key: None,
        };
        assert!(g
            .change(&nobody, 1)
            .unwrap_err()
            .contains("not a validator"));
        // The identity point is small-order: weak.
        let mut weak = [0u8; 32];
        weak[0] = 1;
        let weak = ValidatorChange {
            facility: a.clone(),
            key: Some(VoteKey(weak)),
        };
        assert!(g.change(&weak, 1).is_err());
        let mut one =
            ValidatorSet::genesis(PublicKeys::new([(a.clone(), *g.keys().get(&a).unwrap())]));
        one.number = 3;
        let last = ValidatorChange {
            facility: a,
            key: None,
        };
        assert!(one.change(&last, 1).unwrap_err().contains("last validator"));
    }

    #[test]
    fn a_set_grows_to_its_cap_and_no_further() {
        let mut s = genesis();
        let mut n = 0u64;
        while s.keys().len() < SIGNERS_MAX {
            let f: FacilityId = format!("f{n}").parse().unwrap();
            let c = ValidatorChange {
                facility: f.clone(),
                key: Some(key_of(&f, 100 + n)),
            };
            s = s.change(&c, n + 1).unwrap();
            n += 1;
        }
        let f: FacilityId = "onemore".parse().unwrap();
        let c = ValidatorChange {
            facility: f.clone(),
            key: Some(key_of(&f, 1)),
        };
        assert!(s.change(&c, 999).unwrap_err().contains("at most"));
        let bytes = bulwark_storage::codec::encode(&s).unwrap();
        let back: ValidatorSet = bulwark_storage::codec::decode(&bytes).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn a_proposal_is_checked_under_the_set_after_its_anchor() {
        let g = genesis();
        let d = ids(5)[3].clone();
        let s1 = g
            .change(
                &ValidatorChange {
                    facility: d.clone(),
                    key: Some(key_of(&d, 7)),
                },
                10,
            )
            .unwrap();
        let f = InForce::default().advanced(s1.clone());
        assert_eq!(f.for_anchor(&g, 10).unwrap().number, 1);
        assert_eq!(f.for_anchor(&g, 9).unwrap().number, 0);
        let s2 = s1
            .change(
                &ValidatorChange {
                    facility: d,
                    key: None,
                },
                20,
            )
            .unwrap();
        let f = f.advanced(s2);
        assert_eq!(f.for_anchor(&g, 25).unwrap().number, 2);
        assert_eq!(f.for_anchor(&g, 15).unwrap().number, 1);
        assert!(f.for_anchor(&g, 5).is_none(), "two epochs back");
    }
}
