//! `fastchat`: the line-based terminal client. Commands come one per line on standard
//! input (a person or a pipe); events and replies go to standard output.

mod terminal;

use clap::Parser;
use crossbeam_channel::{select, Receiver};
use fastchat_client::{
    Client, ClientConfig, ClientError, Conversation, ErrorCode, OkResult, ReplyHandle,
};
use fastchat_common::protocol::client::RequestBody;
use serde_json::json;
use std::collections::VecDeque;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};
use terminal::commands::{command_word, parse, Command, HELP};
use terminal::output::{Mode, Output};

/// FastChat terminal client.
#[derive(Debug, Parser)]
#[command(name = "fastchat", version)]
struct Cli {
    /// The balancer's address.
    #[arg(long, default_value = "127.0.0.1:7000")]
    balancer: String,
    /// Where keys and received files are kept (default: ~/.fastchat).
    #[arg(long)]
    home: Option<PathBuf>,
    /// Print one JSON object per line instead of text for people.
    #[arg(long)]
    json: bool,
    /// The cluster's CA certificate (default: $FASTCHAT_CA, else .fastchat/ca.pem
    /// when present).
    #[arg(long, env = "FASTCHAT_CA")]
    ca: Option<PathBuf>,
    /// Log level for diagnostics on standard error.
    #[arg(long, default_value = "warn")]
    log_level: log::LevelFilter,
}

/// How long, after standard input ends, the program waits for replies it owes.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Makes the text for people from a successful reply's result.
type HumanText = Box<dyn Fn(&Option<OkResult>) -> String + Send>;

/// A command whose reply is to be printed, in order.
enum Pending {
    /// A reply from the server; `human` makes the text for people from the result.
    Remote {
        cmd: &'static str,
        handle: ReplyHandle,
        human: HumanText,
    },
    /// A reply known at once (local commands and parse errors).
    Local(Box<dyn FnOnce(&Output) + Send>),
}

/// The CA to trust: `--ca` or `$FASTCHAT_CA`, else `.fastchat/ca.pem` when present.
fn cluster_ca(cli: &Cli) -> Result<PathBuf, ClientError> {
    if let Some(ca) = &cli.ca {
        return Ok(ca.clone());
    }
    let fallback = PathBuf::from(".fastchat/ca.pem");
    if fallback.is_file() {
        return Ok(fallback);
    }
    Err(ClientError::new(
        ErrorCode::LocalError,
        "no cluster CA: pass --ca FILE or set FASTCHAT_CA (run_cluster.sh writes DIR/ca.pem)",
    ))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = simplelog::TermLogger::init(
        cli.log_level,
        simplelog::Config::default(),
        simplelog::TerminalMode::Stderr,
        simplelog::ColorChoice::Never,
    );
    // Interrupted (Ctrl-C, SIGTERM, SIGHUP): history lines still buffered are written
    // before the process goes.
    if let Err(e) = ctrlc::set_handler(|| {
        fastchat_client::flush_history();
        std::process::exit(130);
    }) {
        log::warn!("no signal handler: {e}");
    }
    let mode = if cli.json { Mode::Json } else { Mode::Human };
    let output = Output::new(mode);
    let home = cli.home.clone().unwrap_or_else(default_home);
    if let Err(e) = std::fs::create_dir_all(&home) {
        output.error(
            "start",
            &ClientError::new(ErrorCode::LocalError, format!("{}: {e}", home.display())),
        );
        return ExitCode::FAILURE;
    }
    let config = match cluster_ca(&cli)
        .and_then(|ca| ClientConfig::with_ca_file(cli.balancer.clone(), &ca))
        .map(|config| config.with_home(home.clone()))
    {
        Ok(c) => c,
        Err(e) => {
            output.error("connect", &e);
            return ExitCode::FAILURE;
        }
    };
    let client = match Client::connect(&config) {
        Ok(c) => c,
        Err(e) => {
            output.error("connect", &e);
            return ExitCode::FAILURE;
        }
    };
    if mode == Mode::Human {
        println!("* connected to {} (type /help)", client.server());
    }

    let (items_tx, items_rx) = crossbeam_channel::unbounded::<Pending>();
    let events = client.events().clone();
    let printer = thread::spawn(move || print_loop(&output, &events, &items_rx));

    let mut logged_in = false;
    for line in std::io::stdin().lock().lines() {
        let line = match line {
            Ok(line) => line,
            // The bytes of that line are consumed: say so and read on.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                let err = ClientError::new(ErrorCode::BadRequest, "a line that is not UTF-8");
                let _ = items_tx.send(Pending::Local(Box::new(move |out| {
                    out.error("input", &err)
                })));
                continue;
            }
            Err(_) => break,
        };
        let command = match parse(&line) {
            Ok(None) => continue,
            Ok(Some(c)) => c,
            Err(e) => {
                let cmd = if e.cmd.is_empty() {
                    command_word(&line)
                } else {
                    e.cmd
                };
                let code = if e.unknown {
                    ErrorCode::UnknownCommand
                } else {
                    ErrorCode::BadRequest
                };
                let err = ClientError::new(code, e.message);
                let _ = items_tx.send(Pending::Local(Box::new(move |out| out.error(&cmd, &err))));
                continue;
            }
        };
        let pending = match command {
            Command::Quit => break,
            Command::Help => Pending::Local(Box::new(|out| {
                let lines: Vec<String> = HELP.iter().map(|(u, d)| format!("{u:<24} {d}")).collect();
                let cmds: Vec<_> = HELP
                    .iter()
                    .map(|(u, d)| json!({"usage": u, "help": d}))
                    .collect();
                out.ok_with("help", json!({"commands": cmds}), &lines.join("\n"));
            })),
            Command::Signup { user, password } => {
                logged_in = true;
                Pending::Remote {
                    cmd: "signup",
                    handle: ReplyHandle::ready(client.signup(&user, &password)),
                    human: Box::new(|r| match r {
                        Some(OkResult::Session { user, .. }) => {
                            format!("signed up; logged in as {user}")
                        }
                        _ => "signed up".into(),
                    }),
                }
            }
            Command::Login { user, password } => {
                logged_in = true;
                Pending::Remote {
                    cmd: "login",
                    handle: ReplyHandle::ready(client.login(&user, &password)),
                    human: Box::new(|r| match r {
                        Some(OkResult::Session { user, .. }) => format!("logged in as {user}"),
                        _ => "logged in".into(),
                    }),
                }
            }
            Command::Logout => {
                logged_in = false;
                Pending::Remote {
                    cmd: "logout",
                    handle: client.request(RequestBody::Logout),
                    human: Box::new(|_| "logged out".into()),
                }
            }
            Command::Passwd { old, new } => Pending::Remote {
                cmd: "passwd",
                handle: ReplyHandle::ready(client.passwd(&old, &new)),
                human: Box::new(|_| "password changed; the key backup is re-sealed".into()),
            },
            Command::Msg { to, text } => {
                let (_, handle) = client.send_text(&to, &text);
                Pending::Remote {
                    cmd: "msg",
                    handle,
                    human: Box::new(move |r| match r {
                        Some(OkResult::Sent { stored: true, .. }) => {
                            format!("{to} is not reachable now; the message is stored for them")
                        }
                        _ => String::new(),
                    }),
                }
            }
            Command::GroupCreate { group, members } => remote(
                "group",
                client.group_create(&group, &members),
                describe_group,
            ),
            Command::GroupAdd { group, user } => {
                remote("group", client.group_add(&group, &user), describe_group)
            }
            Command::GroupRemove { group, user } => {
                remote("group", client.group_remove(&group, &user), describe_group)
            }
            Command::GroupLeave { group } => {
                remote("group", client.group_leave(&group), move |_| {
                    format!("you left {group}")
                })
            }
            Command::GroupMembers { group } => {
                remote("group", client.group_members(&group), describe_group)
            }
            Command::Groups => remote("groups", client.groups(), |r| match r {
                Some(OkResult::Groups { groups }) if groups.is_empty() => "no groups".into(),
                Some(OkResult::Groups { groups }) => groups
                    .iter()
                    .map(|g| format!("{}{}", g.group, if g.admin { " (admin)" } else { "" }))
                    .collect::<Vec<_>>()
                    .join(", "),
                _ => String::new(),
            }),
            Command::SendFile { to, path } => {
                send_file(&client, mode, Conversation::User(to), &path)
            }
            Command::GroupSendFile { group, path } => {
                send_file(&client, mode, Conversation::Group(group), &path)
            }
            Command::FriendAdd { user } => remote("friend", client.friend_add(&user), move |_| {
                format!("{user} is now a friend")
            }),
            Command::FriendRemove { user } => {
                remote("friend", client.friend_remove(&user), move |_| {
                    format!("{user} is no longer a friend")
                })
            }
            Command::Friends => remote("friends", client.friends(), |r| match r {
                Some(OkResult::Friends { friends }) if friends.is_empty() => {
                    "no friends yet".into()
                }
                Some(OkResult::Friends { friends }) => friends
                    .iter()
                    .map(|f| {
                        format!(
                            "{} ({})",
                            f.user,
                            if f.online { "online" } else { "offline" }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                _ => String::new(),
            }),
            Command::History { name, n } => {
                let conversation = if client.has_group_history(&name) {
                    Conversation::Group(name)
                } else {
                    Conversation::User(name)
                };
                match client.history(&conversation, n) {
                    Ok(entries) => Pending::Local(Box::new(move |out| {
                        let lines: Vec<String> = entries
                            .iter()
                            .map(|e| format!("{}: {}", e.from, e.text))
                            .collect();
                        let json: Vec<_> = entries
                            .iter()
                            .map(|e| json!({"id": e.id, "from": e.from, "text": e.text, "sent_at": terminal::output::rfc3339(e.sent_at)}))
                            .collect();
                        out.ok_with("history", json!({"messages": json}), &lines.join("\n"));
                    })),
                    Err(e) => Pending::Local(Box::new(move |out| out.error("history", &e))),
                }
            }
            Command::Gmsg { group, text } => {
                // Waits here: a stale epoch is sealed again inside `wait`.
                let (_, handle) = client.send_group_text(&group, &text);
                remote("gmsg", handle.wait(DRAIN_TIMEOUT), |_| String::new())
            }
        };
        if items_tx.send(pending).is_err() {
            break;
        }
    }
    drop(items_tx);
    let _ = printer.join();
    if logged_in && !client.is_closed() {
        let _ = client.logout();
    }
    ExitCode::SUCCESS
}

/// Sends a file (blocking), with a progress bar on a terminal in human mode.
fn send_file(client: &Client, mode: Mode, to: Conversation, path: &str) -> Pending {
    let bar = (mode == Mode::Human).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(path.to_string());
        bar
    });
    let mut progress = |sent: u64, total: u64| {
        if let Some(bar) = &bar {
            bar.set_length(total);
            bar.set_position(sent);
        }
    };
    let result = client.send_file(&to, std::path::Path::new(path), &mut progress);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    match result {
        Ok(sent) => Pending::Local(Box::new(move |out| {
            out.ok_with(
                "send",
                json!({"name": sent.name, "bytes": sent.bytes, "sha256": sent.sha256}),
                &format!("* sent {} ({} bytes)", sent.name, sent.bytes),
            )
        })),
        Err(e) => Pending::Local(Box::new(move |out| out.error("send", &e))),
    }
}

/// A command whose reply is already known (it waited), printed in its turn.
fn remote(
    cmd: &'static str,
    reply: fastchat_client::Reply,
    human: impl Fn(&Option<OkResult>) -> String + Send + 'static,
) -> Pending {
    Pending::Remote {
        cmd,
        handle: ReplyHandle::ready(reply),
        human: Box::new(human),
    }
}

/// `NAME: alice*, bob` for a group result (`*` marks the admin).
fn describe_group(result: &Option<OkResult>) -> String {
    match result {
        Some(OkResult::Group { group, members, .. }) => {
            let names: Vec<String> = members
                .iter()
                .map(|m| format!("{}{}", m.user, if m.admin { "*" } else { "" }))
                .collect();
            format!("{group}: {}", names.join(", "))
        }
        _ => String::new(),
    }
}

fn default_home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".fastchat")
}

/// Prints events as they come and replies in command order; returns once standard input
/// has ended and every owed reply is printed (or `DRAIN_TIMEOUT` has passed).
fn print_loop(
    output: &Output,
    events: &Receiver<fastchat_client::Event>,
    items: &Receiver<Pending>,
) {
    let never_items = crossbeam_channel::never();
    let never_events = crossbeam_channel::never();
    let never_reply = crossbeam_channel::never();
    let mut events_open = true;
    let mut items_open = true;
    let mut queue: VecDeque<Pending> = VecDeque::new();
    let mut drain_deadline: Option<Instant> = None;
    loop {
        // Print every head that is ready.
        while let Some(head) = queue.front() {
            match head {
                Pending::Local(_) => {
                    if let Some(Pending::Local(print)) = queue.pop_front() {
                        print(output);
                    }
                }
                Pending::Remote { handle, .. } => match handle.receiver().try_recv() {
                    Ok(reply) => print_remote(output, queue.pop_front(), reply),
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => print_remote(
                        output,
                        queue.pop_front(),
                        Err(ClientError::disconnected("connection closed")),
                    ),
                },
            }
        }
        if !items_open && queue.is_empty() {
            return;
        }
        let head_rx = match queue.front() {
            Some(Pending::Remote { handle, .. }) => handle.receiver(),
            _ => &never_reply,
        };
        let items_rx = if items_open { items } else { &never_items };
        let events_rx = if events_open { events } else { &never_events };
        let timeout = drain_deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
        select! {
            recv(events_rx) -> e => match e {
                Ok(event) => output.event(&event),
                Err(_) => events_open = false,
            },
            recv(items_rx) -> item => match item {
                Ok(p) => queue.push_back(p),
                Err(_) => {
                    items_open = false;
                    drain_deadline = Some(Instant::now() + DRAIN_TIMEOUT);
                }
            },
            recv(head_rx) -> reply => {
                let reply = reply.unwrap_or_else(|_| Err(ClientError::disconnected("connection closed")));
                print_remote(output, queue.pop_front(), reply);
            },
            default(timeout) => {
                if drain_deadline.is_some() {
                    for p in queue.drain(..) {
                        print_remote(output, Some(p), Err(ClientError::new(ErrorCode::Timeout, "no reply in time")));
                    }
                    return;
                }
            },
        }
    }
}

fn print_remote(output: &Output, pending: Option<Pending>, reply: fastchat_client::Reply) {
    match pending {
        Some(Pending::Remote { cmd, human, .. }) => {
            let text = match &reply {
                Ok(result) => human(result),
                Err(_) => String::new(),
            };
            output.reply(cmd, &reply, &text);
        }
        Some(Pending::Local(print)) => print(output),
        None => {}
    }
}
