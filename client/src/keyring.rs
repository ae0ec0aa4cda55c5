//! The client's end-to-end keys: this user's RSA key pair (cached in `HOME/keys/`),
//! other users' public keys (pinned on first use in `HOME/known_keys.json`), and the
//! conversation keys, fetched from or offered to the server and kept in memory.

use crate::error::ClientError;
use fastchat_common::e2e::{
    make_conversation_key, make_group_key, open_conversation_key, open_group_key,
    ConversationKeyRecord, E2eError, GroupKeyRecord, PublicKey, SymmetricKey, UserKeys,
};
use fastchat_common::protocol::client::{OkResult, RequestBody};
use fastchat_common::ErrorCode;
use parking_lot::{Condvar, Mutex};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Sends a request and waits for its reply (the connection's request machinery).
pub(crate) type Call<'a> = &'a dyn Fn(RequestBody) -> Result<Option<OkResult>, ClientError>;

/// Whose keys this client holds.
#[derive(Clone)]
pub(crate) struct Identity {
    pub user: String,
    pub keys: UserKeys,
}

enum IdentityState {
    /// No login under way.
    None,
    /// A signup or login is restoring the keys: the inbox waits.
    Pending,
    Ready(Identity),
}

/// Keys of one client connection.
pub(crate) struct Keyring {
    home: Option<PathBuf>,
    identity: Mutex<IdentityState>,
    identity_changed: Condvar,
    public_keys: Mutex<HashMap<String, PublicKey>>,
    /// peer -> key id -> key (nested, so that a lookup by `&str` allocates nothing:
    /// it runs for every message sent and opened).
    conversation_keys: Mutex<HashMap<String, HashMap<String, SymmetricKey>>>,
    /// peer -> the key id new messages use.
    current: Mutex<HashMap<String, String>>,
    /// Held while `known_keys.json` is read, changed and written.
    pin_lock: Mutex<()>,
    /// group -> epoch -> key.
    group_keys: Mutex<HashMap<String, HashMap<u64, SymmetricKey>>>,
    /// group -> the epoch new messages are sealed under, as last learnt.
    group_epochs: Mutex<HashMap<String, u64>>,
}

fn local_error(message: impl Into<String>) -> ClientError {
    ClientError::new(ErrorCode::LocalError, message)
}

fn e2e_error(e: E2eError) -> ClientError {
    let code = match e {
        E2eError::Key(_) | E2eError::Invalid(_) => ErrorCode::LocalError,
        _ => ErrorCode::Undecryptable,
    };
    ClientError::new(code, e.to_string())
}

/// Writes `bytes` to `path` readable only by the user (mode 0600), via a temporary file.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn ordered<'a>(a: &'a str, b: &'a str) -> (&'a str, &'a str) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

impl Keyring {
    pub fn new(home: Option<PathBuf>) -> Keyring {
        Keyring {
            home,
            identity: Mutex::new(IdentityState::None),
            identity_changed: Condvar::new(),
            public_keys: Mutex::new(HashMap::new()),
            conversation_keys: Mutex::new(HashMap::new()),
            current: Mutex::new(HashMap::new()),
            pin_lock: Mutex::new(()),
            group_keys: Mutex::new(HashMap::new()),
            group_epochs: Mutex::new(HashMap::new()),
        }
    }

    fn key_path(&self, user: &str, ext: &str) -> Option<PathBuf> {
        self.home
            .as_ref()
            .map(|h| h.join("keys").join(format!("{user}.{ext}")))
    }

    /// A signup or login has started: the inbox waits for its outcome.
    pub fn begin_login(&self) {
        *self.identity.lock() = IdentityState::Pending;
    }

    /// The login failed or ended: forget the identity.
    pub fn clear(&self) {
        *self.identity.lock() = IdentityState::None;
        self.identity_changed.notify_all();
        self.conversation_keys.lock().clear();
        self.current.lock().clear();
        self.group_keys.lock().clear();
        self.group_epochs.lock().clear();
    }

    /// Keeps `keys` as `user`'s, and caches them in HOME (private key mode 0600).
    pub fn set_identity(&self, user: &str, keys: UserKeys) -> Result<(), ClientError> {
        if let (Some(key), Some(public)) = (self.key_path(user, "key"), self.key_path(user, "pub"))
        {
            write_private(&key, keys.private_pem().as_bytes())
                .and_then(|_| std::fs::write(&public, keys.public_pem()))
                .map_err(|e| {
                    local_error(format!("cannot cache the keys in {}: {e}", key.display()))
                })?;
        }
        self.public_keys
            .lock()
            .insert(user.to_string(), keys.public());
        *self.identity.lock() = IdentityState::Ready(Identity {
            user: user.to_string(),
            keys,
        });
        self.identity_changed.notify_all();
        Ok(())
    }

    /// `user`'s keys as cached in HOME, if any.
    pub fn cached_keys(&self, user: &str) -> Option<UserKeys> {
        let pem = std::fs::read_to_string(self.key_path(user, "key")?).ok()?;
        match UserKeys::from_private_pem(&pem) {
            Ok(keys) => Some(keys),
            Err(e) => {
                log::warn!("ignoring the unreadable cached key of {user}: {e}");
                None
            }
        }
    }

    /// The identity, now.
    pub fn identity(&self) -> Option<Identity> {
        match &*self.identity.lock() {
            IdentityState::Ready(id) => Some(id.clone()),
            _ => None,
        }
    }

    /// The identity, waiting (at most `timeout`) while a login is restoring it.
    pub fn wait_identity(&self, timeout: Duration) -> Option<Identity> {
        let deadline = Instant::now() + timeout;
        let mut state = self.identity.lock();
        loop {
            match &*state {
                IdentityState::Ready(id) => return Some(id.clone()),
                IdentityState::None => return None,
                IdentityState::Pending => {
                    if self
                        .identity_changed
                        .wait_until(&mut state, deadline)
                        .timed_out()
                    {
                        return None;
                    }
                }
            }
        }
    }

    fn known_keys_path(&self) -> Option<PathBuf> {
        self.home.as_ref().map(|h| h.join("known_keys.json"))
    }

    /// Checks `key` against the fingerprint pinned for `user` (pinning it the first time).
    fn pin(&self, user: &str, key: &PublicKey) -> Result<(), ClientError> {
        let Some(path) = self.known_keys_path() else {
            return Ok(());
        };
        let _writer = self.pin_lock.lock();
        // A file that exists but cannot be read fails closed: forgetting the pins would
        // let the next key through unchecked.
        let mut known: BTreeMap<String, String> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                local_error(format!(
                    "{} is damaged ({e}); fix or remove it",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(local_error(format!("cannot read {}: {e}", path.display()))),
        };
        let fingerprint = key.fingerprint();
        match known.get(user) {
            Some(pinned) if *pinned == fingerprint => Ok(()),
            Some(pinned) => Err(ClientError::new(
                ErrorCode::KeyChanged,
                format!(
                    "{user}'s public key changed (pinned {pinned}, server sent {fingerprint}); \
                     remove the entry from {} only if you trust the change",
                    path.display()
                ),
            )),
            None => {
                known.insert(user.to_string(), fingerprint);
                let json = serde_json::to_vec_pretty(&known).expect("a map serializes");
                write_private(&path, &json)
                    .map_err(|e| local_error(format!("cannot write {}: {e}", path.display())))
            }
        }
    }

    /// `user`'s public key: cached, or fetched and checked against its pinned fingerprint.
    pub fn public_key(&self, call: Call<'_>, user: &str) -> Result<PublicKey, ClientError> {
        if let Some(key) = self.public_keys.lock().get(user) {
            return Ok(key.clone());
        }
        let reply = call(RequestBody::PublicKey {
            user: user.to_string(),
        })?;
        let Some(OkResult::PublicKey { public_key, .. }) = reply else {
            return Err(ClientError::disconnected("unexpected reply to public_key"));
        };
        let key = PublicKey::from_pem(&public_key).map_err(e2e_error)?;
        self.pin(user, &key)?;
        self.public_keys
            .lock()
            .insert(user.to_string(), key.clone());
        Ok(key)
    }

    /// Opens a record from the server: it must be for (me, peer), signed by its maker.
    fn open_record(
        &self,
        call: Call<'_>,
        me: &Identity,
        peer: &str,
        record: &ConversationKeyRecord,
    ) -> Result<SymmetricKey, ClientError> {
        let (a, b) = ordered(&me.user, peer);
        if record.user_a != a || record.user_b != b || (record.maker != a && record.maker != b) {
            return Err(ClientError::new(
                ErrorCode::Undecryptable,
                "the server sent another conversation's key",
            ));
        }
        let maker = self.public_key(call, &record.maker)?;
        let key = open_conversation_key(record, &me.user, &me.keys, &maker).map_err(e2e_error)?;
        self.conversation_keys
            .lock()
            .entry(peer.to_string())
            .or_default()
            .insert(record.key_id.clone(), key.clone());
        Ok(key)
    }

    fn cached_conversation_key(&self, peer: &str, key_id: &str) -> Option<SymmetricKey> {
        let keys = self.conversation_keys.lock();
        keys.get(peer)?.get(key_id).cloned()
    }

    fn cached_group_key(&self, group: &str, epoch: u64) -> Option<SymmetricKey> {
        let keys = self.group_keys.lock();
        keys.get(group)?.get(&epoch).cloned()
    }

    /// The key to seal a new message to `peer` with, and its id: cached, fetched, or
    /// made here (the first writer makes it) and offered to the server.
    pub fn sending_key(
        &self,
        call: Call<'_>,
        me: &Identity,
        peer: &str,
    ) -> Result<(String, SymmetricKey), ClientError> {
        if let Some(id) = self.current.lock().get(peer).cloned() {
            if let Some(key) = self.cached_conversation_key(peer, &id) {
                return Ok((id, key));
            }
        }
        let fetched = call(RequestBody::ConversationKey {
            peer: peer.to_string(),
            key_id: None,
            offer: None,
        });
        let record = match fetched {
            Ok(Some(OkResult::ConversationKey { record })) => record,
            Err(e) if e.code == ErrorCode::UnknownKey => {
                let peer_key = self.public_key(call, peer)?;
                let (_, offer) = make_conversation_key(&me.user, &me.keys, peer, &peer_key)
                    .map_err(e2e_error)?;
                match call(RequestBody::ConversationKey {
                    peer: peer.to_string(),
                    key_id: None,
                    offer: Some(offer),
                })? {
                    // The server keeps the first offer: use whichever record it returns.
                    Some(OkResult::ConversationKey { record }) => record,
                    _ => return Err(ClientError::disconnected("unexpected reply")),
                }
            }
            Err(e) => return Err(e),
            Ok(_) => return Err(ClientError::disconnected("unexpected reply")),
        };
        let key = self.open_record(call, me, peer, &record)?;
        self.current
            .lock()
            .insert(peer.to_string(), record.key_id.clone());
        Ok((record.key_id, key))
    }

    /// The key named `key_id` of the conversation with `peer` (to open a message).
    pub fn key_by_id(
        &self,
        call: Call<'_>,
        me: &Identity,
        peer: &str,
        key_id: &str,
    ) -> Result<SymmetricKey, ClientError> {
        if let Some(key) = self.cached_conversation_key(peer, key_id) {
            return Ok(key);
        }
        let reply = call(RequestBody::ConversationKey {
            peer: peer.to_string(),
            key_id: Some(key_id.to_string()),
            offer: None,
        })?;
        let Some(OkResult::ConversationKey { record }) = reply else {
            return Err(ClientError::disconnected("unexpected reply"));
        };
        if record.key_id != key_id {
            return Err(ClientError::new(
                ErrorCode::Undecryptable,
                "the server sent another key than the one asked for",
            ));
        }
        self.open_record(call, me, peer, &record)
    }

    /// Forgets the group's current epoch and keys (its membership changed, or a group
    /// of that name was deleted and made again, restarting its epochs).
    pub fn group_changed(&self, group: &str) {
        self.group_epochs.lock().remove(group);
        self.group_keys.lock().remove(group);
    }

    /// Opens a group key record from the server: it must be for this group and epoch,
    /// made by one of its members, signed by the maker's pinned key.
    fn open_group_record(
        &self,
        call: Call<'_>,
        me: &Identity,
        group: &str,
        epoch: u64,
        record: &GroupKeyRecord,
        members: Option<&[String]>,
    ) -> Result<SymmetricKey, ClientError> {
        if let Some(members) = members {
            // To send, the key must be wrapped for exactly the members the server lists
            // (so it cannot slip in a key made by, or for, someone outside the group).
            let mut wrapped: Vec<&str> = record.wrapped.iter().map(|w| w.user.as_str()).collect();
            let mut listed: Vec<&str> = members.iter().map(String::as_str).collect();
            wrapped.sort_unstable();
            listed.sort_unstable();
            if wrapped != listed {
                return Err(ClientError::new(
                    ErrorCode::Undecryptable,
                    "the group key is not wrapped for exactly the group's members",
                ));
            }
        }
        if record.group != group || record.epoch != epoch {
            return Err(ClientError::new(
                ErrorCode::Undecryptable,
                "the server sent another group's or epoch's key",
            ));
        }
        if !record.wrapped.iter().any(|w| w.user == record.maker) {
            return Err(ClientError::new(
                ErrorCode::Undecryptable,
                "a group key made by someone outside the group",
            ));
        }
        let maker = self.public_key(call, &record.maker)?;
        let key = open_group_key(record, &me.user, &me.keys, &maker).map_err(e2e_error)?;
        self.group_keys
            .lock()
            .entry(group.to_string())
            .or_default()
            .insert(epoch, key.clone());
        Ok(key)
    }

    /// The key of `group` at `epoch` (to open a message).
    pub fn group_key(
        &self,
        call: Call<'_>,
        me: &Identity,
        group: &str,
        epoch: u64,
    ) -> Result<SymmetricKey, ClientError> {
        self.fetch_group_key(call, me, group, epoch, None)
    }

    /// The key of `group` at `epoch`: cached, or fetched and checked; with `members`
    /// (to send), always fetched and checked against them.
    fn fetch_group_key(
        &self,
        call: Call<'_>,
        me: &Identity,
        group: &str,
        epoch: u64,
        members: Option<&[String]>,
    ) -> Result<SymmetricKey, ClientError> {
        if members.is_none() {
            if let Some(key) = self.cached_group_key(group, epoch) {
                return Ok(key);
            }
        }
        let reply = call(RequestBody::GroupKey {
            group: group.to_string(),
            epoch: Some(epoch),
            offer: None,
        })?;
        let Some(OkResult::GroupKey { record, .. }) = reply else {
            return Err(ClientError::disconnected("unexpected reply to group_key"));
        };
        self.open_group_record(call, me, group, epoch, &record, members)
    }

    /// The epoch and key to seal a new message to `group` with: the current epoch's
    /// key, fetched, or made here for the epoch's members (the first to write after a
    /// change makes it) and offered to the server, which keeps the first offer.
    pub fn group_sending_key(
        &self,
        call: Call<'_>,
        me: &Identity,
        group: &str,
    ) -> Result<(u64, SymmetricKey), ClientError> {
        let known = self.group_epochs.lock().get(group).copied();
        if let Some(epoch) = known {
            if let Some(key) = self.cached_group_key(group, epoch) {
                return Ok((epoch, key));
            }
        }
        let Some(OkResult::Group { epoch, members, .. }) = call(RequestBody::GroupMembers {
            group: group.to_string(),
        })?
        else {
            return Err(ClientError::disconnected(
                "unexpected reply to group_members",
            ));
        };
        let names: Vec<String> = members.iter().map(|m| m.user.clone()).collect();
        let key = match self.fetch_group_key(call, me, group, epoch, Some(&names)) {
            Ok(key) => key,
            Err(e) if e.code == ErrorCode::UnknownKey => {
                let mut publics = Vec::with_capacity(members.len());
                for m in &members {
                    publics.push((m.user.clone(), self.public_key(call, &m.user)?));
                }
                let (_, offer) = make_group_key(&me.user, &me.keys, group, epoch, &publics)
                    .map_err(e2e_error)?;
                let reply = call(RequestBody::GroupKey {
                    group: group.to_string(),
                    epoch: None,
                    offer: Some(offer),
                })?;
                let Some(OkResult::GroupKey { epoch: got, record }) = reply else {
                    return Err(ClientError::disconnected("unexpected reply to group_key"));
                };
                if got != epoch {
                    // The membership changed meanwhile: the caller starts again.
                    self.group_changed(group);
                    return Err(ClientError::new(ErrorCode::StaleEpoch, "the group changed"));
                }
                self.open_group_record(call, me, group, epoch, &record, Some(&names))?
            }
            Err(e) => return Err(e),
        };
        self.group_epochs.lock().insert(group.to_string(), epoch);
        Ok((epoch, key))
    }
}
