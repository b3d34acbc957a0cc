//! Resource pools (bulkheads for people): named pools with a capacity and
//! a reserved minimum, and a shared flex pool.
//!
//! A pool serves a request from its own free units first, then borrows
//! from the flex pool, then from other pools' idle units above their
//! reserve, up to its borrow limit. A protected pool never borrows and
//! never lends. A pool's reserve is never lent, so it can always get its
//! reserved units back for its own requests. Sans-IO.

use std::collections::BTreeMap;

/// One pool's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    /// Units the pool owns.
    pub capacity: u32,
    /// Units never lent to other pools.
    pub reserved: u32,
    /// Most units it may borrow (flex and other pools together).
    pub borrow_limit: u32,
    /// Never borrows, never lends.
    pub protected: bool,
}

/// The name of the shared pool.
pub const FLEX: &str = "flex";

/// Why a request was refused: names the pool and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// No such pool.
    #[error("no pool named {0}")]
    Unknown(String),
    /// Not enough units anywhere it may draw from.
    #[error("pool {pool} is exhausted: {wanted} wanted, {own_free} free of its own, {borrowable} borrowable")]
    Exhausted {
        /// The pool.
        pool: String,
        /// Units asked for.
        wanted: u32,
        /// Its own free units.
        own_free: u32,
        /// What it could still borrow.
        borrowable: u32,
    },
    /// The settings are inconsistent.
    #[error("pool {pool}: {reason}")]
    Invalid {
        /// The pool.
        pool: String,
        /// What is wrong.
        reason: String,
    },
}

/// Units held by one request; give them back with [`Pools::release`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "release the lease"]
pub struct Lease {
    pool: String,
    own: u32,
    flex: u32,
    lent_by: Vec<(String, u32)>,
}

impl Lease {
    /// Units in the lease.
    pub fn units(&self) -> u32 {
        self.own + self.flex + self.lent_by.iter().map(|(_, n)| n).sum::<u32>()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct PoolState {
    /// Own units in use by its own requests.
    used: u32,
    /// Own units lent to other pools.
    lent: u32,
    /// Units borrowed (flex and others).
    borrowed: u32,
    rejections: u64,
}

/// One pool's status.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolStatus {
    /// Name.
    pub name: String,
    /// Units owned.
    pub capacity: u32,
    /// Units never lent.
    pub reserved: u32,
    /// Units in use by its requests (own and borrowed).
    pub allocated: u32,
    /// Units borrowed from flex or other pools.
    pub borrowed: u32,
    /// Own units lent out.
    pub lent: u32,
    /// allocated / capacity.
    pub utilization: f64,
    /// Requests refused.
    pub rejections: u64,
}

/// The pools. See the module docs.
#[derive(Debug, Clone)]
pub struct Pools {
    specs: BTreeMap<String, PoolSpec>,
    state: BTreeMap<String, PoolState>,
    flex_capacity: u32,
    flex_used: u32,
}

impl Pools {
    /// Pools from `specs` and a flex pool of `flex` units.
    pub fn new(specs: BTreeMap<String, PoolSpec>, flex: u32) -> Result<Pools, PoolError> {
        for (name, s) in &specs {
            let invalid = |reason: &str| PoolError::Invalid {
                pool: name.clone(),
                reason: reason.into(),
            };
            if name == FLEX {
                return Err(invalid("the name flex is the shared pool's"));
            }
            if s.reserved > s.capacity {
                return Err(invalid("reserved exceeds capacity"));
            }
            if s.protected && s.borrow_limit > 0 {
                return Err(invalid("a protected pool never borrows"));
            }
        }
        let state = specs
            .keys()
            .map(|k| (k.clone(), PoolState::default()))
            .collect();
        Ok(Pools {
            specs,
            state,
            flex_capacity: flex,
            flex_used: 0,
        })
    }

    /// The default split of `total` faculty: 90% into pools (ICU 30%,
    /// clinic 40%, procedures 20%, call 10%), 10% into flex. Call is fully
    /// reserved and protected; the others reserve half their capacity and
    /// may borrow up to half of it.
    pub fn default_split(total: u32) -> Pools {
        let pooled = total * 9 / 10;
        let part = |pct: u32| pooled * pct / 100;
        let (icu, clinic, procedures) = (part(30), part(40), part(20));
        let call = pooled - icu - clinic - procedures;
        let open = |capacity: u32| PoolSpec {
            capacity,
            reserved: capacity / 2,
            borrow_limit: capacity / 2,
            protected: false,
        };
        let specs = BTreeMap::from([
            ("icu".to_string(), open(icu)),
            ("clinic".to_string(), open(clinic)),
            ("procedures".to_string(), open(procedures)),
            (
                "call".to_string(),
                PoolSpec {
                    capacity: call,
                    reserved: call,
                    borrow_limit: 0,
                    protected: true,
                },
            ),
        ]);
        Pools::new(specs, total - pooled).expect("the default split is valid")
    }

    /// Takes `n` units for a request of `pool`.
    pub fn acquire(&mut self, pool: &str, n: u32) -> Result<Lease, PoolError> {
        let spec = self
            .specs
            .get(pool)
            .ok_or_else(|| PoolError::Unknown(pool.to_string()))?
            .clone();
        let st = self.state.get(pool).expect("state per spec").clone();
        let own_free = spec.capacity - st.used - st.lent;
        let own = own_free.min(n);
        let mut need = n - own;
        let mut flex = 0;
        let mut lent_by = Vec::new();
        if need > 0 && !spec.protected {
            let mut budget = spec.borrow_limit - st.borrowed.min(spec.borrow_limit);
            flex = need.min(budget).min(self.flex_capacity - self.flex_used);
            need -= flex;
            budget -= flex;
            for (other, ospec) in &self.specs {
                if need == 0 || budget == 0 {
                    break;
                }
                if other == pool || ospec.protected {
                    continue;
                }
                let ost = &self.state[other];
                let reserved = if crate::plant::active(crate::plant::Bug::ReserveLent) {
                    0
                } else {
                    ospec.reserved
                };
                // Idle units above the reserve: the reserve is never lent.
                let lendable = ospec
                    .capacity
                    .saturating_sub(reserved)
                    .saturating_sub(ost.lent)
                    .min(ospec.capacity - ost.used - ost.lent);
                let take = lendable.min(need).min(budget);
                if take > 0 {
                    lent_by.push((other.clone(), take));
                    need -= take;
                    budget -= take;
                }
            }
        }
        if need > 0 {
            let borrowable = n - own;
            self.state.get_mut(pool).expect("state").rejections += 1;
            return Err(PoolError::Exhausted {
                pool: pool.to_string(),
                wanted: n,
                own_free,
                borrowable: borrowable - need,
            });
        }
        let borrowed = flex + lent_by.iter().map(|(_, k)| k).sum::<u32>();
        {
            let st = self.state.get_mut(pool).expect("state");
            st.used += own;
            st.borrowed += borrowed;
        }
        self.flex_used += flex;
        for (other, k) in &lent_by {
            self.state.get_mut(other).expect("state").lent += k;
        }
        Ok(Lease {
            pool: pool.to_string(),
            own,
            flex,
            lent_by,
        })
    }

    /// Gives a lease's units back where they came from.
    pub fn release(&mut self, lease: Lease) {
        let borrowed = lease.flex + lease.lent_by.iter().map(|(_, k)| k).sum::<u32>();
        let st = self
            .state
            .get_mut(&lease.pool)
            .expect("lease from these pools");
        st.used -= lease.own;
        st.borrowed -= borrowed;
        self.flex_used -= lease.flex;
        for (other, k) in lease.lent_by {
            self.state.get_mut(&other).expect("state").lent -= k;
        }
    }

    /// Every pool's status, then the flex pool's.
    pub fn status(&self) -> Vec<PoolStatus> {
        let mut out: Vec<PoolStatus> = self
            .specs
            .iter()
            .map(|(name, spec)| {
                let st = &self.state[name];
                let allocated = st.used + st.borrowed;
                PoolStatus {
                    name: name.clone(),
                    capacity: spec.capacity,
                    reserved: spec.reserved,
                    allocated,
                    borrowed: st.borrowed,
                    lent: st.lent,
                    utilization: if spec.capacity == 0 {
                        0.0
                    } else {
                        f64::from(allocated) / f64::from(spec.capacity)
                    },
                    rejections: st.rejections,
                }
            })
            .collect();
        out.push(PoolStatus {
            name: FLEX.into(),
            capacity: self.flex_capacity,
            reserved: 0,
            allocated: self.flex_used,
            borrowed: 0,
            lent: self.flex_used,
            utilization: if self.flex_capacity == 0 {
                0.0
            } else {
                f64::from(self.flex_used) / f64::from(self.flex_capacity)
            },
            rejections: 0,
        });
        out
    }

    /// Checks the invariants: no pool lends into its reserve or beyond its
    /// idle units, borrows beyond its limit, or a protected pool lends or
    /// borrows; flex is within its capacity. `Err` names the broken one.
    pub fn check(&self) -> Result<(), String> {
        for (name, spec) in &self.specs {
            let st = &self.state[name];
            if st.lent > spec.capacity - spec.reserved {
                return Err(format!("{name} lent {} of its reserve", st.lent));
            }
            if st.used + st.lent > spec.capacity {
                return Err(format!("{name} has more in use and lent than it owns"));
            }
            if st.borrowed > spec.borrow_limit {
                return Err(format!("{name} borrowed beyond its limit"));
            }
            if spec.protected && (st.lent > 0 || st.borrowed > 0) {
                return Err(format!("protected {name} lent or borrowed"));
            }
        }
        if self.flex_used > self.flex_capacity {
            return Err("flex over capacity".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_default_split_follows_the_seed() {
        let p = Pools::default_split(100);
        let st = p.status();
        let cap = |n: &str| st.iter().find(|s| s.name == n).unwrap().capacity;
        assert_eq!(
            (
                cap("icu"),
                cap("clinic"),
                cap("procedures"),
                cap("call"),
                cap("flex")
            ),
            (27, 36, 18, 9, 10)
        );
        let call = st.iter().find(|s| s.name == "call").unwrap();
        assert_eq!(call.reserved, 9);
    }

    #[test]
    fn own_then_flex_then_others_then_a_named_refusal() {
        let mut p = Pools::default_split(100);
        let a = p.acquire("icu", 27).unwrap();
        // Borrow limit 13: flex has 10, then 3 from another pool.
        let b = p.acquire("icu", 13).unwrap();
        assert_eq!(b.units(), 13);
        assert_eq!(b.flex, 10);
        match p.acquire("icu", 1) {
            Err(PoolError::Exhausted { pool, .. }) => assert_eq!(pool, "icu"),
            other => panic!("{other:?}"),
        }
        // Call never borrows: its 9 and no more.
        let c = p.acquire("call", 9).unwrap();
        assert!(p.acquire("call", 1).is_err());
        p.check().unwrap();
        p.release(b);
        p.release(a);
        p.release(c);
        assert!(p.status().iter().all(|s| s.allocated == 0 && s.lent == 0));
        assert!(matches!(p.acquire("er", 1), Err(PoolError::Unknown(_))));
    }

    /// The checker the property relies on fails on the bug it guards
    /// against: a pool that lent into its reserve (planted by hand).
    #[test]
    fn the_invariant_check_catches_a_lent_reserve() {
        let mut p = Pools::default_split(100);
        p.check().unwrap();
        let icu = p.state.get_mut("icu").unwrap();
        icu.lent = 27 - 13 + 1;
        let err = p.check().unwrap_err();
        assert!(err.contains("icu lent"), "{err}");
    }

    proptest! {
        /// Whatever is acquired and released in whatever order, a reserve
        /// is never lent (and every other pool invariant holds).
        #[test]
        fn a_bulkhead_reserve_is_never_lent(
            ops in proptest::collection::vec((0usize..4, 1u32..12, any::<bool>()), 1..200),
        ) {
            let names = ["icu", "clinic", "procedures", "call"];
            let mut p = Pools::default_split(60);
            let mut leases: Vec<Lease> = Vec::new();
            for (pool, n, release) in ops {
                if release && !leases.is_empty() {
                    let l = leases.remove(n as usize % leases.len());
                    p.release(l);
                } else if let Ok(l) = p.acquire(names[pool], n) {
                    leases.push(l);
                }
                prop_assert_eq!(p.check(), Ok(()));
                // A pool with nothing of its own in use can always get its
                // reserve back.
                for name in names {
                    let st = p.status().into_iter().find(|s| s.name == name).unwrap();
                    prop_assert!(st.capacity - st.lent >= st.reserved);
                }
            }
        }
    }
}
