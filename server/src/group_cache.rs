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
//!   (`generation`);
//! - a membership is used for at most [`LIFETIME`] after its read began (past half of
//!   that, one sender has it read again, in the background), and a change
//!   that could not fence every live server (one not linked, or not answering in time)
//!   waits that long before it is answered: whatever was read before the change has
//!   expired everywhere by then.

use fastchat_sql::GroupInfo;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Groups held at most; past that the cache starts again empty.
const MAX_GROUPS: usize = 10_000;

/// How long a membership read from the database may be used, from when the read began.
pub const LIFETIME: Duration = Duration::from_secs(1);

/// One group's membership at one epoch.
#[derive(Debug, PartialEq, Eq)]
pub struct Membership {
    /// The epoch it is valid for.
    pub epoch: i64,
    /// The members' names.
    pub members: Vec<String>,
}

/// A membership, when the read that found it began, and whether a sender is reading
/// it again already.
struct Entry {
    membership: Arc<Membership>,
    read_at: Instant,
    /// When (milliseconds after `read_at`, plus one; 0: never) a caller last took on
    /// reading it again. A read that fails or is dropped leaves no fill behind, so the
    /// claim lapses after [`REFRESH_RETRY`] and another caller takes it on.
    refresh_claimed: AtomicU64,
}

/// How long one caller's claim to refresh an entry stands.
const REFRESH_RETRY: Duration = Duration::from_millis(100);

impl Entry {
    /// Whether this caller, at `age`, is the one to read the entry again: nobody has
    /// claimed it, or the last claim lapsed.
    fn claim_refresh(&self, age: Duration) -> bool {
        let now = age.as_millis() as u64 + 1;
        let last = self.refresh_claimed.load(Ordering::Acquire);
        (last == 0 || now >= last + REFRESH_RETRY.as_millis() as u64)
            && self
                .refresh_claimed
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }
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

/// A cached membership, for one caller.
pub struct Cached {
    /// The membership.
    pub membership: Arc<Membership>,
    /// Whether this caller is to have it read again: it is past half its lifetime, and
    /// nobody else has taken that on.
    pub refresh: bool,
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
    groups: HashMap<String, Entry>,
}

/// A read of the database under way: [`GroupCache::miss`] makes one, and
/// [`GroupCache::fill`] keeps what the read gave unless something changed meanwhile.
#[derive(Debug)]
pub struct Miss {
    generation: u64,
    read_at: Instant,
}

impl GroupCache {
    /// The cached membership of `group` if it is still young enough, else `None`: read
    /// it again (see [`GroupCache::miss`]). Past half its lifetime, one caller is told to
    /// have it read again (`refresh`) while every caller still uses it: when every entry
    /// simply expired, every sender to the group at that moment read the database at
    /// once, and at 2,000 group messages/s the pool ran dry again.
    pub fn get(&self, group: &str) -> Option<Cached> {
        let now = Instant::now();
        let inner = self.inner.read();
        let e = inner.groups.get(group)?;
        let age = now.duration_since(e.read_at);
        if age >= LIFETIME {
            return None;
        }
        Some(Cached {
            membership: e.membership.clone(),
            refresh: age >= LIFETIME / 2 && e.claim_refresh(age),
        })
    }

    /// A [`Miss`] for a read beginning now (when [`GroupCache::get`] gave nothing, or
    /// what it gave cannot answer: another epoch, another sender).
    pub fn miss(&self) -> Miss {
        Miss {
            generation: self.inner.read().generation,
            read_at: Instant::now(),
        }
    }

    /// Keeps `membership`, read from the database since `miss` was made, unless
    /// something was forgotten since.
    pub fn fill(&self, miss: Miss, group: &str, membership: Arc<Membership>) {
        let mut inner = self.inner.write();
        if inner.generation != miss.generation {
            return;
        }
        if inner.groups.len() >= MAX_GROUPS && !inner.groups.contains_key(group) {
            inner.groups.clear();
        }
        inner.groups.insert(
            group.to_string(),
            Entry {
                membership,
                read_at: miss.read_at,
                refresh_claimed: AtomicU64::new(0),
            },
        );
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

    /// The [`Miss`] of a caller whose `get` gave nothing.
    fn missed(cache: &GroupCache, group: &str) -> Miss {
        assert!(cache.get(group).is_none(), "{group} is not to be used");
        cache.miss()
    }

    /// A cache holding "g", read `age` ago.
    fn filled_ago(age: Duration) -> GroupCache {
        let cache = GroupCache::default();
        let mut miss = missed(&cache, "g");
        miss.read_at -= age;
        cache.fill(miss, "g", membership(1, &["a"]));
        cache
    }

    #[test]
    fn a_read_that_began_before_a_change_is_not_kept() {
        let cache = GroupCache::default();
        let miss = missed(&cache, "g");
        // The read is under way when the group changes.
        cache.forget("g");
        cache.fill(miss, "g", membership(1, &["a", "b"]));
        assert!(cache.get("g").is_none());

        let miss = missed(&cache, "g");
        cache.fill(miss, "g", membership(2, &["a"]));
        assert_eq!(cache.get("g").unwrap().membership.epoch, 2);
    }

    #[test]
    fn forgetting_one_or_all() {
        let cache = GroupCache::default();
        for g in ["g", "h"] {
            let miss = missed(&cache, g);
            cache.fill(miss, g, membership(1, &["a"]));
        }
        cache.forget("g");
        assert!(cache.get("g").is_none());
        assert!(cache.get("h").unwrap().membership.has("a"));
        assert!(!cache.get("h").unwrap().membership.has("b"));
        cache.forget_all();
        assert!(cache.get("h").is_none());
    }

    /// Whether `get` gives the entry, and tells this caller to have it read again.
    fn refresh_due(cache: &GroupCache) -> bool {
        cache.get("g").expect("still usable").refresh
    }

    #[test]
    fn past_half_its_lifetime_one_caller_has_it_read_again_and_all_still_use_it() {
        let cache = filled_ago(LIFETIME / 2 - Duration::from_millis(50));
        assert!(!refresh_due(&cache), "young: nobody reads it again");
        let cache = filled_ago(LIFETIME / 2);
        let refresh = cache.miss();
        assert!(refresh_due(&cache));
        assert!(!refresh_due(&cache), "someone is reading it again already");
        cache.fill(refresh, "g", membership(1, &["a"]));
        assert!(!refresh_due(&cache), "young again");
    }

    #[test]
    fn a_refresh_that_never_came_back_is_taken_on_by_another_caller() {
        let cache = filled_ago(LIFETIME / 2);
        // This caller's read fails: it never fills.
        assert!(refresh_due(&cache));
        assert!(!refresh_due(&cache), "the claim stands for a while");
        // Its claim is now older than REFRESH_RETRY (moved back rather than waited for).
        let backdated = LIFETIME.as_millis() as u64 / 2 - REFRESH_RETRY.as_millis() as u64;
        cache.inner.read().groups["g"]
            .refresh_claimed
            .store(backdated, Ordering::Release);
        assert!(refresh_due(&cache), "then another caller takes it on");
        assert!(!refresh_due(&cache), "one at a time");
    }

    #[test]
    fn a_membership_expires_a_lifetime_after_its_read_began() {
        let cache = filled_ago(LIFETIME);
        assert!(cache.get("g").is_none());
    }
}
