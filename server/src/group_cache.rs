//! Group memberships as `group_send` needs them (epoch and members), kept in memory so
//! that a group message costs no database transaction. Under the `group` benchmark,
//! 2,000 group messages a second each read the membership in a transaction of four
//! round trips; the pool ran dry and hundreds of sends were refused `unavailable`.
//!
//! A cached membership must never outlive a change, or a message sealed under an old
//! epoch would reach a member removed since. So:
//!
//! - a change made here forgets the group here, tells every peer (`group_changed`) and
//!   waits for each to have read it (a fence) before the change is answered;
//! - a peer forgets the group when `group_changed` arrives; frames on a link are read
//!   in order, and a link that ends (or starts) makes this server forget every group,
//!   since it may have missed a change meanwhile;
//! - a membership read from the database before a change may come back after the change
//!   was forgotten: it is kept only if nothing was forgotten since the read began
//!   (`generation`).

use fastchat_sql::GroupInfo;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;

/// Groups held at most; past that the cache starts again empty.
const MAX_GROUPS: usize = 10_000;

/// One group's membership at one epoch.
#[derive(Debug, PartialEq, Eq)]
pub struct Membership {
    /// The epoch it is valid for.
    pub epoch: i64,
    /// The members' names.
    pub members: Vec<String>,
}

impl Membership {
    /// Whether `user` is a member.
    pub fn has(&self, user: &str) -> bool {
        self.members.iter().any(|m| m == user)
    }
}

impl From<&GroupInfo> for Membership {
    fn from(info: &GroupInfo) -> Membership {
        Membership {
            epoch: info.epoch,
            members: info.members.iter().map(|(m, _)| m.clone()).collect(),
        }
    }
}

/// The cache; see the module documentation for when it forgets.
#[derive(Default)]
pub struct GroupCache {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Advances with every forgetting.
    generation: u64,
    groups: HashMap<String, Arc<Membership>>,
}

impl GroupCache {
    /// The cached membership of `group`, if any, and the generation to pass to
    /// [`GroupCache::fill`] after reading it from the database instead.
    pub fn get(&self, group: &str) -> (Option<Arc<Membership>>, u64) {
        let inner = self.inner.read();
        (inner.groups.get(group).cloned(), inner.generation)
    }

    /// Keeps `membership`, read from the database after [`GroupCache::get`] returned
    /// `generation`, unless something was forgotten since.
    pub fn fill(&self, generation: u64, group: &str, membership: Arc<Membership>) {
        let mut inner = self.inner.write();
        if inner.generation != generation {
            return;
        }
        if inner.groups.len() >= MAX_GROUPS && !inner.groups.contains_key(group) {
            inner.groups.clear();
        }
        inner.groups.insert(group.to_string(), membership);
    }

    /// Forgets `group` (its membership changed).
    pub fn forget(&self, group: &str) {
        let mut inner = self.inner.write();
        inner.generation += 1;
        inner.groups.remove(group);
    }

    /// Forgets every group (a link started or ended: a change may have been missed).
    pub fn forget_all(&self) {
        let mut inner = self.inner.write();
        inner.generation += 1;
        inner.groups.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn membership(epoch: i64, members: &[&str]) -> Arc<Membership> {
        Arc::new(Membership {
            epoch,
            members: members.iter().map(|m| m.to_string()).collect(),
        })
    }

    #[test]
    fn a_read_that_began_before_a_change_is_not_kept() {
        let cache = GroupCache::default();
        let (none, generation) = cache.get("g");
        assert!(none.is_none());
        // The read is under way when the group changes.
        cache.forget("g");
        cache.fill(generation, "g", membership(1, &["a", "b"]));
        assert!(cache.get("g").0.is_none());

        let (_, generation) = cache.get("g");
        cache.fill(generation, "g", membership(2, &["a"]));
        let (kept, _) = cache.get("g");
        assert_eq!(kept.unwrap().epoch, 2);
    }

    #[test]
    fn forgetting_one_or_all() {
        let cache = GroupCache::default();
        for g in ["g", "h"] {
            let (_, generation) = cache.get(g);
            cache.fill(generation, g, membership(1, &["a"]));
        }
        cache.forget("g");
        assert!(cache.get("g").0.is_none());
        assert!(cache.get("h").0.unwrap().has("a"));
        assert!(!cache.get("h").0.unwrap().has("b"));
        cache.forget_all();
        assert!(cache.get("h").0.is_none());
    }
}
