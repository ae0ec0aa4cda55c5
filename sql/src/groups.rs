//! Groups: creation, membership changes (each in one transaction, with the group's row
//! locked, each advancing the key epoch), listings, and the per-epoch key records.

use crate::error::StoreError;
use postgres::error::SqlState;
use postgres::{GenericClient, Transaction};
use std::collections::HashSet;

/// Why a group operation was refused (each maps to a wire error code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupRefusal {
    /// The group name is taken.
    NameTaken,
    /// No such group.
    UnknownGroup,
    /// No such user.
    UnknownUser,
    /// The acting user (or the user named) is not a member.
    NotMember,
    /// Only the admin may do this.
    NotAdmin,
    /// The user is a member already.
    AlreadyMember,
    /// The group is at its size limit.
    GroupFull,
}

/// A refusal, or a database failure.
#[derive(Debug)]
pub enum GroupError {
    /// The request breaks a rule.
    Refused(GroupRefusal),
    /// The database failed.
    Store(StoreError),
}

impl From<postgres::Error> for GroupError {
    fn from(e: postgres::Error) -> Self {
        GroupError::Store(e.into())
    }
}

impl From<StoreError> for GroupError {
    fn from(e: StoreError) -> Self {
        GroupError::Store(e)
    }
}

fn refuse<T>(why: GroupRefusal) -> Result<T, GroupError> {
    Err(GroupError::Refused(why))
}

/// A group as members see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// Its name.
    pub name: String,
    /// The current key epoch.
    pub epoch: i64,
    /// Members, longest-standing first: (name, is admin).
    pub members: Vec<(String, bool)>,
}

/// What a membership change did besides the change itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The group after the change (`None`: it was deleted, its last member gone).
    pub group: Option<GroupInfo>,
    /// A member who became admin because the admin left.
    pub new_admin: Option<String>,
}

/// The group's epoch and members (in joining order), if it exists. One statement, so one
/// consistent snapshot, in one round trip (typed parameters, no prepare): every server
/// reads each group it sends to about twice a second (the membership cache's refresh),
/// where a transaction of two prepared queries took six.
fn info(client: &mut impl GenericClient, name: &str) -> Result<Option<GroupInfo>, postgres::Error> {
    let rows = client.query_typed(
        "SELECT g.epoch, m.user_name, m.is_admin FROM groups g
         LEFT JOIN group_members m ON m.group_name = g.name
         WHERE g.name = $1 ORDER BY m.joined",
        &[(&name, postgres::types::Type::TEXT)],
    )?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    Ok(Some(GroupInfo {
        name: name.to_string(),
        epoch: first.get(0),
        members: rows
            .iter()
            .filter_map(|r| Some((r.get::<_, Option<String>>(1)?, r.get(2))))
            .collect(),
    }))
}

/// `group`, if `by` is one of its members.
fn for_member(group: Option<GroupInfo>, by: &str) -> Result<GroupInfo, GroupError> {
    let Some(group) = group else {
        return refuse(GroupRefusal::UnknownGroup);
    };
    if !group.members.iter().any(|(m, _)| m == by) {
        return refuse(GroupRefusal::NotMember);
    }
    Ok(group)
}

/// Locks the group's row and returns it with the acting user's membership.
fn lock(tx: &mut Transaction<'_>, name: &str, by: &str) -> Result<GroupInfo, GroupError> {
    tx.execute("SELECT 1 FROM groups WHERE name = $1 FOR UPDATE", &[&name])?;
    for_member(info(tx, name)?, by)
}

fn is_admin(group: &GroupInfo, user: &str) -> bool {
    group.members.iter().any(|(m, admin)| m == user && *admin)
}

fn user_exists(tx: &mut Transaction<'_>, user: &str) -> Result<bool, postgres::Error> {
    Ok(tx
        .query_opt("SELECT 1 FROM users WHERE name = $1", &[&user])?
        .is_some())
}

fn bump_epoch(tx: &mut Transaction<'_>, name: &str) -> Result<(), postgres::Error> {
    tx.execute(
        "UPDATE groups SET epoch = epoch + 1 WHERE name = $1",
        &[&name],
    )?;
    Ok(())
}

/// Creates `name` with `creator` as admin and `members` (duplicates and the creator
/// ignored), at most `max` members in all.
pub fn create_group(
    client: &mut postgres::Client,
    name: &str,
    creator: &str,
    members: &[String],
    max: usize,
) -> Result<GroupInfo, GroupError> {
    let Some(all) = distinct_members(creator, members, max) else {
        return refuse(GroupRefusal::GroupFull);
    };
    let mut tx = client.transaction()?;
    for m in &all[1..] {
        if !user_exists(&mut tx, m)? {
            return refuse(GroupRefusal::UnknownUser);
        }
    }
    match tx.execute("INSERT INTO groups (name) VALUES ($1)", &[&name]) {
        Ok(_) => {}
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            return refuse(GroupRefusal::NameTaken)
        }
        Err(e) => return Err(e.into()),
    }
    for (i, m) in all.iter().enumerate() {
        tx.execute(
            "INSERT INTO group_members (group_name, user_name, is_admin) VALUES ($1, $2, $3)",
            &[&name, m, &(i == 0)],
        )?;
    }
    let group = info(&mut tx, name)?.expect("just created");
    tx.commit()?;
    Ok(group)
}

/// `creator` and then `members` without repeats, or `None` as soon as there are more
/// than `max`: a request's list may be long (a frame holds 170,000 short names), so
/// neither the check nor the de-duplication may grow with its square.
fn distinct_members<'a>(
    creator: &'a str,
    members: &'a [String],
    max: usize,
) -> Option<Vec<&'a str>> {
    let mut all = vec![creator];
    let mut seen = HashSet::from([creator]);
    for m in members {
        if seen.insert(m.as_str()) {
            all.push(m);
            if all.len() > max {
                return None;
            }
        }
    }
    (all.len() <= max).then_some(all)
}

/// `by` (the admin) adds `user`.
pub fn add_member(
    client: &mut postgres::Client,
    name: &str,
    by: &str,
    user: &str,
    max: usize,
) -> Result<GroupInfo, GroupError> {
    let mut tx = client.transaction()?;
    let group = lock(&mut tx, name, by)?;
    if !is_admin(&group, by) {
        return refuse(GroupRefusal::NotAdmin);
    }
    if !user_exists(&mut tx, user)? {
        return refuse(GroupRefusal::UnknownUser);
    }
    if group.members.iter().any(|(m, _)| m == user) {
        return refuse(GroupRefusal::AlreadyMember);
    }
    if group.members.len() >= max {
        return refuse(GroupRefusal::GroupFull);
    }
    tx.execute(
        "INSERT INTO group_members (group_name, user_name) VALUES ($1, $2)",
        &[&name, &user],
    )?;
    bump_epoch(&mut tx, name)?;
    let group = info(&mut tx, name)?.expect("locked row exists");
    tx.commit()?;
    Ok(group)
}

/// Takes `user` out of the group: removed by the admin `by`, or leaving (`by == user`).
/// When the admin leaves, the longest-standing member becomes admin; when the last
/// member leaves, the group is deleted.
pub fn remove_member(
    client: &mut postgres::Client,
    name: &str,
    by: &str,
    user: &str,
) -> Result<Change, GroupError> {
    let mut tx = client.transaction()?;
    let group = lock(&mut tx, name, by)?;
    if by != user && !is_admin(&group, by) {
        return refuse(GroupRefusal::NotAdmin);
    }
    if !group.members.iter().any(|(m, _)| m == user) {
        return refuse(GroupRefusal::NotMember);
    }
    tx.execute(
        "DELETE FROM group_members WHERE group_name = $1 AND user_name = $2",
        &[&name, &user],
    )?;
    let rest: Vec<&(String, bool)> = group.members.iter().filter(|(m, _)| m != user).collect();
    if rest.is_empty() {
        tx.execute("DELETE FROM groups WHERE name = $1", &[&name])?;
        tx.commit()?;
        return Ok(Change {
            group: None,
            new_admin: None,
        });
    }
    let mut new_admin = None;
    if !rest.iter().any(|(_, admin)| *admin) {
        let heir = rest[0].0.clone();
        tx.execute(
            "UPDATE group_members SET is_admin = true WHERE group_name = $1 AND user_name = $2",
            &[&name, &heir],
        )?;
        new_admin = Some(heir);
    }
    bump_epoch(&mut tx, name)?;
    let group = info(&mut tx, name)?;
    tx.commit()?;
    Ok(Change { group, new_admin })
}

/// The group's epoch and members, if it exists, whoever asks (one statement: see
/// `info`): what a server's membership cache reads again in the background.
pub fn group_membership(
    client: &mut postgres::Client,
    name: &str,
) -> Result<Option<GroupInfo>, StoreError> {
    Ok(info(client, name)?)
}

/// The group, for one of its members (one statement: see `info`).
pub fn group_info(
    client: &mut postgres::Client,
    name: &str,
    by: &str,
) -> Result<GroupInfo, GroupError> {
    for_member(info(client, name)?, by)
}

/// The groups `user` belongs to: (name, epoch, is admin), by name.
pub fn groups_of(
    client: &mut postgres::Client,
    user: &str,
) -> Result<Vec<(String, i64, bool)>, StoreError> {
    Ok(client
        .query(
            "SELECT g.name, g.epoch, m.is_admin FROM group_members m
             JOIN groups g ON g.name = m.group_name
             WHERE m.user_name = $1 ORDER BY g.name",
            &[&user],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// The key record of `epoch` (the current epoch when `None`), offering `offer` first
/// for the current epoch if it has none; `by` must be a member now. Returns the epoch
/// and the record, if any.
pub fn group_key(
    client: &mut postgres::Client,
    name: &str,
    by: &str,
    epoch: Option<i64>,
    offer: Option<(i64, &str)>,
) -> Result<(i64, Option<String>), GroupError> {
    let mut tx = client.transaction()?;
    let group = lock(&mut tx, name, by)?;
    if let Some((offer_epoch, record)) = offer {
        if offer_epoch == group.epoch {
            tx.execute(
                "INSERT INTO group_keys (group_name, epoch, record) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&name, &offer_epoch, &record],
            )?;
        }
    }
    let epoch = epoch.unwrap_or(group.epoch);
    let record = tx
        .query_opt(
            "SELECT record FROM group_keys WHERE group_name = $1 AND epoch = $2",
            &[&name, &epoch],
        )?
        .map(|r| r.get(0));
    tx.commit()?;
    Ok((epoch, record))
}

#[cfg(test)]
mod tests {
    use super::distinct_members;

    #[test]
    fn members_are_the_creator_then_each_name_once_up_to_the_maximum() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let members = names(&["bo", "al", "cy", "bo", "al"]);
        assert_eq!(
            distinct_members("al", &members, 3),
            Some(vec!["al", "bo", "cy"])
        );
        assert_eq!(distinct_members("al", &members, 2), None);
        assert_eq!(distinct_members("al", &[], 0), None);
        // A frame's worth of names: refused as soon as the maximum is passed.
        let many: Vec<String> = (0..200_000).map(|i| i.to_string()).collect();
        assert_eq!(distinct_members("al", &many, 50), None);
        let repeated = vec!["bo".to_string(); 200_000];
        assert_eq!(
            distinct_members("al", &repeated, 50),
            Some(vec!["al", "bo"])
        );
    }
}
