//! Group requests: membership changes (with events to the members online anywhere),
//! listings, key records, and group messages fanned out to every other member, each
//! copy delivered live or stored like a direct message.

use crate::group_cache::{Membership, LIFETIME};
use crate::notify::notify;
use crate::reply::{GroupReply, ReplyTo};
use crate::session::{refuse, store_refusal, Refusal};
use crate::session_handle::SessionHandle;
use crate::state::{ServerState, LINK_WAIT};
use crossbeam_channel::Receiver;
use fastchat_common::e2e::GroupKeyRecord;
use fastchat_common::names::is_valid_name;
use fastchat_common::protocol::client::{GroupMember, GroupSummary, OkResult, ServerFrame};
use fastchat_common::protocol::now_millis;
use fastchat_common::protocol::peer::PeerFrame;
use fastchat_common::{Blob, ErrorCode};
use fastchat_sql::{GroupError, GroupInfo, GroupRefusal, NewPending};
use std::sync::{Arc, Weak};
use std::time::Instant;

/// Longest group key record accepted (JSON; a wrapped copy per member).
const MAX_RECORD_PER_MEMBER: usize = 1024;

fn group_refusal(e: GroupError) -> Refusal {
    let (code, message) = match e {
        GroupError::Store(e) => return store_refusal(e),
        GroupError::Refused(GroupRefusal::NameTaken) => {
            (ErrorCode::NameTaken, "that group name is taken")
        }
        GroupError::Refused(GroupRefusal::UnknownGroup) => {
            (ErrorCode::UnknownGroup, "no such group")
        }
        GroupError::Refused(GroupRefusal::UnknownUser) => (ErrorCode::UnknownUser, "no such user"),
        GroupError::Refused(GroupRefusal::NotMember) => {
            (ErrorCode::NotMember, "not a member of that group")
        }
        GroupError::Refused(GroupRefusal::NotAdmin) => {
            (ErrorCode::NotAdmin, "only the group's admin can do that")
        }
        GroupError::Refused(GroupRefusal::AlreadyMember) => {
            (ErrorCode::AlreadyMember, "already a member")
        }
        GroupError::Refused(GroupRefusal::GroupFull) => (ErrorCode::GroupFull, "the group is full"),
    };
    (code, message.to_string())
}

fn check_name(group: &str) -> Result<(), Refusal> {
    if is_valid_name(group) {
        Ok(())
    } else {
        refuse(ErrorCode::UnknownGroup, "no such group")
    }
}

/// A name that is not a valid user name is no user's (nor a text PostgreSQL would
/// refuse, such as one with a NUL byte).
fn check_user(user: &str) -> Result<(), Refusal> {
    if is_valid_name(user) {
        Ok(())
    } else {
        refuse(ErrorCode::UnknownUser, format!("no user named {user:?}"))
    }
}

fn max_size(state: &ServerState) -> usize {
    state.config.max_group_size as usize
}

/// The `group` result for a group.
pub fn group_result(group: &GroupInfo) -> OkResult {
    OkResult::Group {
        group: group.name.clone(),
        epoch: group.epoch as u64,
        members: group
            .members
            .iter()
            .map(|(user, admin)| GroupMember {
                user: user.clone(),
                admin: *admin,
            })
            .collect(),
    }
}

/// Tells every member in `members` who is online, here or on a peer, about a change.
fn announce(
    state: &ServerState,
    members: &[String],
    group: &str,
    change: &str,
    user: &str,
    epoch: i64,
) {
    let frame = ServerFrame::Group {
        group: group.to_string(),
        change: change.to_string(),
        user: user.to_string(),
        epoch: epoch as u64,
    };
    notify(state, members, &frame);
}

/// After a membership change is committed (or may have been), before it is announced
/// or answered: every server forgets what it cached of the group (see
/// `group_cache.rs`). When some live server cannot be told (no link to it, or no answer
/// to the fence in time), this waits until what it may have read before the change has
/// expired.
fn forget_everywhere(state: &ServerState, group: &str) {
    let committed = Instant::now();
    state.group_cache.forget(group);
    let changed = PeerFrame::GroupChanged {
        group: group.to_string(),
    };
    for link in state.router.peers() {
        link.send(&changed, LINK_WAIT);
    }
    let told = crate::session::fence_peers(state);
    let untold = state
        .live_servers
        .read()
        .iter()
        .filter(|s| !told.contains(*s))
        .count();
    if untold > 0 {
        log::info!("{group}: {untold} live servers not told of the change; waiting out the cache");
        std::thread::sleep(LIFETIME.saturating_sub(committed.elapsed()));
    }
}

/// A change's outcome, after forgetting the group everywhere unless it was refused
/// outright (a database failure may have come after the commit).
fn forgotten<T>(
    state: &ServerState,
    group: &str,
    outcome: Result<T, GroupError>,
) -> Result<T, GroupError> {
    if !matches!(outcome, Err(GroupError::Refused(_))) {
        forget_everywhere(state, group);
    }
    outcome
}

fn names(group: &GroupInfo) -> Vec<String> {
    group.members.iter().map(|(m, _)| m.clone()).collect()
}

/// `group_create`.
pub fn create(
    state: &ServerState,
    me: &str,
    group: &str,
    members: &[String],
) -> Result<OkResult, Refusal> {
    if !is_valid_name(group) {
        return refuse(
            ErrorCode::BadName,
            "a group name is 1-32 letters, digits, '_', '-' or '.'",
        );
    }
    members.iter().try_for_each(|m| check_user(m))?;
    let mut db = state.pool.get().map_err(|e| store_refusal(e.into()))?;
    let outcome = fastchat_sql::create_group(&mut db, group, me, members, max_size(state));
    drop(db);
    // A group of this name may have been deleted and cached before.
    let info = forgotten(state, group, outcome).map_err(group_refusal)?;
    for (member, _) in &info.members {
        let change = if member == me { "created" } else { "added" };
        announce(state, &names(&info), group, change, member, info.epoch);
    }
    Ok(group_result(&info))
}

/// `group_add`.
pub fn add(state: &ServerState, me: &str, group: &str, user: &str) -> Result<OkResult, Refusal> {
    check_name(group)?;
    check_user(user)?;
    let mut db = state.pool.get().map_err(|e| store_refusal(e.into()))?;
    let outcome = fastchat_sql::add_member(&mut db, group, me, user, max_size(state));
    drop(db);
    let info = forgotten(state, group, outcome).map_err(group_refusal)?;
    announce(state, &names(&info), group, "added", user, info.epoch);
    Ok(group_result(&info))
}

/// `group_remove` (by the admin) and `group_leave` (`user == me`).
pub fn remove(
    state: &ServerState,
    me: &str,
    group: &str,
    user: &str,
) -> Result<Option<OkResult>, Refusal> {
    check_name(group)?;
    let mut db = state.pool.get().map_err(|e| store_refusal(e.into()))?;
    let outcome = fastchat_sql::remove_member(&mut db, group, me, user);
    drop(db);
    let change = forgotten(state, group, outcome).map_err(group_refusal)?;
    let what = if me == user { "left" } else { "removed" };
    if let Some(info) = &change.group {
        // The one who went hears of it too.
        let mut told = names(info);
        told.push(user.to_string());
        announce(state, &told, group, what, user, info.epoch);
        if let Some(admin) = &change.new_admin {
            announce(state, &names(info), group, "admin", admin, info.epoch);
        }
    }
    Ok(if me == user {
        None
    } else {
        change.group.as_ref().map(group_result)
    })
}

/// `group_members`.
pub fn members(state: &ServerState, me: &str, group: &str) -> Result<OkResult, Refusal> {
    check_name(group)?;
    let mut db = state.pool.get().map_err(|e| store_refusal(e.into()))?;
    let info = fastchat_sql::group_info(&mut db, group, me).map_err(group_refusal)?;
    Ok(group_result(&info))
}

/// `groups`.
pub fn list(state: &ServerState, me: &str) -> Result<OkResult, Refusal> {
    let mut db = state.pool.get().map_err(|e| store_refusal(e.into()))?;
    let groups = fastchat_sql::groups_of(&mut db, me).map_err(store_refusal)?;
    Ok(OkResult::Groups {
        groups: groups
            .into_iter()
            .map(|(group, epoch, admin)| GroupSummary {
                group,
                epoch: epoch as u64,
                admin,
            })
            .collect(),
    })
}

/// `group_key`: a record of an epoch, storing `offer` first for the current epoch.
pub fn key(
    state: &ServerState,
    me: &str,
    group: &str,
    epoch: Option<u64>,
    offer: Option<&GroupKeyRecord>,
) -> Result<OkResult, Refusal> {
    check_name(group)?;
    let offer_text = match offer {
        Some(record) => {
            if record.group != group || record.maker != me {
                return refuse(
                    ErrorCode::BadRequest,
                    "offer: not this group's, or not made by you",
                );
            }
            let text = serde_json::to_string(record).expect("records serialize");
            if text.len() > MAX_RECORD_PER_MEMBER * max_size(state).max(1) {
                return refuse(ErrorCode::BadRequest, "offer: too large");
            }
            Some((record.epoch as i64, text))
        }
        None => None,
    };
    let mut db = state.pool.get().map_err(|e| store_refusal(e.into()))?;
    let (epoch, record) = fastchat_sql::group_key(
        &mut db,
        group,
        me,
        epoch.map(|e| e as i64),
        offer_text.as_ref().map(|(e, t)| (*e, t.as_str())),
    )
    .map_err(group_refusal)?;
    match record.and_then(|text| serde_json::from_str::<GroupKeyRecord>(&text).ok()) {
        Some(record) => Ok(OkResult::GroupKey {
            epoch: epoch as u64,
            record,
        }),
        None => refuse(
            ErrorCode::UnknownKey,
            format!("no key for epoch {epoch} yet"),
        ),
    }
}

/// `group_send`: one copy per other member, each routed like a direct message; the
/// sender is answered once every copy is delivered or stored.
pub fn send(
    state: &ServerState,
    session: &SessionHandle,
    req: u64,
    id: String,
    group: &str,
    epoch: u64,
    body: Blob,
) -> Result<(), Refusal> {
    check_name(group)?;
    let cached = state.group_cache.get(group);
    if cached.as_ref().is_some_and(|c| c.refresh) {
        // Read again off this thread: a sender waiting for the database here held up
        // its own next messages for as long as a busy database took to answer.
        // A full queue drops the request; the claim lapses and a later sender retries.
        let _ = state.group_refresh.try_send(group.to_string());
    }
    let info = match cached.map(|c| c.membership) {
        // The cache answers only what it can answer exactly; anything else (a stale
        // epoch, not a member, unknown) is read again, and refused as before.
        Some(cached) if cached.epoch as u64 == epoch && cached.has(session.user()) => cached,
        _ => match read_membership(state, group).map_err(store_refusal)? {
            Some(read) if read.has(session.user()) => read,
            Some(_) => return Err(group_refusal(GroupError::Refused(GroupRefusal::NotMember))),
            None => {
                return Err(group_refusal(GroupError::Refused(
                    GroupRefusal::UnknownGroup,
                )))
            }
        },
    };
    if info.epoch as u64 != epoch {
        return refuse(
            ErrorCode::StaleEpoch,
            format!(
                "the group is at epoch {}; seal the message with its key",
                info.epoch
            ),
        );
    }
    let sent_at = now_millis();
    let others: Vec<&String> = info
        .members
        .iter()
        .filter(|m| m.as_str() != session.user())
        .collect();
    let reply = GroupReply::new(
        session.clone(),
        group,
        req,
        id.clone(),
        sent_at,
        others.len(),
    );
    // Every member's copy shares these.
    let sender: Arc<str> = session.user().into();
    let id: Arc<str> = id.into();
    let group: Arc<str> = group.into();
    for member in others {
        let message = NewPending {
            recipient: member.clone(),
            sender: sender.clone(),
            msg_id: id.clone(),
            body: body.clone(),
            sent_at,
            order_key: state.next_order_key(),
            group: Some(group.clone()),
        };
        state.route_message(ReplyTo::Group(reply.clone()), message);
    }
    Ok(())
}

/// Reads `group`'s membership from the database and keeps it in the cache unless the
/// group changed meanwhile; `None` when there is no such group.
fn read_membership(
    state: &ServerState,
    group: &str,
) -> Result<Option<Arc<Membership>>, fastchat_sql::StoreError> {
    let mut db = state.pool.get()?;
    // The read begins now, not before the wait for a connection: under load that wait
    // alone could outlast the cache's lifetime.
    let miss = state.group_cache.miss();
    let Some(info) = fastchat_sql::group_membership(&mut db, group)? else {
        return Ok(None);
    };
    drop(db);
    let membership = Arc::new(Membership::from(&info));
    state.group_cache.fill(miss, group, membership.clone());
    Ok(Some(membership))
}

/// The `group-refresh` thread: reads again the memberships that [`GroupCache::get`]
/// (`refresh`) asked for. A group gone meanwhile is left to expire: a sender then reads
/// it and is refused.
///
/// [`GroupCache::get`]: crate::group_cache::GroupCache::get
pub fn run_refresher(state: Weak<ServerState>, groups: Receiver<String>) {
    while let Ok(group) = groups.recv() {
        let Some(state) = state.upgrade() else {
            return;
        };
        if let Err(e) = read_membership(&state, &group) {
            log::debug!("group {group} not read again ({e}); a sender will retry");
        }
    }
}
