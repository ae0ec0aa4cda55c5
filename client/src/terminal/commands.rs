//! Parsing of the terminal's `/commands`.

/// A parsed command line.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `/signup USER PASSWORD`
    Signup { user: String, password: String },
    /// `/login USER PASSWORD`
    Login { user: String, password: String },
    /// `/logout`
    Logout,
    /// `/passwd OLD NEW`
    Passwd { old: String, new: String },
    /// `/msg USER TEXT`
    Msg { to: String, text: String },
    /// `/group create NAME [USER...]`
    GroupCreate { group: String, members: Vec<String> },
    /// `/group add NAME USER`
    GroupAdd { group: String, user: String },
    /// `/group remove NAME USER`
    GroupRemove { group: String, user: String },
    /// `/group leave NAME`
    GroupLeave { group: String },
    /// `/group members NAME`
    GroupMembers { group: String },
    /// `/groups`
    Groups,
    /// `/friend add USER`
    FriendAdd { user: String },
    /// `/friend remove USER`
    FriendRemove { user: String },
    /// `/friends`
    Friends,
    /// `/send USER PATH`
    SendFile { to: String, path: String },
    /// `/gsend GROUP PATH`
    GroupSendFile { group: String, path: String },
    /// `/history NAME [N]`
    History { name: String, n: usize },
    /// `/gmsg NAME TEXT`
    Gmsg { group: String, text: String },
    /// `/help`
    Help,
    /// `/quit`
    Quit,
}

/// One line of help per command, shown by `/help`.
pub const HELP: &[(&str, &str)] = &[
    ("/signup USER PASSWORD", "create an account and log in"),
    ("/login USER PASSWORD", "log in"),
    ("/logout", "log out"),
    (
        "/passwd OLD NEW",
        "change the password (re-seals the private key backup)",
    ),
    ("/msg USER TEXT", "send a direct message"),
    (
        "/group create NAME [USER...]",
        "create a group (you are its admin)",
    ),
    ("/group add NAME USER", "add a member (admin only)"),
    ("/group remove NAME USER", "remove a member (admin only)"),
    ("/group leave NAME", "leave a group"),
    (
        "/group members NAME",
        "list a group's members (* marks the admin)",
    ),
    ("/groups", "list your groups"),
    (
        "/send USER PATH",
        "send a file (any type, in end-to-end sealed chunks)",
    ),
    ("/gsend GROUP PATH", "send a file to a group"),
    ("/friend add USER", "follow a user's presence"),
    ("/friend remove USER", "stop following it"),
    ("/friends", "list your friends, online or offline"),
    (
        "/history NAME [N]",
        "the last N (20) messages with a user or in a group, from this machine",
    ),
    ("/gmsg NAME TEXT", "send a message to a group"),
    ("/help", "list the commands"),
    ("/quit", "leave"),
];

/// Why a line is not a command: (command name for the reply, message).
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    /// The command word without the slash (`"msg"`), or `""` when there is none.
    pub cmd: String,
    /// `true` when the command word itself is unknown.
    pub unknown: bool,
    /// What is wrong.
    pub message: String,
}

fn usage(cmd: &str) -> ParseError {
    let line = HELP
        .iter()
        .find(|(u, _)| u.split_whitespace().next() == Some(&format!("/{cmd}")))
        .map(|(u, _)| *u)
        .unwrap_or("");
    ParseError {
        cmd: cmd.to_string(),
        unknown: false,
        message: format!("usage: {line}"),
    }
}

/// Splits off the first whitespace-separated word.
fn word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

/// The command word of a line (for replies to lines that fail to parse).
pub fn command_word(line: &str) -> String {
    word(line).0.trim_start_matches('/').to_string()
}

/// Parses one line (without its newline). Blank lines are `Ok(None)`.
pub fn parse(line: &str) -> Result<Option<Command>, ParseError> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Ok(None);
    }
    let (head, rest) = word(line);
    let Some(cmd) = head.strip_prefix('/') else {
        return Err(ParseError {
            cmd: String::new(),
            unknown: true,
            message: "commands start with '/'; try /help".into(),
        });
    };
    let two = |rest: &str| {
        let (a, b) = word(rest);
        let (b, extra) = word(b);
        if a.is_empty() || b.is_empty() || !extra.is_empty() {
            None
        } else {
            Some((a.to_string(), b.to_string()))
        }
    };
    let command = match cmd {
        "signup" | "login" => {
            let (user, password) = two(rest).ok_or_else(|| usage(cmd))?;
            if cmd == "signup" {
                Command::Signup { user, password }
            } else {
                Command::Login { user, password }
            }
        }
        "logout" => Command::Logout,
        "passwd" => {
            let (old, new) = two(rest).ok_or_else(|| usage(cmd))?;
            Command::Passwd { old, new }
        }
        "msg" => {
            let (to, text) = word(rest);
            if to.is_empty() || text.is_empty() {
                return Err(usage(cmd));
            }
            Command::Msg {
                to: to.to_string(),
                text: text.to_string(),
            }
        }
        "group" => {
            let (sub, rest) = word(rest);
            let words: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
            let bad = || {
                ParseError {
                cmd: "group".into(),
                unknown: false,
                message: "usage: /group create NAME [USER...] | add NAME USER | remove NAME USER | leave NAME | members NAME".into(),
            }
            };
            match (sub, words.as_slice()) {
                ("create", [group, members @ ..]) => Command::GroupCreate {
                    group: group.clone(),
                    members: members.to_vec(),
                },
                ("add", [group, user]) => Command::GroupAdd {
                    group: group.clone(),
                    user: user.clone(),
                },
                ("remove" | "kick", [group, user]) => Command::GroupRemove {
                    group: group.clone(),
                    user: user.clone(),
                },
                ("leave", [group]) => Command::GroupLeave {
                    group: group.clone(),
                },
                ("members", [group]) => Command::GroupMembers {
                    group: group.clone(),
                },
                _ => return Err(bad()),
            }
        }
        "groups" => Command::Groups,
        "friend" => match two(rest) {
            Some((sub, user)) if sub == "add" => Command::FriendAdd { user },
            Some((sub, user)) if sub == "remove" => Command::FriendRemove { user },
            _ => {
                return Err(ParseError {
                    cmd: "friend".into(),
                    unknown: false,
                    message: "usage: /friend add USER | /friend remove USER".into(),
                })
            }
        },
        "friends" => Command::Friends,
        "send" | "gsend" => {
            let (target, path) = word(rest);
            if target.is_empty() || path.is_empty() {
                return Err(usage(cmd));
            }
            let (target, path) = (target.to_string(), path.to_string());
            if cmd == "send" {
                Command::SendFile { to: target, path }
            } else {
                Command::GroupSendFile {
                    group: target,
                    path,
                }
            }
        }
        "history" => {
            let (name, rest) = word(rest);
            let (n, extra) = word(rest);
            let n = if n.is_empty() {
                Ok(20)
            } else {
                n.parse::<usize>()
            };
            match (name, n, extra) {
                (name, Ok(n), "") if !name.is_empty() => Command::History {
                    name: name.to_string(),
                    n,
                },
                _ => return Err(usage(cmd)),
            }
        }
        "gmsg" => {
            let (group, text) = word(rest);
            if group.is_empty() || text.is_empty() {
                return Err(usage(cmd));
            }
            Command::Gmsg {
                group: group.to_string(),
                text: text.to_string(),
            }
        }
        "help" => Command::Help,
        "quit" | "exit" => Command::Quit,
        _ => {
            return Err(ParseError {
                cmd: cmd.to_string(),
                unknown: true,
                message: format!("unknown command /{cmd}; try /help"),
            })
        }
    };
    Ok(Some(command))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(
            parse("/msg bob hello  there").unwrap(),
            Some(Command::Msg {
                to: "bob".into(),
                text: "hello  there".into()
            })
        );
        assert_eq!(
            parse("/login a b").unwrap(),
            Some(Command::Login {
                user: "a".into(),
                password: "b".into()
            })
        );
        assert_eq!(parse("   ").unwrap(), None);
        assert!(parse("/login a").is_err());
        assert!(parse("/login a b c").is_err());
        assert!(parse("/msg bob").is_err());
        let e = parse("/fly").unwrap_err();
        assert!(e.unknown);
        assert_eq!(e.cmd, "fly");
        assert!(parse("hello").unwrap_err().unknown);
    }
}
